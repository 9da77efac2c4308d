//! State shared by the consume loop, the handler tasks and the rebalance callbacks: the
//! dispatcher behind a mutex, the policy stack, and the signals between them.
//!
//! This module is the only one that locks the dispatcher: the others ask through the methods
//! of [`Shared`] — [`jobs`] runs records through the policy stack, [`access`] answers the
//! consume loop, the endpoint and the rebalance callbacks.

mod access;
mod helpers;
mod jobs;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::helpers::Helpers;
use super::dispatch::Dispatcher;
use crate::observe::{Health, Meters};
use crate::policy::{self, BoxedStack};

/// Counts of outcomes since the worker started (see `WorkerStats`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Messages the handler finished successfully.
    pub(crate) handled: AtomicU64,
    /// Messages sent to a retry tier.
    pub(crate) routed_to_tier: AtomicU64,
    /// Messages sent to the dead-letter topic.
    pub(crate) dead_lettered: AtomicU64,
    /// Messages dropped as stale or duplicate.
    pub(crate) dropped: AtomicU64,
    /// Of those, messages dropped as stale.
    pub(crate) dropped_stale: AtomicU64,
    /// Messages left unfinished at shutdown or revoke.
    pub(crate) requeued: AtomicU64,
    /// Messages skipped because the last commit recorded them as finished.
    pub(crate) skipped_finished: AtomicU64,
    /// Partitions assigned, counted at every assignment.
    pub(crate) partitions_assigned: AtomicU64,
}

/// What the shared state is made of besides the dispatcher.
pub(crate) struct Parts {
    /// The policy stack every record goes through.
    pub(crate) stack: BoxedStack,
    /// Where the stack publishes routed copies.
    pub(crate) sink: Arc<dyn policy::Sink>,
    /// The runtime handler tasks, timers and blocking read-backs run on.
    pub(crate) runtime: tokio::runtime::Handle,
    /// The worker's metric handles.
    pub(crate) meters: Meters,
    /// What the readiness probe knows of the broker and the stores.
    pub(crate) health: Arc<Health>,
    /// Cancelled when the worker stops.
    pub(crate) shutdown: CancellationToken,
}

/// See the module docs.
pub(crate) struct Shared {
    dispatcher: Mutex<Dispatcher>,
    /// Signalled whenever a job completes (revoke drains wait on it).
    completed: Condvar,
    /// Wakes the consume loop: pause/resume decisions or a drained shutdown.
    wake: Notify,
    stack: BoxedStack,
    counters: Counters,
    /// Set once the final commit is done and the consumer is closing: the revoke that closing
    /// triggers must not commit again (a synchronous commit while closing can wait forever).
    closing: AtomicBool,
    /// Orders commits: held by every commit while it is sent, its count raised by each revoke
    /// and final commit. A periodic commit (sent from a blocking thread) whose count changed
    /// since it took its offsets is dropped, so it never lands after a revoke's commit and
    /// moves a revoked partition's committed offset back.
    pub(crate) commit_gate: Mutex<u64>,
    /// Where the stack publishes routed copies (purged of abandoned jobs' copies at revokes).
    pub(crate) sink: Arc<dyn policy::Sink>,
    /// The runtime handler tasks, timers and blocking read-backs run on.
    pub(crate) runtime: tokio::runtime::Handle,
    /// The worker's metric handles.
    pub(crate) meters: Meters,
    /// What the readiness probe knows of the broker and the stores.
    pub(crate) health: Arc<Health>,
    /// Cancelled when the worker stops: timers and read-backs end with it.
    pub(crate) shutdown: CancellationToken,
    /// Blocking tasks with clients of their own, waited for when the worker stops.
    pub(crate) helpers: Helpers,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// The state shared around `dispatcher`.
    pub(crate) fn new(dispatcher: Dispatcher, parts: Parts) -> Self {
        Shared {
            dispatcher: Mutex::new(dispatcher),
            completed: Condvar::new(),
            wake: Notify::new(),
            stack: parts.stack,
            counters: Counters::default(),
            closing: AtomicBool::new(false),
            commit_gate: Mutex::new(0),
            sink: parts.sink,
            runtime: parts.runtime,
            meters: parts.meters,
            health: parts.health,
            shutdown: parts.shutdown,
            helpers: Helpers::default(),
        }
    }

    /// Resolves when the consume loop is woken (a decision to carry out, a drained handler),
    /// or at once for a wake-up made before and not taken yet.
    pub(crate) fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Marks the consumer as closing, after the final commit (see `closing`).
    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Whether the consumer is closing after the final commit.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Counts `n` delivered records dropped unfinished (at a revoke, or delivered for a
    /// partition no longer assigned): delivered again later.
    pub(crate) fn requeued(&self, n: u64) {
        if n > 0 {
            self.counters.requeued.fetch_add(n, Ordering::Relaxed);
            self.meters.requeued(n);
        }
    }

    /// Counts `n` partitions assigned.
    pub(crate) fn count_assigned(&self, n: u64) {
        self.counters
            .partitions_assigned
            .fetch_add(n, Ordering::Relaxed);
    }

    /// What the worker did so far.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }
}
