//! What a handler knows about the message it handles: where it came from and which attempt
//! this is.

use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{HandlerError, Transaction};
use crate::message::{DropReason, Envelope, Headers};
use crate::observe::trace::{self, TraceContext};
use crate::policy::Dependencies;
use crate::producer::Producer;
use crate::store::{OnceRecord, OnceStart, TransactionalStore};

/// The context of one handler call.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) envelope: Envelope,
    pub(crate) attempt: u32,
    pub(crate) group: Arc<str>,
    pub(crate) shutdown: Arc<CancellationToken>,
    pub(crate) transactions: Option<Arc<dyn TransactionalStore>>,
    pub(crate) producer: Option<Producer>,
    pub(crate) dependencies: Option<Arc<Dependencies>>,
}

impl Context {
    pub(crate) fn new(
        envelope: Envelope,
        attempt: u32,
        group: Arc<str>,
        shutdown: Arc<CancellationToken>,
        transactions: Option<Arc<dyn TransactionalStore>>,
        producer: Option<&Producer>,
    ) -> Self {
        let producer = producer.map(|p| {
            let trace = trace::current().or_else(|| TraceContext::from_headers(&envelope.headers));
            p.caused_by(&envelope.topic, envelope.partition, envelope.offset, trace)
        });
        Context {
            envelope,
            attempt,
            group,
            shutdown,
            transactions,
            producer,
            dependencies: None,
        }
    }

    /// With the breakers of the handler's named dependencies.
    pub(crate) fn with_dependencies(mut self, dependencies: Option<Arc<Dependencies>>) -> Self {
        self.dependencies = dependencies;
        self
    }

    /// The dependency `name`, to call through its circuit breaker
    /// (`[dependencies.<name>]`, builder `.dependency_breaker(name, ..)`):
    ///
    /// ```no_run
    /// # use steadfast::{Context, HandlerError};
    /// # async fn charge() -> Result<(), std::io::Error> { Ok(()) }
    /// # async fn handle(cx: &Context) -> Result<(), HandlerError> {
    /// cx.dependency("payments")
    ///     .call(async { charge().await.map_err(HandlerError::transient) })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// While its breaker is open the call is not made and fails as
    /// [`HandlerError::Unavailable`]: returned by the handler, the delivery is tried again
    /// without spending an attempt, and the worker pauses its partitions until the breaker
    /// probes. A name without a configured breaker makes the call as it is.
    pub fn dependency<'a>(&'a self, name: &'a str) -> Dependency<'a> {
        Dependency {
            breakers: self.dependencies.as_deref(),
            name,
        }
    }
    /// The worker's producer, for messages this handler sends: idempotent, `acks=all`, and
    /// each record it sends carries the header `steadfast-caused-by` naming the record being
    /// handled (`<topic>/<partition>/<offset>`) and a `traceparent` whose span is a child of
    /// this attempt's. A send that fails is the handler's to
    /// return as an error; the message is then retried, and a retry sends again (pair it
    /// with an id the consumer deduplicates on).
    pub fn producer(&self) -> Result<&Producer, HandlerError> {
        self.producer.as_ref().ok_or_else(|| {
            HandlerError::permanent(
                "this context has no producer (a HandlerService built without one)",
            )
        })
    }
    /// The attempt number, counting from 1 at the first delivery, across in-place retries
    /// and retry tiers (it travels in a header).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The topic the record was read from (a retry tier's topic for a retried record).
    pub fn topic(&self) -> &str {
        &self.envelope.topic
    }
    /// The record's partition.
    pub fn partition(&self) -> i32 {
        self.envelope.partition
    }
    /// The record's offset.
    pub fn offset(&self) -> i64 {
        self.envelope.offset
    }
    /// The record key.
    pub fn key(&self) -> Option<&Bytes> {
        self.envelope.key.as_ref()
    }
    /// The record headers.
    pub fn headers(&self) -> &Headers {
        &self.envelope.headers
    }
    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }
    /// Cancelled when the worker shuts down: long handlers may stop early and return a
    /// transient error (the message is delivered again).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
    /// The fencing token of the key lock held for this message, when the lock policy is on.
    /// Pass it to downstream writes that check it: a write carrying a smaller token than one
    /// already seen for the key comes from a holder whose lease ran out.
    pub fn lock_token(&self) -> Option<u64> {
        self.envelope.guard.lease.as_ref().map(|l| l.token)
    }
    /// Whether the key lock's lease was lost while this handler ran (its renewal was refused
    /// or a newer holder's write was seen). The result of this call will not be reported as
    /// handled: the message is handled again under a new grant. A long handler may check this
    /// and stop early.
    pub fn lease_lost(&self) -> bool {
        self.envelope
            .guard
            .lease
            .as_ref()
            .is_some_and(|l| l.is_lost())
    }
    /// The message's version as the stale-drop policy sees it, when its type declares one.
    pub fn version(&self) -> Option<i64> {
        self.envelope.guard.facts.as_ref().and_then(|f| f.version)
    }

    /// A Postgres transaction in which steadfast has already recorded this message's id and
    /// compare-and-set its key's version (and checked the lock's fencing token): the
    /// recommended path for once-only effects. Write through it and commit it.
    ///
    /// `Ok(None)` means there is nothing to do: the message was applied before (a
    /// duplicate), a newer version of its key was applied (stale), or a newer lock holder
    /// wrote (this holder's lease is lost). Return `Ok(())`; steadfast reports the message as
    /// dropped, or handles it again under a new lock grant.
    ///
    /// Needs `[transaction] postgres = "postgres://..."` (or the builder's `transactions`).
    ///
    /// ```no_run
    /// # async fn handle(cx: &steadfast::Context) -> Result<(), steadfast::HandlerError> {
    /// let Some(tx) = cx.transaction().await? else { return Ok(()) };
    /// tx.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", &[&10_i64, &"a"]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction(&self) -> Result<Option<Transaction>, HandlerError> {
        let Some(stores) = &self.transactions else {
            return Err(HandlerError::permanent(
                "no transactional store is configured: set `[transaction] postgres = \"postgres://...\"` or call `WorkerBuilder::transactions`",
            ));
        };
        let guard = &self.envelope.guard;
        let Some(record) = self.once_record() else {
            return Err(HandlerError::permanent(
                "once-only effects need the message type to declare an `id` or a `version` (#[message(id = ..)]): without either, a redelivery cannot be recognised",
            ));
        };
        if let Some(notes) = &guard.notes {
            notes
                .used_transaction
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let skipped = match stores.begin_once(&record).await? {
            OnceStart::Apply(tx) => {
                if let Some(notes) = &guard.notes {
                    notes
                        .handed
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                return Ok(Some(Transaction::new(tx, guard.notes.clone())));
            }
            OnceStart::Duplicate => Some(DropReason::Duplicate),
            OnceStart::Stale => Some(DropReason::Stale),
            OnceStart::Fenced => {
                if let Some(lease) = &guard.lease {
                    lease.mark_lost();
                }
                None
            }
        };
        if let (Some(reason), Some(notes)) = (skipped, &guard.notes) {
            *notes.skipped.lock() = Some(reason);
        }
        Ok(None)
    }

    /// What the once-only path records for this record: its id, its version and its lock's
    /// fencing token; `None` when its type declares neither an id nor a version.
    pub(crate) fn once_record(&self) -> Option<OnceRecord> {
        let guard = &self.envelope.guard;
        let facts = guard.facts.as_deref();
        let record = OnceRecord {
            id: facts.and_then(|f| f.id.clone()),
            version_key: facts
                .filter(|f| f.version.is_some())
                .map(|f| f.store_key.clone()),
            version: facts.and_then(|f| f.version),
            fence: facts
                .zip(guard.lease.as_ref())
                .map(|(f, lease)| (f.store_key.clone(), lease.token)),
        };
        (record.id.is_some() || record.version.is_some()).then_some(record)
    }
}

/// A named dependency of a handler, its calls counted by its circuit breaker
/// ([`Context::dependency`]).
#[derive(Debug, Clone, Copy)]
pub struct Dependency<'a> {
    breakers: Option<&'a Dependencies>,
    name: &'a str,
}

impl Dependency<'_> {
    /// Makes `call` through the dependency's breaker (see [`Context::dependency`]); a failure
    /// other than a permanent one counts against the dependency.
    pub async fn call<T>(
        self,
        call: impl std::future::Future<Output = Result<T, HandlerError>>,
    ) -> Result<T, HandlerError> {
        match self.breakers {
            Some(breakers) => breakers.call(self.name, call).await,
            None => call.await,
        }
    }
}
