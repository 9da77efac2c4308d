//! State shared by the consume loop, the handler tasks and the rebalance callbacks: the
//! dispatcher behind a mutex, the policy stack, and the signals between them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::dispatch::{Accepted, Dispatcher, Job, Recovered, TopicPartition};
use super::tiers;
use crate::message::{DropReason, Envelope, Outcome};
use crate::observe::{Health, Meters};
use crate::policy::{self, BoxedStack};

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
    /// Where the stack publishes routed copies (purged of abandoned jobs' copies at revokes).
    pub(crate) sink: Arc<dyn policy::Sink>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) counters: Counters,
    /// Set once the final commit is done and the consumer is closing: the revoke that closing
    /// triggers must not commit again (a synchronous commit while closing can wait forever).
    pub(crate) closing: std::sync::atomic::AtomicBool,
    /// The worker's metric handles.
    pub(crate) meters: Meters,
    /// What the readiness probe knows of the broker and the stores.
    pub(crate) health: Arc<Health>,
    /// Cancelled when the worker stops: timers and read-backs end with it.
    pub(crate) shutdown: CancellationToken,
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
                let run = stack.oneshot(job.envelope.clone());
                let outcome = match policy::abandonable(job.abandoned.clone(), run).await {
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
            let next = d.complete(&job, &outcome);
            (next, d.loop_needs_wake())
        };
        self.completed.notify_all();
        if wake {
            self.wake.notify_one();
        }
        self.start(next);
    }

    /// Takes a record the consumer delivered: into the dispatcher, starting what may start.
    pub(crate) fn accept(self: &Arc<Self>, envelope: Envelope) {
        let tp: TopicPartition = (envelope.topic.clone(), envelope.partition);
        let (accepted, jobs) = accept_into(&mut self.dispatcher.lock(), envelope);
        self.after_accept(tp, accepted);
        self.start(jobs);
    }

    /// Carries out what `accept_into` decided for a record of `tp`.
    fn after_accept(self: &Arc<Self>, tp: TopicPartition, accepted: Accepted) {
        match accepted {
            Accepted::Held { due_ms, epoch } => tiers::release_when_due(self, tp, due_ms, epoch),
            Accepted::AlreadyFinished | Accepted::OtherGroup => {
                self.meters.skipped();
                self.counters
                    .skipped_finished
                    .fetch_add(1, Ordering::Relaxed);
            }
            Accepted::NotAssigned => self.requeued(1),
            Accepted::Queued | Accepted::Deferred => {}
        }
    }

    /// Hands what was read back for the partitions `epochs` to the dispatcher, and accepts
    /// the records delivered meanwhile (in order, before any later record).
    pub(crate) fn recovered(
        self: &Arc<Self>,
        epochs: &[(TopicPartition, u64)],
        recovered: Recovered,
    ) {
        let (routed, parked) = (
            recovered.routed.values().map(Vec::len).sum::<usize>(),
            recovered.pending.len(),
        );
        let mut decided = Vec::new();
        let mut jobs = Vec::new();
        {
            let mut d = self.dispatcher.lock();
            for envelope in d.recovered(epochs, recovered) {
                let tp: TopicPartition = (envelope.topic.clone(), envelope.partition);
                let (accepted, started) = accept_into(&mut d, envelope);
                decided.push((tp, accepted));
                jobs.extend(started);
            }
        }
        if routed > 0 || parked > 0 {
            tracing::info!(
                partitions = epochs.len(),
                already_routed = routed,
                waiting_in_tiers = parked,
                "retry state read back: records already copied are skipped, keys whose records wait in a retry tier are parked"
            );
        }
        for (tp, accepted) in decided {
            self.after_accept(tp, accepted);
        }
        self.start(jobs);
        self.wake.notify_one();
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

/// Puts a delivered record into the dispatcher: a retry-tier record with its due time, a first
/// delivery without any delivery state its producer may have written.
fn accept_into(d: &mut Dispatcher, mut envelope: Envelope) -> (Accepted, Vec<Job>) {
    let is_tier = d.tier_of(&envelope.topic) > 0;
    let due = tiers::read_delivery_state(&mut envelope, is_tier);
    d.accept(envelope, due, policy::now_ms())
}
