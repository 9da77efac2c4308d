//! The dispatcher: per partition an [`OffsetTracker`], per key a FIFO lane (one key strictly
//! sequential, other keys concurrent up to the concurrency bound), bounds that pause fetching
//! when reached and resume it when drained, and the parking of keys whose record sits in a
//! retry tier (strict ordering).
//!
//! Pure state: it decides which jobs start and which partitions to pause or resume; the
//! worker carries the decisions out. Lanes are freed when empty, so memory follows the
//! in-flight bound, not the number of distinct keys ever seen.
//!
//! ## Why no bound can wedge the worker
//!
//! Delivered, unfinished records fall in three classes, each with its own bound:
//!
//! - *source records that can run*: running, ready, or queued behind a running record of
//!   their key. At `max_in_flight` of them the consume loop stops taking records (and after a
//!   while pauses every partition, polling on). Each of them finishes without any record that
//!   is not yet delivered: a running handler ends, and the next of its lane starts.
//! - *parked records*: source records queued behind a key parked for a retry-tier record.
//!   They do not count against `max_in_flight` (they wait for a record that may not be
//!   delivered yet); at `max_in_flight` of them only the *source* partitions pause.
//! - *retry-tier records*: never parked and never queued behind a source record, so each
//!   finishes by itself (a held one when it is due). At `max_in_flight` of them only the tier
//!   partitions pause.
//!
//! So whatever the bounds, the record a parked key waits for can be fetched: the source
//! records that can run drain by themselves and reopen the loop, parked records never close
//! it, and tier partitions are never paused by source records. A full key lane
//! (`max_per_key`) pauses only its own partition. A key is parked only while the tier
//! partition its record went to is assigned to this worker, so the record it waits for is
//! fetched here.
//!
//! One key's source record and its retry-tier records queue in different lanes, and an
//! abandoned job of a revoked partition may still run when the partition comes back; still,
//! two jobs whose records share a first-delivery lane never run at once: the later one waits
//! until the running one ends. It waits only for a *running* job, which ends by itself, so
//! this wait cannot wedge either. A first delivery's job is seen by its lane's `running` flag;
//! only the jobs that flag cannot show (a retry-tier record's, an abandoned one whose lane was
//! dropped at its revoke) are counted apart, so a worker without retry tiers keeps no
//! bookkeeping per record for this.
//!
//! ## Where each concern lives
//!
//! - [`lanes`]: the key lanes, the ready queue, and which record may start;
//! - [`partitions`]: per partition its offsets, epoch, held and deferred records, commits;
//! - [`assignment`]: assignments, the hand-over of what was read back, revokes;
//! - [`parking`]: keys held back while a record of theirs sits in a retry tier;
//! - [`pause`]: the bounds and the pause and resume decisions they lead to;
//! - [`view`]: what the stall detector sees.

mod assignment;
mod lanes;
mod parking;
mod partitions;
mod pause;
#[cfg(test)]
pub(crate) mod testing;
mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use self::lanes::Lanes;
use self::partitions::Partitions;
use self::pause::PauseControl;
use super::tiers::{ParkedKeys, Topology};
use crate::message::{Envelope, Outcome};

pub(crate) use self::assignment::{PendingTierRecord, Recovered};
pub(crate) use self::lanes::LaneKey;

/// A topic and partition.
pub(crate) type TopicPartition = (Arc<str>, i32);

/// The bounds and ordering mode the dispatcher enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Handler calls running at once, across all keys.
    pub(crate) concurrency: usize,
    /// Source records delivered that can run and are not finished: past it the consume loop
    /// stops taking records. Parked records and retry-tier records have bounds of the same
    /// size of their own (see the module docs).
    pub(crate) max_in_flight: usize,
    /// Messages queued in one key's lane.
    pub(crate) max_per_key: usize,
    /// Park later messages of a key while one of its messages sits in a retry tier.
    pub(crate) strict: bool,
    /// How long a key may stay parked before it is reported (it stays parked).
    pub(crate) park_limit: Duration,
}

/// A message to hand to the policy stack.
#[derive(Debug)]
pub(crate) struct Job {
    /// The lane the record was queued in.
    pub(crate) lane: LaneKey,
    /// The assignment of its partition the job belongs to.
    pub(crate) epoch: u64,
    /// The record.
    pub(crate) envelope: Envelope,
    /// For a retry-tier record, the source lane of its first delivery, which this job holds
    /// busy until it ends (computed once, when the job starts); `None` for a first delivery,
    /// whose own lane's `running` flag stands for it.
    pub(crate) origin: Option<LaneKey>,
    /// Cancelled when the job is abandoned: its partition was lost, or revoked while it still
    /// ran at the drain deadline. An abandoned job must publish no copy any more (the next
    /// owner may already have read back the tiers and handles the record itself). Shared by
    /// the jobs of one assignment of a partition (an `Arc`: handing it to a job is a count,
    /// not a lock of the token's own tree).
    pub(crate) abandoned: Arc<CancellationToken>,
}

/// What became of a delivered message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Queued in its lane (and possibly started).
    Queued,
    /// Finished before the last commit, or copied to a tier or the dead-letter topic
    /// already: skipped.
    AlreadyFinished,
    /// A retry-tier message that is not due: held, its partition paused until `due_ms`.
    Held { due_ms: i64, epoch: u64 },
    /// Its partition is not assigned (a message from before a revoke): ignored.
    NotAssigned,
    /// Its partition's retry state is still being read back: kept until it is.
    Deferred,
    /// A retry-tier record another consumer group routed (shared tier names): skipped.
    OtherGroup,
}

/// How many delivered records are unfinished, by class (see the module docs), and how many
/// handler calls run.
#[derive(Debug, Default)]
struct Load {
    /// Handler calls running.
    running: usize,
    /// Every delivered, unfinished record (held and deferred ones too).
    in_flight: usize,
    /// Of those, retry-tier records.
    tier_in_flight: usize,
    /// Delivered records dropped unfinished at revokes, not yet reported.
    abandoned: u64,
}

impl Load {
    /// A delivered record is in flight.
    fn count(&mut self, is_tier: bool) {
        self.in_flight += 1;
        if is_tier {
            self.tier_in_flight += 1;
        }
    }

    /// A record left the in-flight counts (it finished, or is counted anew).
    fn uncount(&mut self, is_tier: bool) {
        self.in_flight -= 1;
        if is_tier {
            self.tier_in_flight -= 1;
        }
    }
}

/// The dispatcher's state; the worker keeps it behind a mutex.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    limits: Limits,
    topology: Topology,
    /// Per assigned partition: offsets, epoch, held and deferred records.
    partitions: Partitions,
    /// The key lanes and which of them may start.
    lanes: Lanes,
    /// Source lanes parked while one of their messages sits in a retry tier.
    parked: ParkedKeys,
    /// Pause and resume decisions.
    pause: PauseControl,
    /// Records in flight and handler calls running.
    load: Load,
    /// Shutting down: no job starts any more.
    stopping: bool,
    /// When a message of any partition last finished.
    last_finish: Instant,
}

impl Dispatcher {
    /// An empty dispatcher enforcing `limits`, for a worker without retry tiers.
    #[cfg(test)]
    pub(crate) fn new(limits: Limits) -> Self {
        Self::with_topology(limits, Topology::default())
    }

    /// An empty dispatcher enforcing `limits` over the topics of `topology`.
    pub(crate) fn with_topology(limits: Limits, topology: Topology) -> Self {
        Dispatcher {
            limits: Limits {
                concurrency: limits.concurrency.max(1),
                max_in_flight: limits.max_in_flight.max(limits.concurrency.max(1)),
                max_per_key: limits.max_per_key.max(1),
                strict: limits.strict,
                park_limit: limits.park_limit,
            },
            topology,
            partitions: Partitions::default(),
            lanes: Lanes::default(),
            parked: ParkedKeys::default(),
            pause: PauseControl::default(),
            load: Load::default(),
            stopping: false,
            last_finish: Instant::now(),
        }
    }

    /// The retry tier `topic` is (1-based); 0 for the source.
    pub(crate) fn tier_of(&self, topic: &str) -> u32 {
        self.topology.tier_of(topic)
    }

    /// The retry-tier topics of the worker's group, tier 1 first.
    pub(crate) fn tier_topics(&self) -> &[Arc<str>] {
        &self.topology.tiers
    }

    /// Takes a delivered message. `due_ms` is set for retry-tier messages.
    pub(crate) fn accept(
        &mut self,
        envelope: Envelope,
        due_ms: Option<i64>,
        now_ms: i64,
    ) -> (Accepted, Vec<Job>) {
        let tp: TopicPartition = (envelope.topic.clone(), envelope.partition);
        let Some(p) = self.partitions.map.get_mut(&tp) else {
            return (Accepted::NotAssigned, Vec::new());
        };
        if p.revoking {
            return (Accepted::NotAssigned, Vec::new());
        }
        let is_tier = p.tier > 0;
        if p.recovering {
            p.deferred.push(envelope);
            self.load.count(is_tier);
            return (Accepted::Deferred, Vec::new());
        }
        if !p.tracker.begin(envelope.offset) {
            return (Accepted::AlreadyFinished, Vec::new());
        }
        if is_tier && self.topology.is_other_groups(&envelope) {
            p.tracker.finish(envelope.offset);
            p.note_lowest();
            return (Accepted::OtherGroup, Vec::new());
        }
        p.note_lowest();
        self.load.count(is_tier);
        if let Some(due_ms) = due_ms.filter(|due| *due > now_ms) {
            let epoch = p.epoch;
            p.held = Some(envelope);
            self.update_pause(&tp);
            self.update_bound_pauses();
            return (Accepted::Held { due_ms, epoch }, Vec::new());
        }
        self.enqueue(&tp, envelope);
        self.update_bound_pauses();
        (Accepted::Queued, self.fill())
    }

    /// Takes a record out of the in-flight counts (it finished, or is counted anew).
    fn uncount(&mut self, topic: &str) {
        let is_tier = self.topology.tier_of(topic) > 0;
        self.load.uncount(is_tier);
    }

    /// Hands over a held retry-tier message once it is due, and resumes its partition.
    pub(crate) fn release_held(&mut self, tp: &TopicPartition, epoch: u64) -> Vec<Job> {
        let Some(p) = self.partitions.map.get_mut(tp) else {
            return Vec::new();
        };
        if p.epoch != epoch {
            return Vec::new();
        }
        let Some(envelope) = p.held.take() else {
            return Vec::new();
        };
        self.enqueue(tp, envelope);
        self.update_pause(tp);
        self.fill()
    }

    /// Records the outcome of a job and starts what may start next.
    pub(crate) fn complete(&mut self, job: &Job, outcome: &Outcome) -> Vec<Job> {
        if let Some(origin) = &job.origin {
            self.unbusy(origin);
        }
        self.load.running -= 1;
        self.uncount(&job.envelope.topic);
        let tp: TopicPartition = (job.lane.partition().0.clone(), job.envelope.partition);
        if self.partitions.is_current(&tp, job.epoch) {
            self.complete_current(job, outcome, &tp);
        } else {
            self.complete_orphan(job, &tp);
        }
        self.update_bound_pauses();
        self.fill()
    }

    /// The outcome of a job of its partition's current assignment: its offset, its key's
    /// parking, its lane.
    fn complete_current(&mut self, job: &Job, outcome: &Outcome, tp: &TopicPartition) {
        let (job_lane, epoch, envelope) = (&job.lane, job.epoch, &job.envelope);
        if let Some(p) = self.partitions.map.get_mut(tp) {
            p.running -= 1;
            if outcome.is_finished() {
                p.tracker.finish(envelope.offset);
                p.note_lowest();
                self.last_finish = Instant::now();
            }
        }
        if self.limits.strict {
            self.update_parking(envelope, outcome);
        }
        let lane_done = match self.lanes.by_key.get_mut(job_lane) {
            Some(lane) if lane.epoch == epoch => {
                lane.running = false;
                lane.queue.is_empty()
            }
            _ => false,
        };
        if job.origin.is_none() {
            // Lanes waiting for this first delivery go first, then its own next record.
            self.release(job_lane);
        }
        if lane_done && !self.parked.contains(job_lane) {
            self.lanes.by_key.remove(job_lane);
        } else {
            self.mark_ready(job_lane);
        }
    }

    /// The end of a job of an earlier assignment of its partition (revoked or lost since).
    fn complete_orphan(&mut self, job: &Job, tp: &TopicPartition) {
        self.partitions.orphan_ended(tp);
        if job.origin.is_none() && matches!(job.lane, LaneKey::Keyed(..)) {
            // A first delivery whose lane was dropped at the revoke (`finish_revoke`).
            self.unbusy(&job.lane);
        }
    }

    /// Stops starting new jobs (shutdown); running ones finish.
    pub(crate) fn stop(&mut self) {
        self.stopping = true;
    }

    /// Handler calls running now.
    pub(crate) fn running(&self) -> usize {
        self.load.running
    }

    /// Messages delivered and not finished.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.load.in_flight
    }

    /// Messages delivered and not finished, handler calls running, keys parked, and messages
    /// queued behind parked keys.
    pub(crate) fn gauges(&self) -> (usize, usize, usize, usize) {
        (
            self.load.in_flight,
            self.load.running,
            self.parked.len(),
            self.parked.messages,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ack, copy, limits, msg, tiered, tp};
    use super::*;
    use crate::message::headers;
    use crate::runtime::offsets::FinishedAbove;

    #[test]
    fn a_held_retry_message_pauses_until_released() {
        let mut d = Dispatcher::new(limits(4, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        d.take_control();
        let (accepted, jobs) = d.accept(msg("k", 0), Some(2_000), 1_000);
        assert!(jobs.is_empty());
        let Accepted::Held { epoch, .. } = accepted else {
            panic!("held expected, got {accepted:?}");
        };
        assert_eq!(d.take_control(), vec![(tp(), true)]);
        let jobs = d.release_held(&tp(), epoch);
        assert_eq!(jobs.len(), 1);
        assert_eq!(d.take_control(), vec![(tp(), false)]);
    }

    #[test]
    fn a_record_fetched_again_runs_once() {
        // The chaos test's seed 16: a retry tier's records fetched again in one assignment ran
        // twice, and each run routed its own copy.
        let mut d = Dispatcher::new(limits(4, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let (_, first) = d.accept(msg("k", 0), None, 0);
        assert_eq!(first.len(), 1);
        let (accepted, started) = d.accept(msg("k", 0), None, 0);
        assert_eq!(
            accepted,
            Accepted::AlreadyFinished,
            "running: not queued again"
        );
        assert!(started.is_empty());
        let job = &first[0];
        d.complete(job, &ack());
        assert_eq!(
            d.accept(msg("k", 0), None, 0).0,
            Accepted::AlreadyFinished,
            "finished: skipped"
        );
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn a_tier_record_of_another_group_is_skipped() {
        let mut d = tiered(limits(4, 100, 10));
        let mut e = copy("K", 0, 0);
        e.headers.set(headers::GROUP, "other");
        assert_eq!(d.accept(e, None, 0).0, Accepted::OtherGroup);
        assert_eq!(d.gauges().0, 0);
    }
}
