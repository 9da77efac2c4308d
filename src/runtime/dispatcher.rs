//! The dispatcher: per partition an [`OffsetTracker`], per key a FIFO lane (one key strictly
//! sequential, other keys concurrent up to the concurrency bound), bounds that pause fetching
//! when reached and resume it when drained, and the parking of keys whose message sits in a
//! retry tier (strict ordering).
//!
//! Pure state: it decides which jobs start and which partitions to pause or resume; the
//! worker carries the decisions out. Lanes are freed when empty, so memory follows the
//! in-flight bound, not the number of distinct keys ever seen.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::offsets::{FinishedAbove, OffsetTracker};
use crate::message::{Envelope, Outcome, RouteTarget};
use crate::observe::{LowestUnfinished, PartitionView, WorkerView};
use crate::policy::headers;

/// A topic and partition.
pub(crate) type TopicPartition = (Arc<str>, i32);

/// The identity of a lane: messages with the same lane key run one at a time, in offset order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum LaneKey {
    /// A keyed record: ordered with the other records of its key in its partition.
    Keyed(Arc<str>, i32, Bytes),
    /// A record without a key: a lane of its own.
    Unkeyed(Arc<str>, i32, i64),
}

impl LaneKey {
    fn of(envelope: &Envelope, topic: &Arc<str>) -> Self {
        match &envelope.key {
            Some(key) => LaneKey::Keyed(topic.clone(), envelope.partition, key.clone()),
            None => LaneKey::Unkeyed(topic.clone(), envelope.partition, envelope.offset),
        }
    }
}

/// The bounds and ordering mode the dispatcher enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Handler calls running at once, across all keys.
    pub(crate) concurrency: usize,
    /// Messages delivered and not finished (running, queued in lanes, parked, held): past
    /// it the consume loop stops taking records.
    pub(crate) max_in_flight: usize,
    /// Messages queued in one key's lane.
    pub(crate) max_per_key: usize,
    /// Park later messages of a key while one of its messages sits in a retry tier.
    pub(crate) strict: bool,
    /// The longest a key stays parked without seeing its retry record resolve.
    pub(crate) park_limit: Duration,
}

/// A message to hand to the policy stack.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) lane: LaneKey,
    pub(crate) epoch: u64,
    pub(crate) envelope: Envelope,
}

/// What became of a delivered message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Queued in its lane (and possibly started).
    Queued,
    /// Finished before the last commit: skipped.
    AlreadyFinished,
    /// A retry-tier message that is not due: held, its partition paused until `due_ms`.
    Held { due_ms: i64, epoch: u64 },
    /// Its partition is not assigned (a message from before a revoke): ignored.
    NotAssigned,
}

#[derive(Debug, Default)]
struct PartitionState {
    tracker: OffsetTracker,
    epoch: u64,
    running: usize,
    full_lanes: usize,
    held: Option<Envelope>,
    revoking: bool,
    /// Pause state last handed to the consumer.
    paused: bool,
    /// The commit last taken, to skip commits that would change nothing.
    last_commit: Option<(i64, String)>,
    /// The lowest unfinished offset and since when it has been the lowest.
    lowest: Option<(i64, Instant)>,
}

impl PartitionState {
    /// Notes a change of the lowest unfinished offset (the stall clock restarts with it).
    fn note_lowest(&mut self) {
        let lowest = self.tracker.lowest_unfinished();
        if lowest != self.lowest.map(|(offset, _)| offset) {
            self.lowest = lowest.map(|offset| (offset, Instant::now()));
        }
    }
}

#[derive(Debug)]
struct Lane {
    queue: VecDeque<Envelope>,
    running: bool,
    in_ready: bool,
    full: bool,
    epoch: u64,
}

/// The dispatcher's state; the worker keeps it behind a mutex.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    limits: Limits,
    partitions: HashMap<TopicPartition, PartitionState>,
    lanes: HashMap<LaneKey, Lane>,
    ready: VecDeque<LaneKey>,
    /// Main-topic lanes parked while one of their messages sits in a retry tier, with when.
    parked: HashMap<LaneKey, Instant>,
    running: usize,
    in_flight: usize,
    globally_paused: bool,
    /// Every partition is paused while the circuit breaker is open.
    breaker_open: bool,
    stopping: bool,
    next_epoch: u64,
    /// Pause (true) or resume (false) decisions not yet carried out.
    control: BTreeMap<TopicPartition, bool>,
    /// When a message of any partition last finished.
    last_finish: Instant,
    /// Delivered records dropped unfinished at revokes, not yet reported.
    abandoned: u64,
}

impl Dispatcher {
    /// An empty dispatcher enforcing `limits`.
    pub(crate) fn new(limits: Limits) -> Self {
        Dispatcher {
            limits: Limits {
                concurrency: limits.concurrency.max(1),
                max_in_flight: limits.max_in_flight.max(limits.concurrency.max(1)),
                max_per_key: limits.max_per_key.max(1),
                strict: limits.strict,
                park_limit: limits.park_limit,
            },
            partitions: HashMap::new(),
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            parked: HashMap::new(),
            running: 0,
            in_flight: 0,
            globally_paused: false,
            breaker_open: false,
            stopping: false,
            next_epoch: 1,
            control: BTreeMap::new(),
            last_finish: Instant::now(),
            abandoned: 0,
        }
    }

    /// Starts tracking an assigned partition; `restored` holds the offsets above its committed
    /// offset that the last commit recorded as finished. The partition is resumed (a pause
    /// left over from an earlier assignment does not survive).
    pub(crate) fn assign(&mut self, tp: TopicPartition, restored: FinishedAbove) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.partitions.insert(
            tp.clone(),
            PartitionState {
                tracker: OffsetTracker::new(restored),
                epoch,
                paused: true,
                ..PartitionState::default()
            },
        );
        self.update_pause(&tp);
    }

    /// Stops delivering a revoked partition: queued messages are dropped (the next owner reads
    /// them again); running ones may still finish. Returns how many are running.
    pub(crate) fn begin_revoke(&mut self, tp: &TopicPartition) -> usize {
        let Some(p) = self.partitions.get_mut(tp) else {
            return 0;
        };
        p.revoking = true;
        if p.held.take().is_some() {
            self.in_flight -= 1;
            self.abandoned += 1;
        }
        let epoch = p.epoch;
        let mut dropped = 0;
        self.lanes.retain(|_, lane| {
            if lane.epoch != epoch {
                return true;
            }
            dropped += lane.queue.len();
            lane.queue.clear();
            lane.running
        });
        self.parked
            .retain(|key, _| lane_partition(key) != (&tp.0, tp.1));
        self.in_flight -= dropped;
        self.abandoned += dropped as u64;
        self.partitions.get(tp).map_or(0, |p| p.running)
    }

    /// Delivered records dropped unfinished at revokes since the last call (they are
    /// delivered again to the next owner).
    pub(crate) fn take_abandoned(&mut self) -> u64 {
        std::mem::take(&mut self.abandoned)
    }

    /// How many handler calls of `tp` are running.
    pub(crate) fn running_in(&self, tp: &TopicPartition) -> usize {
        self.partitions.get(tp).map_or(0, |p| p.running)
    }

    /// Forgets a revoked partition; returns its final commit (watermark and metadata).
    pub(crate) fn finish_revoke(&mut self, tp: &TopicPartition) -> Option<(i64, String)> {
        let p = self.partitions.remove(tp)?;
        self.control.remove(tp);
        let epoch = p.epoch;
        self.lanes.retain(|_, lane| lane.epoch != epoch);
        p.tracker.commit_point()
    }

    /// Takes a delivered message. `due_ms` is set for retry-tier messages.
    pub(crate) fn accept(
        &mut self,
        envelope: Envelope,
        due_ms: Option<i64>,
        now_ms: i64,
    ) -> (Accepted, Vec<Job>) {
        let tp: TopicPartition = (envelope.topic.clone(), envelope.partition);
        let Some(p) = self.partitions.get_mut(&tp) else {
            return (Accepted::NotAssigned, Vec::new());
        };
        if p.revoking {
            return (Accepted::NotAssigned, Vec::new());
        }
        if !p.tracker.begin(envelope.offset) {
            return (Accepted::AlreadyFinished, Vec::new());
        }
        p.note_lowest();
        self.in_flight += 1;
        if let Some(due_ms) = due_ms.filter(|due| *due > now_ms) {
            let epoch = p.epoch;
            p.held = Some(envelope);
            self.update_pause(&tp);
            return (Accepted::Held { due_ms, epoch }, Vec::new());
        }
        self.enqueue(&tp, envelope);
        (Accepted::Queued, self.fill())
    }

    /// Hands over a held retry-tier message once it is due, and resumes its partition.
    pub(crate) fn release_held(&mut self, tp: &TopicPartition, epoch: u64) -> Vec<Job> {
        let Some(p) = self.partitions.get_mut(tp) else {
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

    fn enqueue(&mut self, tp: &TopicPartition, envelope: Envelope) {
        let Some(p) = self.partitions.get_mut(tp) else {
            return;
        };
        let epoch = p.epoch;
        let key = LaneKey::of(&envelope, &tp.0);
        let lane = self.lanes.entry(key.clone()).or_insert_with(|| Lane {
            queue: VecDeque::new(),
            running: false,
            in_ready: false,
            full: false,
            epoch,
        });
        lane.queue.push_back(envelope);
        if !lane.full && lane.queue.len() >= self.limits.max_per_key {
            lane.full = true;
            p.full_lanes += 1;
            self.update_pause(tp);
        }
        self.mark_ready(&key);
    }

    fn mark_ready(&mut self, key: &LaneKey) {
        if self.parked.contains_key(key) {
            return;
        }
        if let Some(lane) = self.lanes.get_mut(key) {
            if !lane.running && !lane.in_ready && !lane.queue.is_empty() {
                lane.in_ready = true;
                self.ready.push_back(key.clone());
            }
        }
    }

    /// Starts queued messages while there is room under the concurrency bound.
    fn fill(&mut self) -> Vec<Job> {
        let mut jobs = Vec::new();
        while !self.stopping && self.running < self.limits.concurrency {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            lane.in_ready = false;
            if lane.running || self.parked.contains_key(&key) {
                continue;
            }
            let Some(envelope) = lane.queue.pop_front() else {
                continue;
            };
            lane.running = true;
            let epoch = lane.epoch;
            let unfull = lane.full && lane.queue.len() < self.limits.max_per_key;
            if unfull {
                lane.full = false;
            }
            let tp: TopicPartition = (lane_partition(&key).0.clone(), envelope.partition);
            if let Some(p) = self.partitions.get_mut(&tp) {
                p.running += 1;
                if unfull {
                    p.full_lanes -= 1;
                }
            }
            if unfull {
                self.update_pause(&tp);
            }
            self.running += 1;
            jobs.push(Job {
                lane: key,
                epoch,
                envelope,
            });
        }
        jobs
    }

    /// Records the outcome of a job and starts what may start next.
    pub(crate) fn complete(
        &mut self,
        job_lane: &LaneKey,
        epoch: u64,
        envelope: &Envelope,
        outcome: &Outcome,
    ) -> Vec<Job> {
        self.running -= 1;
        self.in_flight -= 1;
        let tp: TopicPartition = (lane_partition(job_lane).0.clone(), envelope.partition);
        let current = self.partitions.get(&tp).is_some_and(|p| p.epoch == epoch);
        if current {
            if let Some(p) = self.partitions.get_mut(&tp) {
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
            let lane_done = match self.lanes.get_mut(job_lane) {
                Some(lane) if lane.epoch == epoch => {
                    lane.running = false;
                    lane.queue.is_empty()
                }
                _ => false,
            };
            if lane_done && !self.parked.contains_key(job_lane) {
                self.lanes.remove(job_lane);
            } else {
                self.mark_ready(job_lane);
            }
        }
        self.fill()
    }

    /// Parks a main-topic lane whose message left for a retry tier; unparks it when the
    /// message's retry resolves (handled, dropped or dead-lettered).
    fn update_parking(&mut self, envelope: &Envelope, outcome: &Outcome) {
        let routed_to_tier = matches!(
            outcome,
            Outcome::Routed {
                target: RouteTarget::RetryTier(_),
                ..
            }
        );
        let in_tier = headers::retry_tier(&envelope.headers) > 0;
        if !(routed_to_tier || (in_tier && outcome.is_finished())) {
            return;
        }
        let Some(key) = envelope.key.clone() else {
            return;
        };
        let origin_topic: Arc<str> = Arc::from(headers::original_topic(envelope));
        let origin_partition = headers::original_partition(envelope);
        let origin = LaneKey::Keyed(origin_topic, origin_partition, key);
        let origin_assigned = self
            .partitions
            .contains_key(&(lane_partition(&origin).0.clone(), origin_partition));
        match outcome {
            Outcome::Routed {
                target: RouteTarget::RetryTier(_),
                ..
            } if origin_assigned => {
                self.parked.entry(origin).or_insert_with(Instant::now);
            }
            _ if in_tier && outcome.is_finished() && self.parked.remove(&origin).is_some() => {
                self.unparked(&origin);
            }
            _ => {}
        }
    }

    /// A lane that was parked runs again (or is freed when it holds nothing).
    fn unparked(&mut self, key: &LaneKey) {
        let idle = self
            .lanes
            .get(key)
            .is_some_and(|l| l.queue.is_empty() && !l.running);
        if idle {
            self.lanes.remove(key);
        } else {
            self.mark_ready(key);
        }
    }

    /// Unparks lanes parked longer than the park limit (their retry record was never seen
    /// resolving here, e.g. another worker consumes that tier partition) and starts them.
    pub(crate) fn expire_parked(&mut self, now: Instant) -> Vec<Job> {
        let limit = self.limits.park_limit;
        let expired: Vec<LaneKey> = self
            .parked
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= limit)
            .map(|(key, _)| key.clone())
            .collect();
        if expired.is_empty() {
            return Vec::new();
        }
        tracing::warn!(
            lanes = expired.len(),
            ?limit,
            "keys parked for a retry tier longer than the park limit run again: their retry record was not seen resolving on this worker"
        );
        for key in &expired {
            self.parked.remove(key);
            self.unparked(key);
        }
        self.fill()
    }

    /// Stops starting new jobs (shutdown); running ones finish.
    pub(crate) fn stop(&mut self) {
        self.stopping = true;
    }

    /// Handler calls running now.
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// Messages delivered and not finished.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Messages delivered and not finished, handler calls running, and keys parked.
    pub(crate) fn gauges(&self) -> (usize, usize, usize) {
        (self.in_flight, self.running, self.parked.len())
    }

    /// What the stall detector needs to know at `now`.
    pub(crate) fn view(&self, now: Instant) -> WorkerView {
        // Records that wait on purpose: queued behind a key parked for a retry-tier record.
        let mut parked: HashMap<TopicPartition, Vec<i64>> = HashMap::new();
        for key in self.parked.keys() {
            if let Some(lane) = self.lanes.get(key) {
                let (topic, partition) = lane_partition(key);
                parked
                    .entry((topic.clone(), partition))
                    .or_default()
                    .extend(lane.queue.iter().map(|e| e.offset));
            }
        }
        let partitions = self
            .partitions
            .iter()
            .filter(|(_, p)| !p.revoking)
            .map(|(tp, p)| {
                let parked = parked.get(tp).map_or(&[][..], Vec::as_slice);
                let held = p.held.as_ref().map(|e| e.offset);
                let lowest = p.lowest.map(|(offset, since)| LowestUnfinished {
                    offset,
                    for_: now.saturating_duration_since(since),
                    on_purpose: held == Some(offset) || parked.contains(&offset),
                });
                PartitionView {
                    tp: tp.clone(),
                    waiting: p
                        .tracker
                        .unfinished()
                        .saturating_sub(usize::from(held.is_some()) + parked.len()),
                    held: held.is_some(),
                    lowest,
                }
            })
            .collect();
        WorkerView {
            partitions,
            idle_for: now.saturating_duration_since(self.last_finish),
            breaker_open: self.breaker_open,
            stopping: self.stopping,
            starting: false,
        }
    }

    /// Pause and resume decisions to carry out, in partition order.
    pub(crate) fn take_control(&mut self) -> Vec<(TopicPartition, bool)> {
        std::mem::take(&mut self.control).into_iter().collect()
    }

    /// Drops pending pause/resume decisions for `tps` (already carried out directly).
    /// Of `tps`, the partitions that must stay paused (an open breaker, a stalled bound, a
    /// held retry record).
    pub(crate) fn paused_of(&self, tps: &[TopicPartition]) -> Vec<TopicPartition> {
        tps.iter()
            .filter(|tp| self.partitions.get(*tp).is_some_and(|p| p.paused))
            .cloned()
            .collect()
    }

    /// Forgets pending pause/resume decisions of `tps` (the caller applied them itself).
    pub(crate) fn take_control_of(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            self.control.remove(tp);
        }
    }

    /// The partitions assigned now.
    pub(crate) fn assigned(&self) -> Vec<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    /// Commits that would change what the broker holds, and marks them taken.
    pub(crate) fn take_commits(&mut self) -> Vec<(TopicPartition, i64, String)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.partitions {
            if p.revoking {
                continue;
            }
            if let Some(point) = p.tracker.commit_point() {
                if p.last_commit.as_ref() != Some(&point) {
                    p.last_commit = Some(point.clone());
                    out.push((tp.clone(), point.0, point.1));
                }
            }
        }
        out
    }

    /// Forgets which commits were taken, so the next [`Self::take_commits`] returns them all
    /// (after a failed commit).
    pub(crate) fn forget_commits(&mut self) {
        for p in self.partitions.values_mut() {
            p.last_commit = None;
        }
    }

    /// Whether the consume loop must look at the state after a completion: decisions to
    /// carry out, a shutdown drain waiting, or a bound that was reached until now.
    pub(crate) fn loop_needs_wake(&self) -> bool {
        !self.control.is_empty() || self.stopping || self.in_flight + 1 >= self.limits.max_in_flight
    }

    /// Whether the in-flight bound is reached: the consume loop stops taking records.
    pub(crate) fn is_full(&self) -> bool {
        self.in_flight >= self.limits.max_in_flight
    }

    /// Whether every partition is paused because the bound stayed reached too long.
    pub(crate) fn is_stalled(&self) -> bool {
        self.globally_paused
    }

    /// Pauses every partition (`true`) while the bound stays reached, so the consume loop can
    /// keep polling without taking records; resumes them (`false`) once there is room.
    pub(crate) fn set_stalled(&mut self, stalled: bool) {
        if stalled != self.globally_paused {
            self.globally_paused = stalled;
            let tps: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
            for tp in tps {
                self.update_pause(&tp);
            }
        }
    }

    /// Pauses every partition while the circuit breaker is open (`true`), resumes them when it
    /// probes or closes (`false`); the consume loop keeps polling either way.
    pub(crate) fn set_breaker_open(&mut self, open: bool) {
        if open != self.breaker_open {
            self.breaker_open = open;
            let tps: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
            for tp in tps {
                self.update_pause(&tp);
            }
        }
    }

    fn update_pause(&mut self, tp: &TopicPartition) {
        let Some(p) = self.partitions.get_mut(tp) else {
            return;
        };
        let want = self.globally_paused
            || self.breaker_open
            || p.full_lanes > 0
            || p.held.is_some()
            || p.revoking;
        if want != p.paused {
            p.paused = want;
            self.control.insert(tp.clone(), want);
        }
    }
}

fn lane_partition(key: &LaneKey) -> (&Arc<str>, i32) {
    match key {
        LaneKey::Keyed(t, p, _) | LaneKey::Unkeyed(t, p, _) => (t, *p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrency: usize, max_in_flight: usize, max_per_key: usize) -> Limits {
        Limits {
            concurrency,
            max_in_flight,
            max_per_key,
            strict: true,
            park_limit: Duration::from_secs(60),
        }
    }

    fn msg(key: &str, offset: i64) -> Envelope {
        Envelope::new("t", key.as_bytes().to_vec(), Vec::new()).with_offset(offset)
    }

    fn tp() -> TopicPartition {
        (Arc::from("t"), 0)
    }

    fn ack() -> Outcome {
        Outcome::Ack { attempt: 1 }
    }

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
        let next = d.complete(&a[0].lane, a[0].epoch, &a[0].envelope, &ack());
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
            started.extend(d.complete(&job.lane, job.epoch, &job.envelope, &ack()));
        }
        assert_eq!(d.running(), 0);
        assert!(d.lanes.is_empty(), "empty lanes are freed");
        assert_eq!(d.take_commits(), vec![(tp(), 5, String::new())]);
    }

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
        jobs.extend(d.complete(&job.lane, job.epoch, &job.envelope, &ack()));
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
        d.complete(&job.lane, job.epoch, &job.envelope, &ack());
        assert_eq!(d.take_control(), vec![(tp(), false)]);
    }

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
    fn reassignment_resumes_a_partition_paused_before_the_revoke() {
        let mut d = Dispatcher::new(limits(4, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        d.accept(msg("k", 0), Some(9_000), 0);
        d.take_control();
        d.begin_revoke(&tp());
        d.finish_revoke(&tp());
        d.assign(tp(), FinishedAbove::default());
        assert_eq!(
            d.take_control(),
            vec![(tp(), false)],
            "resumed after reassignment"
        );
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn revoke_drops_queued_messages_and_ignores_late_completions() {
        let mut d = Dispatcher::new(limits(1, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let (_, jobs) = d.accept(msg("k", 0), None, 0);
        d.accept(msg("k", 1), None, 0);
        assert_eq!(d.begin_revoke(&tp()), 1);
        assert_eq!(d.finish_revoke(&tp()), Some((0, String::new())));
        d.assign(tp(), FinishedAbove::default());
        let job = &jobs[0];
        assert!(d
            .complete(&job.lane, job.epoch, &job.envelope, &ack())
            .is_empty());
        assert_eq!((d.running(), d.in_flight()), (0, 0));
        assert_eq!(
            d.take_commits(),
            Vec::new(),
            "the old epoch's completion is not counted"
        );
    }

    #[test]
    fn the_stall_view_follows_the_lowest_unfinished_offset_and_knows_what_waits_on_purpose() {
        let mut d = Dispatcher::new(limits(4, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let lowest = |d: &Dispatcher| {
            let view = d.view(Instant::now());
            let p = &view.partitions[0];
            (p.lowest.map(|l| (l.offset, l.on_purpose)), p.waiting)
        };
        assert_eq!(lowest(&d), (None, 0), "nothing delivered, nothing waits");
        let (_, a_jobs) = d.accept(msg("A", 0), None, 0);
        let (_, b_jobs) = d.accept(msg("B", 1), None, 0);
        d.accept(msg("A", 2), None, 0);
        assert_eq!(lowest(&d), (Some((0, false)), 3));
        let since_zero = d.view(Instant::now()).partitions[0].lowest.map(|l| l.for_);

        // B finishes: the lowest offset does not move, nor does its clock.
        let b = &b_jobs[0];
        d.complete(&b.lane, b.epoch, &b.envelope, &ack());
        std::thread::sleep(Duration::from_millis(20));
        let view = d.view(Instant::now());
        let l = view.partitions[0].lowest.expect("offset 0 unfinished");
        assert_eq!(l.offset, 0);
        assert!(
            Some(l.for_) > since_zero,
            "the clock of offset 0 keeps running"
        );

        // A(0) goes to a retry tier: its key parks, A(2) waits on purpose.
        let a = &a_jobs[0];
        let routed = Outcome::Routed {
            target: RouteTarget::RetryTier(1),
            error_class: "transient",
        };
        d.complete(&a.lane, a.epoch, &a.envelope, &routed);
        assert_eq!(
            lowest(&d),
            (Some((2, true)), 0),
            "queued behind a parked key"
        );
        let l = d.view(Instant::now()).partitions[0]
            .lowest
            .expect("offset 2");
        assert!(
            l.for_ < Duration::from_millis(20),
            "a new lowest offset restarts the clock"
        );
    }
}

#[cfg(test)]
mod parking_tests {
    use super::*;
    use crate::policy::headers;

    #[test]
    fn a_key_parked_for_a_tier_runs_again_when_its_retry_resolves_or_the_park_limit_passes() {
        let mut d = Dispatcher::new(Limits {
            concurrency: 4,
            max_in_flight: 100,
            max_per_key: 10,
            strict: true,
            park_limit: Duration::from_secs(60),
        });
        let tp: TopicPartition = (Arc::from("t"), 0);
        d.assign(tp.clone(), FinishedAbove::default());
        let a = Envelope::new("t", b"K".to_vec(), Vec::new()).with_offset(0);
        let b = Envelope::new("t", b"K".to_vec(), Vec::new()).with_offset(1);
        let (_, jobs) = d.accept(a, None, 0);
        d.accept(b, None, 0);
        let routed = Outcome::Routed {
            target: RouteTarget::RetryTier(1),
            error_class: "transient",
        };
        let job = &jobs[0];
        assert!(
            d.complete(&job.lane, job.epoch, &job.envelope, &routed)
                .is_empty(),
            "B waits while A sits in the tier"
        );
        assert!(
            d.expire_parked(Instant::now()).is_empty(),
            "not before the park limit"
        );
        let later = d.expire_parked(Instant::now() + Duration::from_secs(61));
        assert_eq!(
            later.iter().map(|j| j.envelope.offset).collect::<Vec<_>>(),
            vec![1]
        );

        // The regular path: A's retry record resolves on this worker and B runs.
        let mut d2 = Dispatcher::new(d.limits);
        d2.assign(tp.clone(), FinishedAbove::default());
        d2.assign((Arc::from("t.retry.1"), 0), FinishedAbove::default());
        let (_, jobs) = d2.accept(
            Envelope::new("t", b"K".to_vec(), Vec::new()).with_offset(0),
            None,
            0,
        );
        d2.accept(
            Envelope::new("t", b"K".to_vec(), Vec::new()).with_offset(1),
            None,
            0,
        );
        d2.complete(&jobs[0].lane, jobs[0].epoch, &jobs[0].envelope, &routed);
        let mut retry = Envelope::new("t.retry.1", b"K".to_vec(), Vec::new());
        retry.headers.set(headers::RETRY_TIER, "1");
        retry.headers.set(headers::ORIGINAL_TOPIC, "t");
        retry.headers.set(headers::ORIGINAL_PARTITION, "0");
        let (_, rjobs) = d2.accept(retry, None, 0);
        let next = d2.complete(
            &rjobs[0].lane,
            rjobs[0].epoch,
            &rjobs[0].envelope,
            &Outcome::Ack { attempt: 2 },
        );
        assert_eq!(
            next.iter().map(|j| j.envelope.offset).collect::<Vec<_>>(),
            vec![1]
        );
    }
}
