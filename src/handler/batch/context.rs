//! What a batch handler knows about its batch, and the batch's once-only transaction.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{BatchTransaction, Shared};
use crate::handler::{Context, Dependency, HandlerError};
use crate::message::DropReason;
use crate::store::OnceVerdict;

/// The context of one batch handler call.
#[derive(Debug, Clone)]
pub struct BatchContext {
    pub(crate) shared: Arc<Shared>,
}

impl BatchContext {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        BatchContext { shared }
    }

    /// The first record's context: the group, the shutdown token, the producer and the store
    /// settings are the same for every record of a batch.
    fn first(&self) -> &Context {
        &self.shared.contexts[0]
    }
    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.shared.contexts.len()
    }
    /// Whether the batch holds no record (never, as handed to a handler).
    pub fn is_empty(&self) -> bool {
        self.shared.contexts.is_empty()
    }
    /// The consumer group.
    pub fn group(&self) -> &str {
        self.first().group()
    }
    /// The dependency `name`, to call through its circuit breaker once for the batch (see
    /// [`Context::dependency`]; an item's own context has it too).
    pub fn dependency<'a>(&'a self, name: &'a str) -> Dependency<'a> {
        self.first().dependency(name)
    }
    /// Cancelled when the worker shuts down: a long batch may stop early and return a
    /// transient error (its records are delivered again).
    pub fn shutdown(&self) -> &CancellationToken {
        self.first().shutdown()
    }

    /// One Postgres transaction for the whole batch, in which steadfast has checked every
    /// record that is not failed yet (its id not applied before, its version newer than its
    /// key's applied one, its lock's fencing token not superseded) in one round trip. Apply
    /// the records it [`applies`](BatchTransaction::applies) through it and commit it: the
    /// records' ids, versions and tokens are written with your statements, once, at the
    /// commit.
    ///
    /// The others are left out and reported as today: a duplicate or stale record is
    /// dropped; a record whose lock was taken over is handled again under a new grant. A
    /// record whose type declares neither `id` nor `version` is failed permanently (a
    /// redelivery could not be recognised). `Ok(None)`: no record is left to apply.
    ///
    /// ```no_run
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize, steadfast::Message)]
    /// # #[message(topic = "ledger", key = account, id = txn)]
    /// # struct Txn { txn: String, account: String, amount: i64 }
    /// # async fn handle_batch(batch: steadfast::handler::Batch<Txn>, cx: &steadfast::handler::BatchContext) -> Result<(), steadfast::HandlerError> {
    /// let Some(tx) = cx.transaction().await? else { return Ok(()) };
    /// for item in batch.iter().filter(|item| tx.applies(item)) {
    ///     let txn = item.message();
    ///     tx.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", &[&txn.amount, &txn.account]).await?;
    /// }
    /// tx.commit().await
    /// # }
    /// ```
    ///
    /// Needs `[transaction] postgres = "postgres://..."` (or the builder's `transactions`).
    pub async fn transaction(&self) -> Result<Option<BatchTransaction>, HandlerError> {
        let Some(stores) = self.first().transactions.clone() else {
            return Err(HandlerError::permanent(
                "no transactional store is configured: set `[transaction] postgres = \"postgres://...\"` or call `WorkerBuilder::transactions`",
            ));
        };
        let shared = &self.shared;
        let mut members = Vec::new();
        let mut records = Vec::new();
        for (index, cx) in shared.contexts.iter().enumerate() {
            if shared.failure(index).is_some() {
                continue;
            }
            let Some(record) = cx.once_record() else {
                *shared.failures[index].lock() = Some(HandlerError::permanent(
                    "once-only effects need the message type to declare an `id` or a `version` (#[message(id = ..)]): without either, a redelivery cannot be recognised",
                ));
                continue;
            };
            if let Some(notes) = &cx.envelope.guard.notes {
                notes.used_transaction.store(true, Ordering::SeqCst);
            }
            members.push(index);
            records.push(record);
        }
        if records.is_empty() {
            return Ok(None);
        }
        let start = stores.begin_once_batch(&records).await?;
        let mut applied = Vec::new();
        for ((index, record), verdict) in members.into_iter().zip(records).zip(start.verdicts) {
            let guard = &shared.contexts[index].envelope.guard;
            let skipped = match verdict {
                OnceVerdict::Apply => {
                    if let Some(notes) = &guard.notes {
                        notes.handed.store(true, Ordering::SeqCst);
                    }
                    applied.push((index, record));
                    continue;
                }
                OnceVerdict::Duplicate => DropReason::Duplicate,
                OnceVerdict::Stale => DropReason::Stale,
                OnceVerdict::Fenced => {
                    if let Some(lease) = &guard.lease {
                        lease.mark_lost();
                    }
                    continue;
                }
            };
            if let Some(notes) = &guard.notes {
                *notes.skipped.lock() = Some(skipped);
            }
        }
        Ok(start
            .transaction
            .map(|tx| BatchTransaction::new(tx, applied, shared.clone())))
    }
}
