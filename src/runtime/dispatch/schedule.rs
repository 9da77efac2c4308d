//! Which queued record starts next: the ready lanes in turn, up to the concurrency bound; a
//! lane waits while a job of its key's first-delivery lane runs elsewhere (a retry-tier job, or
//! an abandoned one), and is released when that job ends.

use std::collections::{BTreeSet, VecDeque};

use super::dispatcher::Dispatcher;
use super::job::{Job, TopicPartition};
use super::lanes::{Lane, LaneKey};
use crate::message::Envelope;
use crate::runtime::tiers::{first_delivery_lane, Topology};

/// Which first-delivery lane a queued record belongs to (see `Lanes::busy`).
enum Origin {
    /// A record without a key: its lane is its own, no other lane holds its records.
    Alone,
    /// A first delivery: the lane it is queued in.
    Own,
    /// A retry-tier record: the source lane of its first delivery (source topic and partition
    /// from its headers, its key).
    Source(LaneKey),
}

/// Whether a ready lane's next record may start.
enum Turn {
    /// Not now (running, parked, waiting already, or empty): what ends that marks it ready
    /// again.
    Not,
    /// It waits until no job of this first-delivery lane runs.
    Wait(LaneKey),
    /// It starts; a retry-tier record holds this source lane busy meanwhile.
    Go(Option<LaneKey>),
}

/// The first-delivery lane of `envelope`, queued in `lane`.
fn origin_of(topology: &Topology, lane: &LaneKey, envelope: &Envelope) -> Origin {
    let LaneKey::Keyed(topic, _, key) = lane else {
        return Origin::Alone;
    };
    if topology.tier_of(topic) == 0 {
        return Origin::Own;
    }
    Origin::Source(first_delivery_lane(envelope, key.clone()))
}

impl Dispatcher {
    /// Queues a delivered record of `tp` in its key's lane.
    pub(super) fn enqueue(&mut self, tp: &TopicPartition, envelope: Envelope) {
        let Some(p) = self.partitions.map.get_mut(tp) else {
            return;
        };
        let epoch = p.epoch;
        let key = LaneKey::of(&envelope, &tp.0);
        let parked = self.parked.contains(&key);
        let lane = self
            .lanes
            .by_key
            .entry(key.clone())
            .or_insert_with(|| Lane {
                queue: VecDeque::new(),
                running: false,
                in_ready: false,
                full: false,
                blocked: false,
                epoch,
                spilled: BTreeSet::new(),
            });
        // A record let go and read again takes its place in the lane.
        lane.spilled.remove(&envelope.offset);
        let spill = lane
            .spilled
            .first()
            .is_some_and(|first| *first < envelope.offset)
            || (parked
                && (lane.queue.len() >= self.limits.max_per_key
                    || self.parked.messages >= self.limits.max_in_flight));
        if spill {
            // A parked key's record past the bounds (or after records of its let go): let go
            // too, read again once the key runs (see `spill`), so the partition keeps flowing.
            lane.spilled.insert(envelope.offset);
            p.tracker.spill(envelope.offset);
            self.load.uncount(p.tier > 0);
            return;
        }
        lane.queue.push_back(envelope);
        if parked {
            self.parked.messages += 1;
        }
        if !lane.full && !parked && lane.queue.len() >= self.limits.max_per_key {
            lane.full = true;
            p.full_lanes += 1;
            self.update_pause(tp);
        }
        self.mark_ready(&key);
    }

    /// Lists lane `key` as ready when it can start a record and is not parked.
    pub(super) fn mark_ready(&mut self, key: &LaneKey) {
        if self.parked.contains(key) {
            return;
        }
        self.lanes.mark_ready(key);
    }

    /// Starts queued messages while there is room under the concurrency bound.
    pub(super) fn fill(&mut self) -> Vec<Job> {
        let mut jobs = Vec::new();
        while !self.stopping && self.load.running < self.limits.concurrency {
            let Some(key) = self.lanes.ready.pop_front() else {
                break;
            };
            match self.turn_of(&key) {
                Turn::Not => {}
                Turn::Wait(origin) => self.lanes.block(key, origin),
                Turn::Go(origin) => jobs.extend(self.start_next(key, origin)),
            }
        }
        jobs
    }

    /// Whether the next record of the ready lane `key` may start now.
    fn turn_of(&mut self, key: &LaneKey) -> Turn {
        let Some(lane) = self.lanes.by_key.get_mut(key) else {
            return Turn::Not;
        };
        lane.in_ready = false;
        if lane.running || lane.blocked || self.parked.contains(key) {
            return Turn::Not;
        }
        let Some(front) = lane.queue.front() else {
            return Turn::Not;
        };
        match origin_of(&self.topology, key, front) {
            Origin::Alone => Turn::Go(None),
            // Its own lane does not run (checked above); an abandoned job or a retry-tier job
            // of the key may.
            Origin::Own if self.lanes.busy_apart(key) => Turn::Wait(key.clone()),
            Origin::Own => Turn::Go(None),
            Origin::Source(origin) if self.lanes.first_delivery_runs(&origin) => Turn::Wait(origin),
            Origin::Source(origin) => Turn::Go(Some(origin)),
        }
    }

    /// Starts the next record of lane `key`; `origin` is the source lane a retry-tier record
    /// holds busy while it runs.
    fn start_next(&mut self, key: LaneKey, origin: Option<LaneKey>) -> Option<Job> {
        let lane = self.lanes.by_key.get_mut(&key)?;
        let envelope = lane.queue.pop_front()?;
        lane.running = true;
        let epoch = lane.epoch;
        let unfull = lane.full && lane.queue.len() < self.limits.max_per_key;
        if unfull {
            lane.full = false;
        }
        if let Some(origin) = &origin {
            *self.lanes.busy.entry(origin.clone()).or_default() += 1;
        }
        let tp: TopicPartition = (key.partition().0.clone(), envelope.partition);
        let mut abandoned = None;
        if let Some(p) = self.partitions.map.get_mut(&tp) {
            p.running += 1;
            if unfull {
                p.full_lanes -= 1;
            }
            abandoned = Some(p.abandon.clone());
        }
        if unfull {
            self.update_pause(&tp);
        }
        self.load.running += 1;
        Some(Job {
            lane: key,
            epoch,
            envelope,
            origin,
            abandoned: abandoned.unwrap_or_default(),
        })
    }

    /// A job of the first-delivery lane `origin` counted in `busy` ended.
    pub(super) fn unbusy(&mut self, origin: &LaneKey) {
        let Some(running) = self.lanes.busy.get_mut(origin) else {
            return;
        };
        *running -= 1;
        if *running > 0 {
            return;
        }
        self.lanes.busy.remove(origin);
        self.release(origin);
    }

    /// Lanes waiting for the first-delivery lane `origin` may run once none of its jobs runs.
    pub(super) fn release(&mut self, origin: &LaneKey) {
        if self.lanes.blocked.is_empty() || self.lanes.first_delivery_runs(origin) {
            return;
        }
        for key in self.lanes.blocked.remove(origin).unwrap_or_default() {
            if let Some(lane) = self.lanes.by_key.get_mut(&key) {
                lane.blocked = false;
            }
            self.mark_ready(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::super::job::Accepted;
    use super::super::testing::{
        ack, copy, limits, msg, ordered, routed, run_all, tiered, tp, TIER,
    };
    use super::*;
    use crate::runtime::offsets::FinishedAbove;

    #[test]
    fn one_key_runs_sequentially_other_keys_in_parallel() {
        let mut d = Dispatcher::new(limits(10, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let (_, a) = d.accept(msg("a", 0), None, 0);
        let (_, a2) = d.accept(msg("a", 1), None, 0);
        let (_, b) = d.accept(msg("b", 2), None, 0);
        assert_eq!(a.len(), 1);
        assert!(a2.is_empty(), "second message of key a waits");
        assert_eq!(b.len(), 1);
        let next = d.complete(&a[0], &ack());
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].envelope.offset, 1);
    }

    #[test]
    fn concurrency_bound_holds_and_lanes_are_freed() {
        let mut d = Dispatcher::new(limits(2, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let mut started = Vec::new();
        for o in 0..5 {
            started.extend(d.accept(msg(&format!("k{o}"), o), None, 0).1);
        }
        assert_eq!(started.len(), 2);
        while let Some(job) = started.pop() {
            assert!(d.running() <= 2);
            started.extend(d.complete(&job, &ack()));
        }
        assert_eq!(d.running(), 0);
        assert!(d.lanes.by_key.is_empty(), "empty lanes are freed");
        assert_eq!(d.take_commits(9), vec![(tp(), 5, "t9|".to_owned())]);
    }

    #[test]
    fn first_deliveries_keep_no_bookkeeping_apart_from_their_lanes() {
        let mut d = Dispatcher::new(limits(8, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let mut jobs = Vec::new();
        for (o, key) in ["a", "b", "a", "c"].into_iter().enumerate() {
            jobs.extend(d.accept(msg(key, o as i64), None, 0).1);
        }
        assert_eq!(jobs.len(), 3, "a's second record waits in its lane");
        assert!(jobs.iter().all(|j| j.origin.is_none()));
        assert!(d.lanes.busy.is_empty() && d.lanes.blocked.is_empty());
        while let Some(job) = jobs.pop() {
            jobs.extend(d.complete(&job, &ack()));
            assert!(d.lanes.busy.is_empty() && d.lanes.blocked.is_empty());
        }
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn a_key_never_runs_in_its_source_lane_and_a_tier_lane_at_once() {
        // Relaxed: K(1) passes K(0), which went to the tier; K(0)'s copy arrives while K(1)
        // runs (the chaos test's seed 6: two runs of a key at once when the lock store lost
        // its locks).
        let mut d = tiered(ordered(4, 100, 10, false));
        let (_, jobs) = d.accept(msg("K", 0), None, 0);
        run_all(&mut d, jobs, |_| routed());
        let (_, running) = d.accept(msg("K", 1), None, 0);
        assert_eq!(running.len(), 1, "relaxed: a later record passes");
        let (accepted, started) = d.accept(copy("K", 0, 0), None, 0);
        assert_eq!(accepted, Accepted::Queued);
        assert!(started.is_empty(), "the tier record waits for K(1)");
        let (_, other) = d.accept(copy("X", 2, 1), None, 0);
        assert_eq!(other.len(), 1, "another key's tier record runs at once");
        let k1 = &running[0];
        let next = d.complete(k1, &ack());
        assert_eq!(
            next.iter()
                .map(|j| (j.envelope.topic.to_string(), j.envelope.offset))
                .collect::<Vec<_>>(),
            vec![(TIER.to_owned(), 0)],
            "K(1) ended: K(0)'s tier record runs"
        );
        // And the other way round: K(3) waits while the tier record runs.
        assert!(d.accept(msg("K", 3), None, 0).1.is_empty());
        let tier_job = &next[0];
        let after = d.complete(tier_job, &ack());
        assert_eq!(
            after.iter().map(|j| j.envelope.offset).collect::<Vec<_>>(),
            vec![3]
        );
    }

    #[test]
    fn a_tier_job_holds_its_first_delivery_lane_until_it_ends() {
        let mut d = tiered(ordered(4, 100, 10, false));
        let (_, jobs) = d.accept(copy("K", 0, 0), None, 0);
        let source_lane = LaneKey::Keyed(Arc::from("t"), 0, Bytes::from_static(b"K"));
        assert_eq!(jobs[0].origin.as_ref(), Some(&source_lane));
        assert_eq!(d.lanes.busy.get(&source_lane), Some(&1));
        assert!(
            d.accept(msg("K", 1), None, 0).1.is_empty(),
            "the source record waits for the tier job"
        );
        let next = d.complete(&jobs[0], &ack());
        assert_eq!(next.len(), 1);
        assert!(next[0].origin.is_none(), "a first delivery");
        assert!(d.lanes.busy.is_empty());
    }

    #[test]
    fn a_waiting_lane_is_listed_once_however_many_records_join_it() {
        // Relaxed: K(1) passes K(0), which went to the tier; K(0)'s copy and a later copy of
        // the key queue in the tier lane while K(1) runs.
        let mut d = tiered(ordered(4, 100, 10, false));
        let (_, jobs) = d.accept(msg("K", 0), None, 0);
        run_all(&mut d, jobs, |_| routed());
        let (_, running) = d.accept(msg("K", 1), None, 0);
        assert_eq!(running.len(), 1);
        for (origin, offset) in [(0, 0), (2, 1), (3, 2)] {
            let (accepted, started) = d.accept(copy("K", origin, offset), None, 0);
            assert_eq!(accepted, Accepted::Queued);
            assert!(started.is_empty(), "waits for K(1)");
        }
        assert_eq!(
            d.lanes.blocked.values().map(Vec::len).sum::<usize>(),
            1,
            "{:?}",
            d.lanes.blocked
        );
        let ran = run_all(&mut d, running, |_| ack());
        assert_eq!(
            ran,
            vec![
                ("t".to_owned(), 1),
                (TIER.to_owned(), 0),
                (TIER.to_owned(), 1),
                (TIER.to_owned(), 2)
            ]
        );
        assert!(d.lanes.blocked.is_empty() && d.lanes.busy.is_empty());
    }
}
