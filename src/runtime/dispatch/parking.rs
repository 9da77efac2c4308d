//! How parking meets the lanes (strict ordering; the rule itself is in `tiers::parking`):
//! the records of a parked key stay queued in its lane, do not start, and count against the
//! parked bound instead of the in-flight bound; a key unparked runs again, or its lane is
//! freed when it holds nothing.
//!
//! A parked key never holds its partition back: past `max_per_key` records queued in its
//! lane, or `max_in_flight` parked in all, its next records are *let go* (spilled): dropped
//! from memory but left unfinished (the commit stays below them), their offsets kept in the
//! lane, and every later record of the key follows them. Once the key runs again the
//! partition is read again from the first of them (a seek); the records of other keys read
//! again were delivered before and are skipped, the let-go ones are taken in order.

use std::time::{Duration, Instant};

use super::assignment::PendingTierRecord;
use super::dispatcher::Dispatcher;
use super::job::TopicPartition;
use super::lanes::LaneKey;
use super::lanes::Lanes;
use super::partitions::PartitionState;
use crate::message::{Envelope, Outcome};
use crate::runtime::tiers::{step_after, ParkStep, ParkedKeys};

/// How long a read again may go without delivering a record of its stretch before it is
/// asked for again (its seek was lost).
pub(crate) const RESEEK_AFTER: Duration = Duration::from_secs(10);

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
        let (queued, was_full) = self
            .lanes
            .by_key
            .get_mut(&origin)
            .map_or((0, false), |l| (l.queue.len(), std::mem::take(&mut l.full)));
        if was_full {
            // A parked lane does not pause its partition: its later records are let go past
            // the bound instead (`spill`).
            let (topic, partition) = origin.partition();
            let tp = (topic.clone(), partition);
            if let Some(p) = self.partitions.map.get_mut(&tp) {
                p.full_lanes -= 1;
            }
            self.update_pause(&tp);
        }
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
        let max_per_key = self.limits.max_per_key;
        let (idle, queued, fills) = self
            .lanes
            .by_key
            .get_mut(key)
            .map_or((false, 0, false), |l| {
                let fills = !l.full && l.queue.len() >= max_per_key;
                l.full |= fills;
                (
                    l.queue.is_empty() && !l.running && l.spilled.is_empty(),
                    l.queue.len(),
                    fills,
                )
            });
        self.parked.messages -= queued;
        if fills {
            // Runnable again: a full lane holds its partition back as any other does.
            let (topic, partition) = key.partition();
            let tp = (topic.clone(), partition);
            if let Some(p) = self.partitions.map.get_mut(&tp) {
                p.full_lanes += 1;
            }
            self.update_pause(&tp);
        }
        if idle {
            self.lanes.by_key.remove(key);
        } else {
            // Its records let go are read again once it holds none in memory (the end of
            // its next job, or now).
            if queued == 0 {
                self.refetch(key);
            }
            self.mark_ready(key);
        }
    }

    /// Asks for the records of lane `key` that were let go to be read again, from the first
    /// of them, unless the key is parked, or a read from further back is pending or under way
    /// and has not passed that offset yet (under way: its seek was made less than
    /// [`RESEEK_AFTER`] ago, or it delivered a record since and is still below the offset).
    /// The records of other keys read again are skipped (their offsets were delivered before).
    pub(super) fn refetch(&mut self, key: &LaneKey) {
        if self.parked.contains(key) {
            return;
        }
        let Some(first) = self
            .lanes
            .by_key
            .get(key)
            .and_then(|lane| lane.spilled.first().copied())
        else {
            return;
        };
        let (topic, partition) = key.partition();
        let tp = (topic.clone(), partition);
        let Some(p) = self.partitions.map.get_mut(&tp) else {
            return;
        };
        if p.revoking || p.recovering {
            return;
        }
        if let Some(pending) = self.pause.seeks.get_mut(&tp) {
            *pending = (*pending).min(first);
            return;
        }
        if let Some(read) = &p.reread {
            let under_way = if read.confirmed {
                p.position <= first
            } else {
                read.since.elapsed() < RESEEK_AFTER
            };
            if under_way && read.from <= first && first < read.until {
                return;
            }
        }
        self.pause.seeks.insert(tp, first);
    }

    /// Lanes that are not parked, hold no record and have records let go: their reads are
    /// asked for again (a read that was lost, or one that jumped past them for another
    /// lane). Called at the commit tick.
    pub(crate) fn refetch_idle(&mut self) {
        let idle: Vec<LaneKey> = self
            .lanes
            .by_key
            .iter()
            .filter(|(_, lane)| !lane.spilled.is_empty() && lane.queue.is_empty() && !lane.running)
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            self.refetch(&key);
        }
    }

    /// Keys parked longer than the park limit and not reported yet: reported once each (a
    /// warning), and they stay parked — a key waits for its retry-tier record however long
    /// that takes. Returns how many keys are parked past the limit in all.
    pub(crate) fn report_long_parked(&mut self, now: Instant) -> usize {
        self.parked.report_long_parked(now, self.limits.park_limit)
    }
}

/// Offsets let go on `tp` (its state `p`) that a read again passed without delivering them
/// (gone from the log: compaction, or retention during a long park): taken out of their
/// lanes, which run on or are freed. They were counted finished by the tracker, so the
/// commit moves on. Reported, as their records never ran.
pub(super) fn forget_gone(
    lanes: &mut Lanes,
    parked: &ParkedKeys,
    p: &mut PartitionState,
    tp: &TopicPartition,
    gone: &[i64],
) {
    tracing::warn!(
        topic = %tp.0,
        partition = tp.1,
        offsets = ?gone,
        "records let go behind a parked key are gone from the log (compaction or retention) and were never handled"
    );
    let keys: Vec<LaneKey> = lanes
        .by_key
        .iter_mut()
        .filter(|(key, _)| key.partition() == (&tp.0, tp.1))
        .filter_map(|(key, lane)| {
            let before = lane.spilled.len();
            lane.spilled.retain(|offset| !gone.contains(offset));
            (lane.spilled.len() != before).then(|| key.clone())
        })
        .collect();
    for key in keys {
        let idle = lanes
            .by_key
            .get(&key)
            .is_some_and(|lane| lane.queue.is_empty() && !lane.running && lane.spilled.is_empty());
        if parked.contains(&key) {
            continue;
        }
        if idle {
            lanes.by_key.remove(&key);
        } else {
            lanes.mark_ready(&key);
        }
    }
    p.note_lowest();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::Arc;

    use super::super::job::{Accepted, Job};
    use super::super::testing::{
        ack, copy, msg, ordered as limits, routed, run_all, source, tiered, TIER,
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
            !control.contains(&(source(), true)),
            "parked records past their bound are let go, the source keeps flowing: {control:?}"
        );
        assert_eq!(d.gauges().3, 1, "one record parked in memory (the bound)");
        // The tier records arrive and succeed: the keys run again; the records let go are
        // read again from the first of them.
        let mut tier_jobs = Vec::new();
        for (i, (key, origin)) in [("a", 0), ("b", 1), ("c", 2)].into_iter().enumerate() {
            let (accepted, started) = d.accept(copy(key, origin, i as i64), None, 0);
            assert_eq!(accepted, Accepted::Queued);
            tier_jobs.extend(started);
        }
        let mut ran = run_all(&mut d, tier_jobs, |_| ack());
        assert_eq!(d.take_seeks(), vec![(source(), 4)], "read again from b@4");
        for offset in 3..9 {
            let key = ["a", "b", "c"][(offset % 3) as usize];
            let (_, started) = d.accept(msg(key, offset), None, 0);
            ran.extend(run_all(&mut d, started, |_| ack()));
        }
        let source_order: Vec<i64> = ran
            .iter()
            .filter(|(t, _)| t == "t")
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            source_order,
            vec![3, 4, 5, 6, 7, 8],
            "every parked record ran once, in order: {ran:?}"
        );
        assert_eq!(d.gauges(), (0, 0, 0, 0));
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
    fn a_parked_key_past_its_lane_bound_lets_records_go_and_they_run_in_order_when_read_again() {
        // max_per_key 2: k@0 goes to the tier, k@1 and k@2 park, k@3 and k@5 are let go; x@4
        // of another key runs at once and the partition is never paused.
        let mut d = tiered(limits(4, 100, 2, true));
        let (_, jobs) = d.accept(msg("k", 0), None, 0);
        run_all(&mut d, jobs, |_| routed());
        for offset in [1, 2, 3] {
            assert!(d.accept(msg("k", offset), None, 0).1.is_empty());
        }
        let (_, x) = d.accept(msg("x", 4), None, 0);
        assert_eq!(x.len(), 1, "another key runs while k's lane is full");
        run_all(&mut d, x, |_| ack());
        assert!(d.accept(msg("k", 5), None, 0).1.is_empty());
        let control = d.take_control();
        assert!(
            !control.contains(&(source(), true)),
            "a full parked lane does not pause its partition: {control:?}"
        );
        assert_eq!(d.gauges().3, 2, "two parked in memory, two let go");
        let commits = d.take_commits(0);
        assert!(
            commits.iter().any(|(tp, o, _)| *tp == source() && *o == 1),
            "the commit stays below every record of k after the routed one: {commits:?}"
        );
        assert!(d.take_seeks().is_empty(), "nothing read again while parked");
        d.refetch_idle();
        assert!(d.take_seeks().is_empty(), "k holds records: not idle");
        // k's tier record resolves: k@1, k@2 run; the partition is read again from k@3.
        let (_, tier_jobs) = d.accept(copy("k", 0, 0), None, 0);
        let mut ran = run_all(&mut d, tier_jobs, |_| ack());
        assert_eq!(d.take_seeks(), vec![(source(), 3)]);
        for (key, offset) in [("k", 1), ("k", 3), ("x", 4), ("k", 5), ("y", 6)] {
            let (accepted, started) = d.accept(msg(key, offset), None, 0);
            if [1, 4].contains(&offset) {
                assert_eq!(accepted, Accepted::ReadAgain, "@{offset} ran before");
            }
            ran.extend(run_all(&mut d, started, |_| ack()));
        }
        assert_eq!(
            ran,
            [(TIER, 0), ("t", 1), ("t", 2), ("t", 3), ("t", 5), ("t", 6)]
                .map(|(t, o)| (t.to_owned(), o))
                .to_vec()
        );
        let commits = d.take_commits(0);
        assert!(
            commits.iter().any(|(tp, o, _)| *tp == source() && *o == 7),
            "everything finished: {commits:?}"
        );
        assert_eq!(d.gauges(), (0, 0, 0, 0));
    }

    /// k@0 to the tier, k@1 parked (max_per_key 1), k@2 let go, x@3 of another key; k's
    /// tier record resolves and k@1 runs: the read again from k@2 is asked for.
    fn let_go_and_asked_for() -> Dispatcher {
        let mut d = tiered(limits(4, 100, 1, true));
        let (_, jobs) = d.accept(msg("k", 0), None, 0);
        run_all(&mut d, jobs, |_| routed());
        d.accept(msg("k", 1), None, 0);
        d.accept(msg("k", 2), None, 0);
        let (_, x) = d.accept(msg("x", 3), None, 0);
        run_all(&mut d, x, |_| ack());
        let (_, tier_jobs) = d.accept(copy("k", 0, 0), None, 0);
        run_all(&mut d, tier_jobs, |_| ack());
        assert_eq!(d.take_seeks(), vec![(source(), 2)]);
        d
    }

    #[test]
    fn a_read_again_that_was_lost_is_asked_for_again() {
        let mut d = let_go_and_asked_for();
        d.refetch_idle();
        assert!(
            d.take_seeks().is_empty(),
            "a read again just asked for is not repeated"
        );
        // Nothing of its stretch came (the partition is quiet, the seek was lost): after
        // RESEEK_AFTER it is asked for again; a failed seek at once.
        let read = d
            .partitions
            .map
            .get_mut(&source())
            .and_then(|p| p.reread.as_mut())
            .expect("a read again under way");
        read.since = Instant::now()
            .checked_sub(RESEEK_AFTER + Duration::from_secs(1))
            .expect("the clock is past RESEEK_AFTER");
        d.refetch_idle();
        assert_eq!(d.take_seeks(), vec![(source(), 2)], "asked for again");
        d.seek_failed(&source());
        d.refetch_idle();
        assert_eq!(d.take_seeks(), vec![(source(), 2)], "after a failed seek");
        // The record of the stretch comes and runs; nothing is asked for again.
        let (accepted, jobs) = d.accept(msg("k", 2), None, 0);
        assert_eq!(accepted, Accepted::Queued);
        assert_eq!(run_all(&mut d, jobs, |_| ack()), vec![("t".to_owned(), 2)]);
        d.refetch_idle();
        assert!(d.take_seeks().is_empty());
        assert_eq!(d.accept(msg("x", 3), None, 0).0, Accepted::ReadAgain);
        assert_eq!(d.gauges(), (0, 0, 0, 0));
    }

    #[test]
    fn a_record_let_go_that_the_read_again_passes_is_gone_and_the_commit_moves_on() {
        let mut d = let_go_and_asked_for();
        // k@2 was compacted away: the read again brings x@3 first.
        assert_eq!(d.accept(msg("x", 3), None, 0).0, Accepted::ReadAgain);
        let commits = d.take_commits(0);
        assert!(
            commits.iter().any(|(tp, o, _)| *tp == source() && *o == 4),
            "k@2 counted finished, the commit past it: {commits:?}"
        );
        // k runs on with its next record, and nothing asks for k@2 again.
        let (accepted, jobs) = d.accept(msg("k", 4), None, 0);
        assert_eq!(accepted, Accepted::Queued);
        assert_eq!(run_all(&mut d, jobs, |_| ack()), vec![("t".to_owned(), 4)]);
        d.refetch_idle();
        assert!(d.take_seeks().is_empty());
        assert_eq!(d.gauges(), (0, 0, 0, 0));
    }

    #[test]
    fn records_from_before_a_seek_that_took_no_effect_declare_nothing_gone() {
        let mut d = let_go_and_asked_for();
        // The seek did not happen: the fetch goes on past the stretch (x@4 is new).
        let (accepted, jobs) = d.accept(msg("x", 4), None, 0);
        assert_eq!(accepted, Accepted::Queued);
        run_all(&mut d, jobs, |_| ack());
        let commits = d.take_commits(0);
        assert!(
            commits.iter().any(|(tp, o, _)| *tp == source() && *o == 2),
            "k@2 still unfinished: {commits:?}"
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

    /// Seeded: `PARK_MIX_SEED=<n>` replays a run. Rounds of one source partition and its
    /// tier, drawn bounds (their minimums, small ones and the defaults of `max_per_key`), keys
    /// and failures; a simulated consumer delivers in offset order, honours pauses, seeks and
    /// the in-flight bound, and jobs end in a random order. Every source record must run
    /// once as a first delivery, each key's records apply in offset order (a routed one
    /// through its tier copy), nothing is left in flight, and the commit reaches the end.
    #[test]
    fn a_seeded_mix_of_parked_keys_lets_records_go_and_applies_each_once_in_key_order() {
        use rand::{Rng as _, SeedableRng as _};
        use std::collections::{HashMap, HashSet};

        let seed: u64 = std::env::var("PARK_MIX_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("PARK_MIX_SEED={seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..40 {
            let max_per_key = match rng.random_range(0..4) {
                0 => 256,
                n => n,
            };
            let max_in_flight = rng.random_range(1..=12);
            let concurrency = rng.random_range(1..=max_in_flight.min(4));
            let records = rng.random_range(10..=80_i64);
            let keys = rng.random_range(1..=6);
            let key_of: Vec<String> = (0..records)
                .map(|_| format!("k{}", rng.random_range(0..keys)))
                .collect();
            let fails: HashSet<i64> = (0..records).filter(|_| rng.random_bool(0.25)).collect();
            let what = format!(
                "seed {seed} round {round}: concurrency {concurrency}, max_in_flight {max_in_flight}, max_per_key {max_per_key}, {records} records over {keys} keys, failing {fails:?}"
            );
            let mut d = tiered(limits(concurrency, max_in_flight, max_per_key, true));
            let (mut position, mut tier_position) = (0_i64, 0_i64);
            let mut tier_log: Vec<(String, i64)> = Vec::new();
            let mut paused: HashSet<TopicPartition> = HashSet::new();
            let mut running: Vec<Job> = Vec::new();
            let mut first_runs: HashMap<i64, u32> = HashMap::new();
            let mut applied: HashMap<String, Vec<i64>> = HashMap::new();
            let mut steps = 0;
            loop {
                steps += 1;
                assert!(steps < 100_000, "{what}: no end (a wedge)");
                let source_open = position < records && !paused.contains(&source()) && !d.is_full();
                let tier_open = (tier_position as usize) < tier_log.len()
                    && !paused.contains(&(Arc::from(TIER), 0));
                if !source_open && !tier_open && running.is_empty() {
                    if d.gauges() == (0, 0, 0, 0) && position == records {
                        break;
                    }
                    // Only a tick can move it on (a read again to ask for).
                    d.refetch_idle();
                } else {
                    match rng.random_range(0..3) {
                        0 if source_open => {
                            let offset = position;
                            position += 1;
                            let (_, jobs) =
                                d.accept(msg(&key_of[offset as usize], offset), None, 0);
                            running.extend(jobs);
                        }
                        1 if tier_open => {
                            let (key, origin) = tier_log[tier_position as usize].clone();
                            let (_, jobs) = d.accept(copy(&key, origin, tier_position), None, 0);
                            tier_position += 1;
                            running.extend(jobs);
                        }
                        _ if !running.is_empty() => {
                            let job = running.swap_remove(rng.random_range(0..running.len()));
                            let e = &job.envelope;
                            let key = String::from_utf8_lossy(e.key.as_deref().unwrap_or_default())
                                .into_owned();
                            let outcome = if &e.topic[..] == "t" {
                                *first_runs.entry(e.offset).or_default() += 1;
                                if fails.contains(&e.offset) {
                                    tier_log.push((key, e.offset));
                                    routed()
                                } else {
                                    applied.entry(key).or_default().push(e.offset);
                                    ack()
                                }
                            } else {
                                let origin = crate::message::headers::original_offset(e);
                                applied.entry(key).or_default().push(origin);
                                ack()
                            };
                            running.extend(d.complete(&job, &outcome));
                        }
                        _ => continue,
                    }
                }
                for (tp, pause) in d.take_control() {
                    if pause {
                        paused.insert(tp);
                    } else {
                        paused.remove(&tp);
                    }
                }
                for (tp, offset) in d.take_seeks() {
                    assert_eq!(tp, source(), "{what}: only the source is read again");
                    position = offset;
                }
            }
            for offset in 0..records {
                assert_eq!(
                    first_runs.get(&offset).copied().unwrap_or(0),
                    1,
                    "{what}: offset {offset} ran as a first delivery"
                );
            }
            for (key, order) in &applied {
                assert!(
                    order.windows(2).all(|w| w[0] < w[1]),
                    "{what}: {key} applied out of order: {order:?}"
                );
            }
            assert_eq!(
                applied.values().map(Vec::len).sum::<usize>(),
                records as usize,
                "{what}: every record applied once"
            );
            let commits = d.take_commits(0);
            assert!(
                commits
                    .iter()
                    .any(|(tp, o, _)| *tp == source() && *o == records),
                "{what}: the commit reaches the end: {commits:?}"
            );
        }
    }
}
