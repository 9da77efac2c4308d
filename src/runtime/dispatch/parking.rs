//! How parking meets the lanes (strict ordering; the rule itself is in `tiers::parking`):
//! the records of a parked key stay queued in its lane, do not start, and count against the
//! parked bound instead of the in-flight bound; a key unparked runs again, or its lane is
//! freed when it holds nothing.

use std::time::Instant;

use super::assignment::PendingTierRecord;
use super::dispatcher::Dispatcher;
use super::lanes::LaneKey;
use crate::message::{Envelope, Outcome};
use crate::runtime::tiers::{step_after, ParkStep};

impl Dispatcher {
    /// Parks a source lane whose record left for a retry tier; unparks it once every record
    /// of it that sits in a tier resolved (handled, dropped or dead-lettered).
    pub(super) fn update_parking(&mut self, envelope: &Envelope, outcome: &Outcome) {
        let partitions = &self.partitions;
        let step = step_after(
            &self.topology,
            envelope,
            outcome,
            |tp| partitions.is_live(tp),
            |tp| partitions.map.contains_key(tp),
        );
        match step {
            Some(ParkStep::Park(origin, offset)) => self.park(origin, offset),
            Some(ParkStep::Resolve(origin, offset)) => self.resolve(&origin, offset),
            None => {}
        }
    }

    /// Parks the keys whose records a read-back found waiting in a tier this worker consumes
    /// (unless the tier record already resolved here).
    pub(super) fn park_pending(&mut self, pending: Vec<PendingTierRecord>) {
        for pending in pending {
            let tier_done = match self.partitions.map.get(&pending.tier) {
                // Not consumed here: its resolution would never be seen.
                None => true,
                Some(p) => !p.recovering && p.tracker.is_finished(pending.offset),
            };
            let (topic, partition) = pending.origin.partition();
            let origin_here = self.partitions.is_live(&(topic.clone(), partition));
            if !tier_done && origin_here {
                self.park(pending.origin, pending.origin_offset);
            }
        }
    }

    /// Parks `origin` until its record first delivered at `origin_offset` resolves; the
    /// records queued in its lane now wait behind the park.
    fn park(&mut self, origin: LaneKey, origin_offset: i64) {
        let queued = self.lanes.by_key.get(&origin).map_or(0, |l| l.queue.len());
        self.parked.park(origin, origin_offset, queued);
    }

    /// The record of `origin` first delivered at `origin_offset` resolved: the lane runs
    /// again once none of its records sits in a tier.
    fn resolve(&mut self, origin: &LaneKey, origin_offset: i64) {
        if self.parked.resolve(origin, origin_offset) {
            self.unparked(origin);
        }
    }

    /// A lane that was parked runs again (or is freed when it holds nothing).
    fn unparked(&mut self, key: &LaneKey) {
        let (idle, queued) = self.lanes.by_key.get(key).map_or((false, 0), |l| {
            (l.queue.is_empty() && !l.running, l.queue.len())
        });
        self.parked.messages -= queued;
        if idle {
            self.lanes.by_key.remove(key);
        } else {
            self.mark_ready(key);
        }
    }

    /// Keys parked longer than the park limit and not reported yet: reported once each (a
    /// warning), and they stay parked — a key waits for its retry-tier record however long
    /// that takes. Returns how many keys are parked past the limit in all.
    pub(crate) fn report_long_parked(&mut self, now: Instant) -> usize {
        self.parked.report_long_parked(now, self.limits.park_limit)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::job::Accepted;
    use super::super::testing::{
        ack, copy, msg, ordered as limits, routed, run_all, source, tier, tiered, TIER,
    };
    use super::*;
    use crate::message::RouteTarget;

    #[test]
    fn parked_keys_filling_the_in_flight_bound_never_stop_their_tier_records() {
        // The cycle once seen: concurrency 1, the smallest in-flight bound, every key's first
        // record goes to the tier, later records park behind it until the bound is full.
        let mut d = tiered(limits(1, 1, 8, true));
        let mut jobs = Vec::new();
        let mut offset = 0;
        for key in ["a", "b", "c"] {
            jobs.extend(d.accept(msg(key, offset), None, 0).1);
            offset += 1;
        }
        // Each key's first record fails to the tier; the next records of the key park.
        let first: std::collections::HashSet<i64> = [0, 1, 2].into();
        let ran = run_all(&mut d, jobs, |e| {
            if first.contains(&e.offset) {
                routed()
            } else {
                ack()
            }
        });
        assert_eq!(ran.len(), 3);
        for key in ["a", "b", "c", "a", "b", "c"] {
            let (accepted, started) = d.accept(msg(key, offset), None, 0);
            assert_eq!(accepted, Accepted::Queued);
            assert!(
                started.is_empty(),
                "{key}@{offset} waits behind its tier record"
            );
            offset += 1;
            assert!(
                !d.is_full(),
                "records parked behind a tier record do not close the consume loop"
            );
        }
        let control = d.take_control();
        assert!(
            control.contains(&(source(), true)),
            "the parked bound pauses the source: {control:?}"
        );
        assert!(
            !control.iter().any(|(tp, _)| *tp == tier()),
            "the tier partition stays resumed: {control:?}"
        );
        // The tier records arrive and succeed: every parked record runs, in order per key.
        let mut tier_jobs = Vec::new();
        for (i, (key, origin)) in [("a", 0), ("b", 1), ("c", 2)].into_iter().enumerate() {
            let (accepted, started) = d.accept(copy(key, origin, i as i64), None, 0);
            assert_eq!(accepted, Accepted::Queued);
            tier_jobs.extend(started);
        }
        let ran = run_all(&mut d, tier_jobs, |_| ack());
        let source_order: Vec<i64> = ran
            .iter()
            .filter(|(t, _)| t == "t")
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(source_order.len(), 6, "every parked record ran: {ran:?}");
        for key_offsets in [[3, 6], [4, 7], [5, 8]] {
            let at: Vec<usize> = key_offsets
                .iter()
                .map(|o| source_order.iter().position(|x| x == o).expect("ran"))
                .collect();
            assert!(at[0] < at[1], "key order kept: {source_order:?}");
        }
        assert_eq!(d.gauges(), (0, 0, 0, 0));
        assert!(
            d.take_control().contains(&(source(), false)),
            "source resumed"
        );
        assert_eq!(
            d.take_commits(0)
                .into_iter()
                .map(|(tp, o, _)| (tp, o))
                .collect::<Vec<_>>()
                .len(),
            2
        );
    }

    #[test]
    fn other_keys_keep_flowing_while_a_key_is_parked() {
        let mut d = tiered(limits(2, 4, 8, true));
        let (_, jobs) = d.accept(msg("k", 0), None, 0);
        run_all(&mut d, jobs, |_| routed());
        d.accept(msg("k", 1), None, 0);
        let (_, other) = d.accept(msg("x", 2), None, 0);
        assert_eq!(other.len(), 1, "another key runs at once");
        assert_eq!(run_all(&mut d, other, |_| ack()), vec![("t".to_owned(), 2)]);
        let commits = d.take_commits(0);
        assert!(
            commits.iter().any(|(tp, o, _)| *tp == source() && *o == 1),
            "the parked record holds the commit: {commits:?}"
        );
    }

    #[test]
    fn a_parked_key_waits_past_the_park_limit_and_the_limit_is_only_reported() {
        let mut d = tiered(limits(4, 100, 10, true));
        let (_, jobs) = d.accept(msg("K", 0), None, 0);
        run_all(&mut d, jobs, |_| routed());
        assert!(d.accept(msg("K", 1), None, 0).1.is_empty());
        assert_eq!(d.report_long_parked(Instant::now()), 0);
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(d.report_long_parked(later), 1);
        assert_eq!(d.gauges().2, 1, "still parked after the limit");
        // Its tier record resolves: the parked record runs.
        let (_, tier_jobs) = d.accept(copy("K", 0, 0), None, 0);
        let ran = run_all(&mut d, tier_jobs, |_| ack());
        assert_eq!(
            ran,
            vec![(TIER.to_owned(), 0), ("t".to_owned(), 1)],
            "the tier record first, then the record it held back"
        );
    }

    #[test]
    fn a_key_stays_parked_while_its_record_moves_on_to_the_next_tier() {
        let mut d = tiered(limits(4, 100, 10, true));
        let (_, jobs) = d.accept(msg("K", 0), None, 0);
        run_all(&mut d, jobs, |_| routed());
        d.accept(msg("K", 1), None, 0);
        // Tier 1 fails again: to tier 2, which this worker does not consume (no tier 2 in
        // this topology): the key is not held back for a record it would never see resolve.
        let (_, tier_jobs) = d.accept(copy("K", 0, 0), None, 0);
        let ran = run_all(&mut d, tier_jobs, |e| {
            if &e.topic[..] == TIER {
                Outcome::Routed {
                    target: RouteTarget::RetryTier(2),
                    error_class: crate::message::ErrorClass::Transient,
                }
            } else {
                ack()
            }
        });
        assert_eq!(ran, vec![(TIER.to_owned(), 0), ("t".to_owned(), 1)]);
    }

    #[test]
    fn relaxed_ordering_parks_nothing() {
        let mut d = tiered(limits(4, 100, 10, false));
        let (_, jobs) = d.accept(msg("K", 0), None, 0);
        run_all(&mut d, jobs, |_| routed());
        assert_eq!(d.accept(msg("K", 1), None, 0).1.len(), 1);
    }
}
