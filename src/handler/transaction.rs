//! The handler's Postgres transaction, in which steadfast has already recorded the message id
//! and compare-and-set the key's version: the handler's writes and those records commit or
//! roll back together, so a redelivered or stale message is skipped and an effect is applied
//! once.

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::HandlerError;
use crate::message::HandlerNotes;
use crate::store::OnceTransaction;

/// An open transaction handed to the handler by [`super::Context::transaction`]. Run
/// statements through it (it dereferences to a `tokio_postgres::Client`) and
/// [`commit`](Transaction::commit) it; dropped without a commit, it rolls back.
#[derive(Debug)]
pub struct Transaction {
    inner: OnceTransaction,
    notes: Option<Arc<HandlerNotes>>,
}

impl Transaction {
    pub(crate) fn new(inner: OnceTransaction, notes: Option<Arc<HandlerNotes>>) -> Self {
        Transaction { inner, notes }
    }

    /// Commits the handler's writes with steadfast's records. A failed commit is a failure
    /// of the attempt ([`HandlerError::Unavailable`] when the connection broke, so no
    /// attempt is spent), never a lost message: nothing was applied, and the message is
    /// handled again.
    pub async fn commit(self) -> Result<(), HandlerError> {
        self.inner.commit().await?;
        if let Some(notes) = &self.notes {
            notes.recorded.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Rolls the transaction back: nothing of it, steadfast's records included, is applied.
    pub async fn rollback(self) -> Result<(), HandlerError> {
        self.inner.rollback().await?;
        if let Some(notes) = &self.notes {
            notes.handed.store(false, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl Deref for Transaction {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        self.inner.client()
    }
}
