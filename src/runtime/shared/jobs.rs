//! Records through the policy stack: a delivered record goes into the dispatcher, each job it
//! lets start runs on its own task, and a finished job's outcome goes back into the
//! dispatcher, which may start the next.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt;
use tower::ServiceExt;

use super::Shared;
use crate::message::{DropReason, Envelope, Outcome, RouteTarget};
use crate::policy;
use crate::runtime::dispatch::{Accepted, Dispatcher, Job, Recovered, TopicPartition};
use crate::runtime::tiers;

impl Shared {
    /// Runs each job through the policy stack on its own task.
    pub(crate) fn start(self: &Arc<Self>, jobs: Vec<Job>) {
        for job in jobs {
            let shared = self.clone();
            let stack = self.stack.clone();
            self.runtime.spawn(async move {
                let run = AssertUnwindSafe(stack.oneshot(job.envelope.clone())).catch_unwind();
                let outcome = match policy::abandonable(job.abandoned.clone(), run).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(never)) => match never {},
                    // A panic above the layer that catches the rest's (the route layer's own,
                    // its sink's): the record stays unfinished, its key and slot are freed.
                    Err(panic) => {
                        tracing::error!(
                            topic = %job.envelope.topic,
                            partition = job.envelope.partition,
                            offset = job.envelope.offset,
                            panic = %crate::message::panic_text(panic.as_ref()),
                            "a panic in the runtime's routing; the message stays unfinished (its partition's commit waits for it until the partition is read again)"
                        );
                        Outcome::Requeue
                    }
                };
                shared.finish(job, outcome);
            });
        }
    }

    /// Hands a finished job's outcome to the dispatcher, wakes whoever waits on it (a revoke
    /// drain, the consume loop) and starts what may start next.
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
            Accepted::Queued | Accepted::Deferred | Accepted::ReadAgain => {}
        }
    }

    /// Applies `change` to the dispatcher, wakes the consume loop to carry out the pause and
    /// resume decisions it made, and starts the jobs it let start.
    pub(crate) fn change_and_start(
        self: &Arc<Self>,
        change: impl FnOnce(&mut Dispatcher) -> Vec<Job>,
    ) {
        let jobs = change(&mut self.dispatcher.lock());
        self.wake.notify_one();
        self.start(jobs);
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

    /// Counts a finished job's outcome.
    fn count(&self, outcome: &Outcome) {
        self.meters.outcome(outcome);
        let counter = match outcome {
            Outcome::Ack { .. } => &self.counters.handled,
            Outcome::Routed {
                target: RouteTarget::RetryTier(_),
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
