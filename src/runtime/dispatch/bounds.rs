//! The bounds and the pause and resume decisions they lead to: the in-flight bound closes the
//! consume loop (and, after a stall, pauses every partition), the retry-tier bound pauses
//! the tier partitions, a full key lane (not parked), a held retry record, a revoke, a
//! read-back and an open breaker pause their partitions. Records parked behind a key pause
//! nothing: past their bounds they are let go and read again (`spill`). Decisions are queued for
//! the worker to carry out (see the module docs of [`super`] for why no bound can wedge).

use std::time::Instant;

use super::dispatcher::Dispatcher;
use super::job::TopicPartition;
use super::partitions::ReRead;

impl Dispatcher {
    /// Pause and resume decisions to carry out, in partition order.
    pub(crate) fn take_control(&mut self) -> Vec<(TopicPartition, bool)> {
        std::mem::take(&mut self.pause.control)
            .into_iter()
            .collect()
    }

    /// Partitions to read again from an offset (records let go, see `parking`), in
    /// partition order; each read again is under way from now.
    pub(crate) fn take_seeks(&mut self) -> Vec<(TopicPartition, i64)> {
        let seeks = std::mem::take(&mut self.pause.seeks);
        for (tp, offset) in &seeks {
            if let Some(p) = self.partitions.map.get_mut(tp) {
                let until = p.tracker.next().unwrap_or(*offset).max(p.position);
                p.reread = Some(ReRead {
                    from: *offset,
                    until,
                    since: Instant::now(),
                    confirmed: false,
                });
            }
        }
        seeks.into_iter().collect()
    }

    /// The seek of `tp` failed: no read again is under way (asked for again at the tick).
    pub(crate) fn seek_failed(&mut self, tp: &TopicPartition) {
        if let Some(p) = self.partitions.map.get_mut(tp) {
            p.reread = None;
        }
    }

    /// Of `tps`, the partitions that must stay paused (an open breaker, a stalled bound, a
    /// held retry record, retry state being read back).
    pub(crate) fn paused_of(&self, tps: &[TopicPartition]) -> Vec<TopicPartition> {
        tps.iter()
            .filter(|tp| self.partitions.map.get(*tp).is_some_and(|p| p.paused))
            .cloned()
            .collect()
    }

    /// Forgets pending pause/resume decisions of `tps` (the caller applied them itself).
    pub(crate) fn take_control_of(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            self.pause.control.remove(tp);
        }
    }

    /// Whether the consume loop must look at the state after a completion: decisions to
    /// carry out, a shutdown drain waiting, or a bound that was reached until now.
    pub(crate) fn loop_needs_wake(&self) -> bool {
        !self.pause.control.is_empty()
            || !self.pause.seeks.is_empty()
            || self.stopping
            || self.runnable_in_flight() + 1 >= self.limits.max_in_flight
    }

    /// Source records delivered that can run (not parked) and are not finished.
    fn runnable_in_flight(&self) -> usize {
        self.load.in_flight - self.parked.messages - self.load.tier_in_flight
    }

    /// Whether the in-flight bound is reached: the consume loop stops taking records. Only
    /// source records that can run count (see the module docs).
    pub(crate) fn is_full(&self) -> bool {
        self.runnable_in_flight() >= self.limits.max_in_flight
    }

    /// Whether every partition is paused because the bound stayed reached too long.
    pub(crate) fn is_stalled(&self) -> bool {
        self.pause.globally_paused
    }

    /// Pauses every partition (`true`) while the bound stays reached, so the consume loop can
    /// keep polling without taking records; resumes them (`false`) once there is room.
    pub(crate) fn set_stalled(&mut self, stalled: bool) {
        if stalled != self.pause.globally_paused {
            self.pause.globally_paused = stalled;
            self.update_all_pauses();
        }
    }

    /// Pauses every partition while the circuit breaker is open (`true`), resumes them when it
    /// probes or closes (`false`); the consume loop keeps polling either way.
    pub(crate) fn set_breaker_open(&mut self, open: bool) {
        if open != self.pause.breaker_open {
            self.pause.breaker_open = open;
            self.update_all_pauses();
        }
    }

    /// Re-checks the pause of every partition.
    fn update_all_pauses(&mut self) {
        let tps: Vec<TopicPartition> = self.partitions.map.keys().cloned().collect();
        for tp in tps {
            self.update_pause(&tp);
        }
    }

    /// Re-checks the pauses that follow the retry-tier bound when it was reached or left.
    pub(super) fn update_bound_pauses(&mut self) {
        let now = self.tier_full();
        if now != self.pause.tier_bound_reached {
            self.pause.tier_bound_reached = now;
            self.update_all_pauses();
        }
    }

    /// Whether the retry-tier records in flight reached the bound: the tier partitions pause.
    /// (Records parked behind keys pause nothing: past their bound they are let go and read
    /// again, see `spill`.)
    fn tier_full(&self) -> bool {
        self.load.tier_in_flight >= self.limits.max_in_flight
    }

    /// Decides whether `tp` is paused now, and queues the decision when it changed.
    pub(super) fn update_pause(&mut self, tp: &TopicPartition) {
        let tier_full = self.tier_full();
        let Some(p) = self.partitions.map.get_mut(tp) else {
            return;
        };
        let bound = p.tier > 0 && tier_full;
        self.pause.decide(tp, p, bound);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ack, limits, msg, tp};
    use super::*;
    use crate::runtime::offsets::FinishedAbove;

    #[test]
    fn in_flight_bound_reports_full_and_a_stall_pauses_every_partition() {
        let mut d = Dispatcher::new(limits(1, 4, 10));
        d.assign(tp(), FinishedAbove::default());
        d.take_control();
        let mut jobs = Vec::new();
        for o in 0..4 {
            assert!(!d.is_full());
            jobs.extend(d.accept(msg("k", o), None, 0).1);
        }
        assert!(d.is_full());
        assert!(
            d.take_control().is_empty(),
            "a full dispatcher pauses nothing by itself"
        );
        d.set_stalled(true);
        assert_eq!(d.take_control(), vec![(tp(), true)]);
        let job = jobs.remove(0);
        jobs.extend(d.complete(&job, &ack()));
        assert!(!d.is_full());
        d.set_stalled(false);
        assert_eq!(d.take_control(), vec![(tp(), false)]);
    }

    #[test]
    fn a_full_key_lane_pauses_its_partition() {
        let mut d = Dispatcher::new(limits(4, 100, 2));
        d.assign(tp(), FinishedAbove::default());
        d.take_control();
        let (_, first) = d.accept(msg("k", 0), None, 0);
        d.accept(msg("k", 1), None, 0);
        d.accept(msg("k", 2), None, 0);
        assert_eq!(d.take_control(), vec![(tp(), true)]);
        let job = &first[0];
        d.complete(job, &ack());
        assert_eq!(d.take_control(), vec![(tp(), false)]);
    }
}
