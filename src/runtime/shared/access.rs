//! What the consume loop, the endpoint and the rebalance callbacks ask of the dispatcher,
//! each question one short lock.

use std::sync::Arc;
use std::time::Instant;

use super::Shared;
use crate::observe::WorkerView;
use crate::policy;
use crate::runtime::dispatch::TopicPartition;
use crate::runtime::offsets::FinishedAbove;

/// A partition's commit: offset and metadata.
pub(crate) type Commit = (TopicPartition, i64, String);

/// The dispatcher's gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gauges {
    /// Messages delivered and not finished.
    pub(crate) in_flight: usize,
    /// Handler calls running.
    pub(crate) running: usize,
    /// Keys parked for a retry-tier record.
    pub(crate) parked: usize,
    /// Messages queued behind parked keys.
    pub(crate) parked_messages: usize,
    /// Partitions assigned.
    pub(crate) assigned: usize,
}

/// What a revoke's drain left.
#[derive(Debug)]
pub(crate) struct Drained {
    /// The final commits of the revoked partitions.
    pub(crate) commits: Vec<Commit>,
    /// Delivered records dropped unfinished (delivered again to the next owner).
    pub(crate) abandoned: u64,
    /// Handlers still running at the deadline, abandoned.
    pub(crate) abandoned_jobs: usize,
}

/// The consume loop's questions.
impl Shared {
    /// Whether the in-flight bound is reached, and whether every partition is paused because
    /// it stayed reached too long.
    pub(crate) fn full_and_stalled(&self) -> (bool, bool) {
        let d = self.dispatcher.lock();
        (d.is_full(), d.is_stalled())
    }

    /// Pauses (`true`) or resumes every partition for a stalled bound.
    pub(crate) fn set_stalled(&self, stalled: bool) {
        self.dispatcher.lock().set_stalled(stalled);
    }

    /// Pauses (`true`) or resumes every partition for the circuit breaker.
    pub(crate) fn set_breaker_open(&self, open: bool) {
        self.dispatcher.lock().set_breaker_open(open);
    }

    /// Pause and resume decisions to carry out, in partition order.
    pub(crate) fn take_control(&self) -> Vec<(TopicPartition, bool)> {
        self.dispatcher.lock().take_control()
    }

    /// Partitions to read again from an offset (records let go behind a parked key).
    pub(crate) fn take_seeks(&self) -> Vec<(TopicPartition, i64)> {
        self.dispatcher.lock().take_seeks()
    }

    /// The seek of `tp` failed: asked for again at the next tick.
    pub(crate) fn seek_failed(&self, tp: &TopicPartition) {
        self.dispatcher.lock().seek_failed(tp);
    }

    /// Asks again for the records let go of idle lanes to be read (see
    /// `Dispatcher::refetch_idle`).
    pub(crate) fn refetch_idle(&self) {
        self.dispatcher.lock().refetch_idle();
    }

    /// Commits that would change what the broker holds (`all`: every partition's, as after a
    /// failed commit), stamped now.
    pub(crate) fn take_commits(&self, all: bool) -> Vec<Commit> {
        let mut d = self.dispatcher.lock();
        if all {
            d.forget_commits();
        }
        d.take_commits(policy::now_ms())
    }

    /// Forgets which commits were taken: the next ones are taken again (a commit failed).
    pub(crate) fn forget_commits(&self) {
        self.dispatcher.lock().forget_commits();
    }

    /// Reports keys parked past the park limit (see `Dispatcher::report_long_parked`).
    pub(crate) fn report_long_parked(&self, now: Instant) {
        self.dispatcher.lock().report_long_parked(now);
    }

    /// The retry-tier topics of the worker's group, tier 1 first.
    pub(crate) fn tier_topics(&self) -> Vec<Arc<str>> {
        self.dispatcher.lock().tier_topics().to_vec()
    }

    /// Stops starting jobs (shutdown); returns the partitions assigned.
    pub(crate) fn stop(&self) -> Vec<TopicPartition> {
        let mut d = self.dispatcher.lock();
        d.stop();
        d.assigned()
    }

    /// Handler calls running now.
    pub(crate) fn running(&self) -> usize {
        self.dispatcher.lock().running()
    }
}

/// The endpoint's questions.
impl Shared {
    /// What the stall detector needs to know at `now`.
    pub(crate) fn view(&self, now: Instant) -> WorkerView {
        self.dispatcher.lock().view(now)
    }

    /// The dispatcher's gauges.
    pub(crate) fn gauges(&self) -> Gauges {
        let d = self.dispatcher.lock();
        let (in_flight, running, parked, parked_messages) = d.gauges();
        Gauges {
            in_flight,
            running,
            parked,
            parked_messages,
            assigned: d.assigned().len(),
        }
    }

    /// The partitions assigned now.
    pub(crate) fn assigned(&self) -> Vec<TopicPartition> {
        self.dispatcher.lock().assigned()
    }

    /// The assigned retry-tier partitions with the offset their commit stands at.
    pub(crate) fn tier_watermarks(&self) -> Vec<(TopicPartition, Option<i64>)> {
        self.dispatcher.lock().tier_watermarks()
    }
}

/// The rebalance callbacks' questions.
impl Shared {
    /// Forgets revoked partitions without a drain or a commit: the worker is closing, and
    /// its shutdown drained and committed already.
    pub(crate) fn forget_revoked(&self, tps: &[TopicPartition]) {
        let abandoned = {
            let mut d = self.dispatcher.lock();
            for tp in tps {
                d.begin_revoke(tp);
                d.finish_revoke(tp, 0);
            }
            d.take_abandoned()
        };
        self.requeued(abandoned);
    }

    /// Stops delivering the revoked partitions `tps`, waits until their running handlers
    /// ended (unless they were `lost`) or `deadline` passed, then forgets them; returns their
    /// final commits and what was abandoned.
    ///
    /// The wait blocks the calling thread, librdkafka's rebalance callback, on purpose. The
    /// worker's rebalances are eager: the rebalance goes on (the partitions are unassigned,
    /// the group rejoins, the next owner starts from the committed offsets and reads back the
    /// retry tiers) as soon as the callback returns. A hand-off that returned at once and
    /// drained later would commit too late (after the rejoin the commit of a partition no
    /// longer owned fails, so finished work runs again) and would let running handlers publish
    /// copies after the next owner's read-back (records routed twice). So the callback waits,
    /// bounded by the drain timeout; it runs inside `block_in_place`, and handlers signal
    /// `completed` from their own tasks, so nothing it waits for needs the blocked thread.
    pub(crate) fn drain_revoked(
        &self,
        tps: &[TopicPartition],
        lost: bool,
        deadline: Instant,
    ) -> Drained {
        let mut d = self.dispatcher.lock();
        for tp in tps {
            d.begin_revoke(tp);
        }
        while !lost && tps.iter().any(|tp| d.running_in(tp) > 0) {
            if self.completed.wait_until(&mut d, deadline).timed_out() {
                let abandoned: usize = tps.iter().map(|tp| d.running_in(tp)).sum();
                tracing::warn!(
                    abandoned,
                    "revoke drain deadline passed; abandoning running handlers"
                );
                break;
            }
        }
        // Handlers still running now are abandoned (`finish_revoke` tells them).
        let abandoned_jobs: usize = tps.iter().map(|tp| d.running_in(tp)).sum();
        let mut commits = Vec::new();
        let now_ms = policy::now_ms();
        for tp in tps {
            if let Some((offset, metadata)) = d.finish_revoke(tp, now_ms) {
                commits.push((tp.clone(), offset, metadata));
            }
        }
        Drained {
            commits,
            abandoned: d.take_abandoned(),
            abandoned_jobs,
        }
    }

    /// Starts tracking assigned partitions, each with what its last commit said, paused until
    /// their retry state is read back; returns each one's assignment epoch.
    pub(crate) fn assign_recovering(
        &self,
        assigned: Vec<(TopicPartition, FinishedAbove)>,
    ) -> Vec<(TopicPartition, u64, FinishedAbove)> {
        let mut d = self.dispatcher.lock();
        assigned
            .into_iter()
            .map(|(tp, restored)| {
                let epoch = d.assign_recovering(tp.clone(), restored.clone());
                (tp, epoch, restored)
            })
            .collect()
    }

    /// Forgets the pause decisions of the assigned partitions `tps` (the callback resumed
    /// them itself); returns those of them that must stay paused.
    pub(crate) fn settle_assigned(&self, tps: &[TopicPartition]) -> Vec<TopicPartition> {
        let mut d = self.dispatcher.lock();
        d.take_control_of(tps);
        d.paused_of(tps)
    }

    /// Jobs of earlier assignments of the partitions `epochs` still running.
    pub(crate) fn orphans_of(&self, epochs: &[(TopicPartition, u64)]) -> usize {
        self.dispatcher.lock().orphans_of(epochs)
    }

    /// Whether any of the partitions `epochs` still waits for its read-back.
    pub(crate) fn any_recovering(&self, epochs: &[(TopicPartition, u64)]) -> bool {
        let d = self.dispatcher.lock();
        epochs.iter().any(|(tp, _)| d.is_recovering(tp))
    }
}
