//! Pause state: whether every partition is paused (a stalled in-flight bound, an open
//! breaker), what holds one partition paused, and the pause and resume decisions not carried
//! out yet. When the dispatcher pauses what: `bounds`.

use std::collections::BTreeMap;

use super::job::TopicPartition;
use super::partitions::PartitionState;

/// Pause state and the decisions not carried out yet.
#[derive(Debug, Default)]
pub(super) struct PauseControl {
    /// Pause (true) or resume (false) decisions not yet carried out.
    pub(super) control: BTreeMap<TopicPartition, bool>,
    /// Every partition is paused because the in-flight bound stayed reached too long.
    pub(super) globally_paused: bool,
    /// Every partition is paused while the circuit breaker is open.
    pub(super) breaker_open: bool,
    /// Whether the retry-tier bound was reached, as last applied.
    pub(super) tier_bound_reached: bool,
    /// Where to read a partition from again (its records let go, see `spill`), not carried
    /// out yet.
    pub(super) seeks: BTreeMap<TopicPartition, i64>,
}

impl PauseControl {
    /// Decides whether the partition `tp` (its state `p`) is paused now, `bound` telling
    /// whether the retry-tier bound holds it; queues the decision when it
    /// changed.
    pub(super) fn decide(&mut self, tp: &TopicPartition, p: &mut PartitionState, bound: bool) {
        let want = bound || p.paused_otherwise(self.globally_paused, self.breaker_open);
        if want != p.paused {
            p.paused = want;
            self.control.insert(tp.clone(), want);
        }
    }
}

impl PartitionState {
    /// Whether something other than the parked and tier bounds holds this partition paused.
    fn paused_otherwise(&self, globally_paused: bool, breaker_open: bool) -> bool {
        globally_paused
            || breaker_open
            || self.full_lanes > 0
            || self.held.is_some()
            || self.revoking
            || self.recovering
    }
}
