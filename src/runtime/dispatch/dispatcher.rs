//! The dispatcher's state: its bounds, the topics it serves, and one part per concern (the
//! key lanes, the partitions, the parked keys, the pause state, the counts); the files beside
//! this one hold what it does with them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::job::TopicPartition;
use super::lanes::Lanes;
use super::partitions::Partitions;
use super::pause::PauseControl;
use crate::runtime::tiers::{ParkedKeys, Topology};

/// The bounds and ordering mode the dispatcher enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Handler calls running at once, across all keys.
    pub(crate) concurrency: usize,
    /// Source records delivered that can run and are not finished: past it the consume loop
    /// stops taking records. Parked records and retry-tier records have bounds of the same
    /// size of their own (see the `dispatch` module docs).
    pub(crate) max_in_flight: usize,
    /// Messages queued in one key's lane.
    pub(crate) max_per_key: usize,
    /// Park later messages of a key while one of its messages sits in a retry tier.
    pub(crate) strict: bool,
    /// How long a key may stay parked before it is reported (it stays parked).
    pub(crate) park_limit: Duration,
}

/// How many delivered records are unfinished, by class (see the `dispatch` module docs), and how many
/// handler calls run.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Handler calls running.
    pub(super) running: usize,
    /// Every delivered, unfinished record (held and deferred ones too).
    pub(super) in_flight: usize,
    /// Of those, retry-tier records.
    pub(super) tier_in_flight: usize,
    /// Delivered records dropped unfinished at revokes, not yet reported.
    pub(super) abandoned: u64,
}

impl Load {
    /// A delivered record is in flight.
    pub(super) fn count(&mut self, is_tier: bool) {
        self.in_flight += 1;
        if is_tier {
            self.tier_in_flight += 1;
        }
    }

    /// A record left the in-flight counts (it finished, or is counted anew).
    pub(super) fn uncount(&mut self, is_tier: bool) {
        self.in_flight -= 1;
        if is_tier {
            self.tier_in_flight -= 1;
        }
    }
}

/// The dispatcher's state; the worker keeps it behind a mutex.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    /// The bounds, each at least 1.
    pub(super) limits: Limits,
    /// Which topic is which retry tier.
    pub(super) topology: Topology,
    /// Per assigned partition: offsets, epoch, held and deferred records.
    pub(super) partitions: Partitions,
    /// The key lanes and which of them may start.
    pub(super) lanes: Lanes,
    /// Source lanes parked while one of their messages sits in a retry tier.
    pub(super) parked: ParkedKeys,
    /// Pause and resume decisions.
    pub(super) pause: PauseControl,
    /// Records in flight and handler calls running.
    pub(super) load: Load,
    /// Shutting down: no job starts any more.
    pub(super) stopping: bool,
    /// When a message of any partition last finished.
    pub(super) last_finish: Instant,
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

    /// The assigned retry-tier partitions with the offset their commit stands at (`None`
    /// before anything was delivered).
    pub(crate) fn tier_watermarks(&self) -> Vec<(TopicPartition, Option<i64>)> {
        self.partitions.tier_watermarks()
    }

    /// Jobs of earlier assignments of `tps` still running.
    pub(crate) fn orphans_of(&self, tps: &[(TopicPartition, u64)]) -> usize {
        self.partitions.orphans_of(tps)
    }

    /// Whether `tp` waits for its retry state to be read back.
    pub(crate) fn is_recovering(&self, tp: &TopicPartition) -> bool {
        self.partitions.is_recovering(tp)
    }

    /// How many handler calls of `tp` are running.
    pub(crate) fn running_in(&self, tp: &TopicPartition) -> usize {
        self.partitions.running_in(tp)
    }

    /// The partitions assigned now.
    pub(crate) fn assigned(&self) -> Vec<TopicPartition> {
        self.partitions.assigned()
    }

    /// Commits that would change what the broker holds, and marks them taken. The metadata
    /// is stamped with `now_ms`.
    pub(crate) fn take_commits(&mut self, now_ms: i64) -> Vec<(TopicPartition, i64, String)> {
        self.partitions.take_commits(now_ms)
    }

    /// Forgets which commits were taken, so the next [`Self::take_commits`] returns them all
    /// (after a failed commit).
    pub(crate) fn forget_commits(&mut self) {
        self.partitions.forget_commits();
    }
}
