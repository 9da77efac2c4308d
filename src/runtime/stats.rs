//! What a worker did, counted while it runs and returned when it stops.

use std::sync::atomic::Ordering as AtomicOrdering;

use super::shared::Counters;

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Messages the handler finished successfully.
    pub handled: u64,
    /// Messages sent to a retry tier.
    pub routed_to_tier: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages dropped as stale or duplicate.
    pub dropped: u64,
    /// Of those, messages dropped as stale (the rest were duplicates).
    pub dropped_stale: u64,
    /// Messages left unfinished at shutdown or revoke (delivered again later).
    pub requeued: u64,
    /// Messages skipped because the last commit recorded them as finished.
    pub skipped_finished: u64,
    /// Partitions assigned to the worker, counted at every assignment.
    pub partitions_assigned: u64,
}

impl WorkerStats {
    /// Adds what `other` did.
    pub(crate) fn add(&mut self, other: &WorkerStats) {
        self.handled += other.handled;
        self.routed_to_tier += other.routed_to_tier;
        self.dead_lettered += other.dead_lettered;
        self.dropped += other.dropped;
        self.dropped_stale += other.dropped_stale;
        self.requeued += other.requeued;
        self.skipped_finished += other.skipped_finished;
        self.partitions_assigned += other.partitions_assigned;
    }

    /// What `counters` counted.
    pub(crate) fn of(counters: &Counters) -> Self {
        let c = counters;
        WorkerStats {
            handled: c.handled.load(AtomicOrdering::Relaxed),
            routed_to_tier: c.routed_to_tier.load(AtomicOrdering::Relaxed),
            dead_lettered: c.dead_lettered.load(AtomicOrdering::Relaxed),
            dropped: c.dropped.load(AtomicOrdering::Relaxed),
            dropped_stale: c.dropped_stale.load(AtomicOrdering::Relaxed),
            requeued: c.requeued.load(AtomicOrdering::Relaxed),
            skipped_finished: c.skipped_finished.load(AtomicOrdering::Relaxed),
            partitions_assigned: c.partitions_assigned.load(AtomicOrdering::Relaxed),
        }
    }
}
