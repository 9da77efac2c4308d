//! The transaction of a batch: the handler's writes for the records it applies, and those
//! records' ids, versions and fencing tokens, commit or roll back together.

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Item, Shared};
use crate::handler::HandlerError;
use crate::store::{OnceRecord, OnceTransaction};

/// An open transaction handed to a batch handler by
/// [`BatchContext::transaction`](super::BatchContext::transaction). Apply the records it
/// [`applies`](Self::applies) through it (it dereferences to a `tokio_postgres::Client`) and
/// [`commit`](Self::commit) it; dropped without a commit, it rolls back.
#[derive(Debug)]
pub struct BatchTransaction {
    inner: OnceTransaction,
    /// The records to apply: their place in the batch and what is recorded for them.
    applied: Vec<(usize, OnceRecord)>,
    shared: Arc<Shared>,
}

impl BatchTransaction {
    pub(crate) fn new(
        inner: OnceTransaction,
        applied: Vec<(usize, OnceRecord)>,
        shared: Arc<Shared>,
    ) -> Self {
        BatchTransaction {
            inner,
            applied,
            shared,
        }
    }

    /// Whether `item` is one of the records this transaction applies (not a duplicate, not
    /// stale, its lock not taken over, not failed before the transaction began).
    pub fn applies<M>(&self, item: &Item<M>) -> bool {
        Arc::ptr_eq(&item.shared, &self.shared)
            && self.applied.iter().any(|(index, _)| *index == item.index)
    }

    /// How many records the transaction applies.
    pub fn len(&self) -> usize {
        self.applied.len()
    }

    /// Whether the transaction applies no record (never, as handed over).
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    /// Records the applied records' ids, versions and tokens, then commits them with the
    /// handler's writes. A failed commit is a failure of the batch's records
    /// ([`HandlerError::Unavailable`] when the connection broke, so no attempt is spent):
    /// nothing was applied, and the records are handled again.
    ///
    /// A record the transaction applies that the handler failed ([`Item::fail`]) before this
    /// call cannot be left out of writes already made: the transaction is rolled back and
    /// this returns an error, so every record is handled again.
    pub async fn commit(self) -> Result<(), HandlerError> {
        let failed: Vec<usize> = self
            .applied
            .iter()
            .map(|(index, _)| *index)
            .filter(|index| self.shared.failure(*index).is_some())
            .collect();
        if !failed.is_empty() {
            let offsets: Vec<String> = failed
                .iter()
                .map(|i| {
                    let cx = &self.shared.contexts[*i];
                    format!("{}/{}/{}", cx.topic(), cx.partition(), cx.offset())
                })
                .collect();
            // Rolled back whether or not the rollback gets through (a connection dropped with
            // a transaction open is closed).
            self.handed(false);
            self.inner.rollback().await?;
            return Err(HandlerError::transient(format!(
                "record(s) {} failed after the batch's transaction applied them: their writes \
                 cannot be told from the others', so the transaction was rolled back (fail a \
                 record before `transaction()`, or return an error for the whole batch)",
                offsets.join(", ")
            )));
        }
        let records: Vec<&OnceRecord> = self.applied.iter().map(|(_, r)| r).collect();
        self.inner.commit_batch(&records).await?;
        for (index, _) in &self.applied {
            if let Some(notes) = &self.shared.contexts[*index].envelope.guard.notes {
                notes.recorded.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// Rolls the transaction back: nothing of it, steadfast's records included, is applied.
    pub async fn rollback(self) -> Result<(), HandlerError> {
        self.handed(false);
        Ok(self.inner.rollback().await?)
    }

    /// Marks the applied records' transaction as handed over (or not any more).
    fn handed(&self, handed: bool) {
        for (index, _) in &self.applied {
            if let Some(notes) = &self.shared.contexts[*index].envelope.guard.notes {
                notes.handed.store(handed, Ordering::SeqCst);
            }
        }
    }
}

impl Deref for BatchTransaction {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        self.inner.client()
    }
}
