//! Parking (strict ordering): a source lane whose record left for a retry tier is parked —
//! its later records queue but do not start — until every record of it that sits in a tier
//! resolved (handled, dropped or dead-lettered).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::lanes::LaneKey;
use super::{Dispatcher, PendingTierRecord, TopicPartition};
use crate::message::{headers, Envelope, Outcome, RouteTarget};

/// A key parked while records of its first delivery's lane sit in retry tiers.
#[derive(Debug)]
pub(super) struct Park {
    /// When it was parked.
    since: Instant,
    /// First-delivery offsets of its records that sit in a tier.
    pending: BTreeSet<i64>,
    /// Whether the park limit was reported.
    reported: bool,
}

/// The parked keys, and how many records wait behind them.
#[derive(Debug, Default)]
pub(super) struct ParkedKeys {
    /// The parked source lanes.
    pub(super) keys: HashMap<LaneKey, Park>,
    /// Source records queued behind a parked key.
    pub(super) messages: usize,
}

impl ParkedKeys {
    /// Whether lane `key` is parked.
    pub(super) fn contains(&self, key: &LaneKey) -> bool {
        self.keys.contains_key(key)
    }

    /// Forgets the parked keys of the revoked partition `tp` (the records queued behind them
    /// are counted out by the caller).
    pub(super) fn forget_partition(&mut self, tp: &TopicPartition) {
        self.keys.retain(|key, _| key.partition() != (&tp.0, tp.1));
    }
}

impl Dispatcher {
    /// Parks a source lane whose record left for a retry tier; unparks it once every record
    /// of it that sits in a tier resolved (handled, dropped or dead-lettered).
    pub(super) fn update_parking(&mut self, envelope: &Envelope, outcome: &Outcome) {
        let tier = self.topology.tier_of(&envelope.topic);
        let routed_to = match outcome {
            Outcome::Routed {
                target: RouteTarget::RetryTier(n),
                ..
            } => Some(*n),
            _ => None,
        };
        if tier == 0 && routed_to.is_none() {
            return;
        }
        let Some(key) = envelope.key.clone() else {
            return;
        };
        let (origin, origin_offset) = if tier == 0 {
            (
                LaneKey::Keyed(envelope.topic.clone(), envelope.partition, key),
                envelope.offset,
            )
        } else {
            (
                LaneKey::Keyed(
                    Arc::from(headers::original_topic(envelope)),
                    headers::original_partition(envelope),
                    key,
                ),
                headers::original_offset(envelope),
            )
        };
        let (origin_topic, origin_partition) = origin.partition();
        let origin_assigned = self
            .partitions
            .is_live(&(origin_topic.clone(), origin_partition));
        match routed_to {
            Some(n) => {
                let watched = self.topology.tier_topic(n).is_some_and(|t| {
                    self.partitions
                        .map
                        .contains_key(&(t.clone(), origin_partition))
                });
                if origin_assigned && watched {
                    self.park(origin, origin_offset);
                } else {
                    if origin_assigned {
                        tracing::warn!(
                            topic = %origin_topic,
                            partition = origin_partition,
                            tier = n,
                            "a record went to a retry-tier partition this worker does not consume: its key is not held back (use the range assignor so that partition p of the source and of its tiers go to one member)"
                        );
                    }
                    self.resolve(&origin, origin_offset);
                }
            }
            None if outcome.is_finished() => self.resolve(&origin, origin_offset),
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

    /// Parks `origin` until its record first delivered at `origin_offset` resolves.
    fn park(&mut self, origin: LaneKey, origin_offset: i64) {
        if let LaneKey::Unkeyed(..) = origin {
            return;
        }
        if !self.parked.contains(&origin) {
            let queued = self.lanes.by_key.get(&origin).map_or(0, |l| l.queue.len());
            self.parked.messages += queued;
            self.parked.keys.insert(
                origin.clone(),
                Park {
                    since: Instant::now(),
                    pending: BTreeSet::new(),
                    reported: false,
                },
            );
        }
        if let Some(park) = self.parked.keys.get_mut(&origin) {
            park.pending.insert(origin_offset);
        }
    }

    /// The record of `origin` first delivered at `origin_offset` resolved: the lane runs
    /// again once none of its records sits in a tier.
    fn resolve(&mut self, origin: &LaneKey, origin_offset: i64) {
        let Some(park) = self.parked.keys.get_mut(origin) else {
            return;
        };
        park.pending.remove(&origin_offset);
        if park.pending.is_empty() {
            self.parked.keys.remove(origin);
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
        let limit = self.limits.park_limit;
        let mut past = 0;
        for (key, park) in &mut self.parked.keys {
            if now.saturating_duration_since(park.since) < limit {
                continue;
            }
            past += 1;
            if !park.reported {
                park.reported = true;
                let (topic, partition) = key.partition();
                tracing::warn!(
                    %topic,
                    partition,
                    key = %key.text(),
                    parked_for = ?now.saturating_duration_since(park.since),
                    waiting_for = ?park.pending,
                    "a key has waited for its retry-tier record longer than the park limit; it keeps waiting (strict order)"
                );
            }
        }
        past
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{
        ack, copy, msg, ordered as limits, routed, run_all, source, tier, tiered, TIER,
    };
    use super::super::Accepted;
    use super::*;

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
                    error_class: "transient",
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
