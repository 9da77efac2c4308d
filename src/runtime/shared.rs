//! State shared by the consume loop, the handler tasks and the rebalance callbacks: the
//! dispatcher behind a mutex, the policy stack, and the signals between them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;
use tower::ServiceExt;

use super::dispatcher::{Dispatcher, Job, TopicPartition};
use crate::message::{DropReason, Outcome};
use crate::observe::{Health, Meters};
use crate::policy::BoxedStack;

/// Counts of outcomes since the worker started.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) handled: AtomicU64,
    pub(crate) routed_to_tier: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) dropped_stale: AtomicU64,
    pub(crate) requeued: AtomicU64,
    pub(crate) skipped_finished: AtomicU64,
    pub(crate) partitions_assigned: AtomicU64,
}

/// See the module docs.
pub(crate) struct Shared {
    pub(crate) dispatcher: Mutex<Dispatcher>,
    /// Signalled whenever a job completes (revoke drains wait on it).
    pub(crate) completed: Condvar,
    /// Wakes the consume loop: pause/resume decisions or a drained shutdown.
    pub(crate) wake: Notify,
    pub(crate) stack: BoxedStack,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) counters: Counters,
    /// Set once the final commit is done and the consumer is closing: the revoke that closing
    /// triggers must not commit again (a synchronous commit while closing can wait forever).
    pub(crate) closing: std::sync::atomic::AtomicBool,
    /// The worker's metric handles.
    pub(crate) meters: Meters,
    /// What the readiness probe knows of the broker and the stores.
    pub(crate) health: Arc<Health>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Runs each job through the policy stack on its own task.
    pub(crate) fn start(self: &Arc<Self>, jobs: Vec<Job>) {
        for job in jobs {
            let shared = self.clone();
            let stack = self.stack.clone();
            self.runtime.spawn(async move {
                let outcome = match stack.oneshot(job.envelope.clone()).await {
                    Ok(outcome) => outcome,
                    Err(never) => match never {},
                };
                shared.finish(job, outcome);
            });
        }
    }

    fn finish(self: &Arc<Self>, job: Job, outcome: Outcome) {
        self.count(&outcome);
        let (next, wake) = {
            let mut d = self.dispatcher.lock();
            let next = d.complete(&job.lane, job.epoch, &job.envelope, &outcome);
            (next, d.loop_needs_wake())
        };
        self.completed.notify_all();
        if wake {
            self.wake.notify_one();
        }
        self.start(next);
    }

    /// Releases a held retry-tier message of `tp` once it is due.
    pub(crate) fn release_held(self: &Arc<Self>, tp: &TopicPartition, epoch: u64) {
        let jobs = self.dispatcher.lock().release_held(tp, epoch);
        self.wake.notify_one();
        self.start(jobs);
    }

    /// Counts `n` delivered records dropped unfinished (at a revoke, or delivered for a
    /// partition no longer assigned): delivered again later.
    pub(crate) fn requeued(&self, n: u64) {
        if n > 0 {
            self.counters.requeued.fetch_add(n, Ordering::Relaxed);
            self.meters.requeued(n);
        }
    }

    fn count(&self, outcome: &Outcome) {
        self.meters.outcome(outcome);
        let counter = match outcome {
            Outcome::Ack { .. } => &self.counters.handled,
            Outcome::Routed {
                target: crate::message::RouteTarget::RetryTier(_),
                ..
            } => &self.counters.routed_to_tier,
            Outcome::Routed { .. } => &self.counters.dead_lettered,
            Outcome::Drop(reason) => {
                if *reason == DropReason::Stale {
                    self.counters.dropped_stale.fetch_add(1, Ordering::Relaxed);
                }
                &self.counters.dropped
            }
            Outcome::Requeue | Outcome::Failed(_) => &self.counters.requeued,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
