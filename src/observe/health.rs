//! Readiness: what a worker knows about its broker, its stores and the progress of its
//! partitions, and the pure decision whether it is ready.
//!
//! A partition is *stalled* when, for the configured time, either its lowest unfinished
//! offset (what its committed offset waits for) stayed the same while that record could run
//! (a handler that hangs, or runs longer than the limit), or records past what was delivered
//! waited in the log while nothing of the partition could run and the whole worker finished
//! nothing (fetching is stuck). A retry-tier record held until it is due waits on purpose and
//! is not counted; a lowest unfinished record queued behind a key parked for a retry-tier
//! record is a stall of its own kind, reported with the partition's parked keys and records;
//! partitions paused by an open circuit breaker are a reason of their own.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// A topic and partition.
pub(crate) type TopicPartitionView = (std::sync::Arc<str>, i32);

/// The lowest unfinished offset of a partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LowestUnfinished {
    /// The offset.
    pub(crate) offset: i64,
    /// How long it has been the lowest.
    pub(crate) for_: Duration,
    /// Whether its record waits on purpose (held until due).
    pub(crate) on_purpose: bool,
    /// Whether its record is queued behind a key parked for a retry-tier record.
    pub(crate) parked: bool,
}

/// A partition's state as the stall detector sees it.
#[derive(Debug, Clone)]
pub(crate) struct PartitionView {
    /// Topic and partition.
    pub(crate) tp: TopicPartitionView,
    /// Delivered, unfinished records that could run (not held, not parked).
    pub(crate) waiting: usize,
    /// Whether a retry-tier record is held until it is due.
    pub(crate) held: bool,
    /// The lowest unfinished offset, if any.
    pub(crate) lowest: Option<LowestUnfinished>,
    /// Keys of this partition parked for a retry-tier record.
    pub(crate) parked_keys: usize,
    /// Records of this partition queued behind parked keys.
    pub(crate) parked_messages: usize,
    /// Whether its retry state is being read back (it is paused until then).
    pub(crate) recovering: bool,
}

/// The worker-wide facts a readiness decision takes besides the partitions.
#[derive(Debug, Clone)]
pub(crate) struct WorkerView {
    /// The assigned partitions.
    pub(crate) partitions: Vec<PartitionView>,
    /// Since when no message of any partition finished.
    pub(crate) idle_for: Duration,
    /// Whether the circuit breaker holds every partition paused.
    pub(crate) breaker_open: bool,
    /// Whether the worker is shutting down.
    pub(crate) stopping: bool,
    /// Whether the worker is still starting (connecting stores, joining the group).
    pub(crate) starting: bool,
}

impl WorkerView {
    /// A worker that has not started consuming yet.
    pub(crate) fn starting() -> Self {
        WorkerView {
            partitions: Vec::new(),
            idle_for: Duration::ZERO,
            breaker_open: false,
            stopping: false,
            starting: true,
        }
    }
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Whether the worker is ready.
    pub ready: bool,
    /// Why it is not (empty when ready).
    pub reasons: Vec<String>,
    /// For a worker of several handlers (or of a topic pattern), each handler's topic's
    /// readiness, under `<group>/<topic>` (a pattern's search under `<group>/<pattern>`);
    /// the worker is ready when every one is, and its reasons are theirs, each after its
    /// name. Empty for a worker of one handler on one topic.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub handlers: std::collections::BTreeMap<String, Readiness>,
}

/// Records of a partition not yet delivered to the worker, and since when there have been
/// some without a break.
#[derive(Debug, Clone, Copy)]
struct Backlog {
    records: i64,
    since: Instant,
}

/// How long a store stays reported unreachable after its last failed call. Calls that are
/// retried refresh the mark at least every 15 s (a 10 s call timeout, then at most 5 s of
/// backoff); the mark of one that is not retried (a release) passes.
const STORE_MARK_TTL: Duration = Duration::from_secs(30);

/// What the broker client and the stores report, kept for the readiness probe.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Whether `broker_down` holds a reason: the consume loop clears it at every record, so
    /// the common case must not take the lock.
    broker_is_down: AtomicBool,
    broker_down: Mutex<Option<String>>,
    /// Whether `stores_down` holds a mark: every answered store call clears its store's mark,
    /// so the common case must not take the lock.
    stores_marked: AtomicBool,
    /// Per mark (a store that is unreachable: its name; a call it refuses: its name and the
    /// call), the readiness reason and when it was last seen.
    stores_down: Mutex<BTreeMap<String, (String, Instant)>>,
    backlog: Mutex<HashMap<(String, i32), Backlog>>,
    /// Dedup reservations of another holder being waited for, by message id, with since when.
    reservation_waits: Mutex<BTreeMap<String, Instant>>,
}

impl Health {
    /// The broker client reported that no broker answers.
    pub(crate) fn broker_down(&self, reason: String) {
        *self.broker_down.lock() = Some(reason);
        self.broker_is_down.store(true, Ordering::Release);
    }

    /// A broker answered.
    pub(crate) fn broker_up(&self) {
        // A load first: the per-record call then writes nothing while all is well.
        if self.broker_is_down.load(Ordering::Acquire)
            && self.broker_is_down.swap(false, Ordering::AcqRel)
        {
            *self.broker_down.lock() = None;
        }
    }

    /// A call to the store `name` (say `dedup store (redis)`) found it unreachable.
    pub(crate) fn store_down(&self, name: &str, reason: String) {
        self.mark_store(name.to_owned(), format!("{name} unreachable: {reason}"));
    }

    /// The store `name` answered the call `call` (say `dedup_reserve`) with an error: not an
    /// outage, yet the messages that need the call wait until it passes.
    pub(crate) fn store_refused(&self, name: &str, call: &str, error: String) {
        self.mark_store(
            format!("{name} {call}"),
            format!(
                "{name} refuses {call}: {error} (the messages that need it wait: fix the store, or set `stores.dead_letter_after_refusals`)"
            ),
        );
    }

    fn mark_store(&self, mark: String, reason: String) {
        let mut down = self.stores_down.lock();
        down.insert(mark, (reason, Instant::now()));
        self.stores_marked.store(true, Ordering::Release);
    }

    /// A call to the store `name` was answered.
    pub(crate) fn store_up(&self, name: &str) {
        self.clear_store(&[name]);
    }

    /// The store `name` answered the call `call`: it is reachable, and no longer refuses it.
    pub(crate) fn store_answered(&self, name: &str, call: &str) {
        if self.stores_marked.load(Ordering::Acquire) {
            self.clear_store(&[name, &format!("{name} {call}")]);
        }
    }

    fn clear_store(&self, marks: &[&str]) {
        if !self.stores_marked.load(Ordering::Acquire) {
            return;
        }
        let mut down = self.stores_down.lock();
        for mark in marks {
            down.remove(*mark);
        }
        self.stores_marked
            .store(!down.is_empty(), Ordering::Release);
    }

    /// A message waits for the dedup reservation of `id` held by another holder.
    pub(crate) fn reservation_wait_started(&self, id: &str) {
        self.reservation_waits
            .lock()
            .entry(id.to_owned())
            .or_insert_with(Instant::now);
    }

    /// The wait for the reservation of `id` ended.
    pub(crate) fn reservation_wait_ended(&self, id: &str) {
        self.reservation_waits.lock().remove(id);
    }

    /// Records how many records of a partition wait in the log undelivered, read at `now`.
    pub(crate) fn set_backlog(&self, topic: &str, partition: i32, records: i64, now: Instant) {
        let mut backlog = self.backlog.lock();
        let key = (topic.to_owned(), partition);
        if records <= 0 {
            backlog.remove(&key);
            return;
        }
        let since = backlog.get(&key).map_or(now, |b| b.since);
        backlog.insert(key, Backlog { records, since });
    }

    /// Forgets the backlog of partitions no longer assigned.
    pub(crate) fn retain_backlog(&self, assigned: &[TopicPartitionView]) {
        self.backlog
            .lock()
            .retain(|(t, p), _| assigned.iter().any(|a| &a.0[..] == t.as_str() && a.1 == *p));
    }

    /// Decides readiness at `now` from `worker` and what was reported.
    pub(crate) fn readiness(
        &self,
        worker: &WorkerView,
        stall_after: Duration,
        now: Instant,
    ) -> Readiness {
        let backlog: HashMap<(String, i32), (i64, Duration)> = self
            .backlog
            .lock()
            .iter()
            .map(|(k, b)| {
                (
                    k.clone(),
                    (b.records, now.saturating_duration_since(b.since)),
                )
            })
            .collect();
        let stores_down = {
            let mut down = self.stores_down.lock();
            down.retain(|_, (_, at)| now.saturating_duration_since(*at) < STORE_MARK_TTL);
            self.stores_marked
                .store(!down.is_empty(), Ordering::Release);
            down.values().map(|(reason, _)| reason.clone()).collect()
        };
        let mut readiness = decide(
            worker,
            &backlog,
            self.broker_down.lock().clone(),
            stores_down,
            stall_after,
        );
        let waits = self.reservation_waits.lock();
        if let Some(oldest) = waits.values().min() {
            readiness.ready = false;
            readiness.reasons.push(format!(
                "waiting for {} dedup reservation(s) held by another worker (a crashed holder's lease expires; oldest wait {} s)",
                waits.len(),
                now.saturating_duration_since(*oldest).as_secs()
            ));
        }
        readiness
    }
}

/// The readiness decision, pure: `backlog` maps a partition to its undelivered records and
/// how long there have been some.
fn decide(
    worker: &WorkerView,
    backlog: &HashMap<(String, i32), (i64, Duration)>,
    broker_down: Option<String>,
    stores_down: Vec<String>,
    stall_after: Duration,
) -> Readiness {
    let mut reasons = Vec::new();
    if worker.stopping {
        reasons.push("shutting down".to_owned());
    }
    if let Some(reason) = broker_down {
        reasons.push(format!("broker unreachable: {reason}"));
    }
    reasons.extend(stores_down);
    if worker.starting {
        reasons.push("starting: connecting stores and joining the group".to_owned());
    } else if worker.partitions.is_empty() {
        reasons.push("no partitions assigned".to_owned());
    }
    if worker.breaker_open {
        reasons.push("circuit breaker open: every partition paused".to_owned());
        return Readiness {
            ready: false,
            reasons,
            ..Readiness::default()
        };
    }
    for p in &worker.partitions {
        let (topic, partition) = (&p.tp.0, p.tp.1);
        if p.recovering && worker.idle_for >= stall_after {
            reasons.push(format!(
                "partition {topic}-{partition} paused: its retry state (copies in the retry tiers and the dead-letter topic) is not read back yet"
            ));
            continue;
        }
        if let Some(lowest) = p.lowest.filter(|l| l.parked && l.for_ >= stall_after) {
            reasons.push(format!(
                "partition {topic}-{partition} waits for retry tiers: offset {} queued behind a parked key for {} s ({} key(s) parked, {} record(s) queued behind them)",
                lowest.offset,
                lowest.for_.as_secs(),
                p.parked_keys,
                p.parked_messages
            ));
            continue;
        }
        if let Some(lowest) = p
            .lowest
            .filter(|l| !l.on_purpose && !l.parked && l.for_ >= stall_after)
        {
            reasons.push(format!(
                "partition {topic}-{partition} stalled: offset {} unfinished for {} s",
                lowest.offset,
                lowest.for_.as_secs()
            ));
            continue;
        }
        if p.held || p.waiting > 0 || worker.idle_for < stall_after {
            continue;
        }
        let stuck = backlog
            .get(&(topic.to_string(), partition))
            .filter(|(records, for_)| *records > 0 && *for_ >= stall_after);
        if let Some((records, for_)) = stuck {
            reasons.push(format!(
                "partition {topic}-{partition} stalled: {records} record(s) in the log not delivered for {} s",
                for_.as_secs()
            ));
        }
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
        ..Readiness::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const AFTER: Duration = Duration::from_secs(10);

    fn partition(lowest: Option<(u64, bool)>, waiting: usize, held: bool) -> PartitionView {
        PartitionView {
            tp: (Arc::from("orders"), 0),
            waiting,
            held,
            lowest: lowest.map(|(s, on_purpose)| LowestUnfinished {
                offset: 42,
                for_: Duration::from_secs(s),
                on_purpose,
                parked: false,
            }),
            parked_keys: 0,
            parked_messages: 0,
            recovering: false,
        }
    }

    fn worker(partitions: Vec<PartitionView>, idle_s: u64) -> WorkerView {
        WorkerView {
            partitions,
            idle_for: Duration::from_secs(idle_s),
            breaker_open: false,
            stopping: false,
            starting: false,
        }
    }

    fn ready(worker: &WorkerView, backlog: &[(i64, u64)]) -> Readiness {
        let backlog = backlog
            .iter()
            .map(|(m, s)| (("orders".to_owned(), 0), (*m, Duration::from_secs(*s))))
            .collect();
        decide(worker, &backlog, None, Vec::new(), AFTER)
    }

    #[test]
    fn a_busy_or_quiet_partition_is_ready() {
        assert!(ready(&worker(vec![partition(Some((3, false)), 5, false)], 0), &[]).ready);
        assert!(ready(&worker(vec![partition(None, 0, false)], 600), &[]).ready);
    }

    #[test]
    fn a_lowest_offset_that_does_not_move_past_the_limit_is_a_stall() {
        // Other records keep finishing: the worker is not idle, the partition still stalls.
        let r = ready(
            &worker(vec![partition(Some((11, false)), 3, false)], 0),
            &[],
        );
        assert!(!r.ready);
        assert!(
            r.reasons[0].contains("orders-0 stalled: offset 42"),
            "{r:?}"
        );
    }

    #[test]
    fn records_held_until_due_are_not_a_stall() {
        // Held until due; the backlog of a held partition too.
        assert!(
            ready(
                &worker(vec![partition(Some((600, true)), 0, true)], 600),
                &[(3, 600)]
            )
            .ready
        );
    }

    #[test]
    fn a_lowest_offset_behind_a_parked_key_past_the_limit_names_the_parking() {
        let mut p = partition(Some((11, false)), 0, false);
        p.parked_keys = 2;
        p.parked_messages = 5;
        if let Some(l) = p.lowest.as_mut() {
            l.parked = true;
        }
        let r = ready(&worker(vec![p.clone()], 0), &[]);
        assert!(!r.ready);
        assert_eq!(
            r.reasons,
            vec!["partition orders-0 waits for retry tiers: offset 42 queued behind a parked key for 11 s (2 key(s) parked, 5 record(s) queued behind them)"]
        );
        if let Some(l) = p.lowest.as_mut() {
            l.for_ = Duration::from_secs(3);
        }
        assert!(
            ready(&worker(vec![p], 0), &[]).ready,
            "not before the limit"
        );
    }

    #[test]
    fn a_wait_for_another_holders_reservation_is_a_reason_until_it_ends() {
        let health = Health::default();
        let w = worker(vec![partition(None, 0, false)], 0);
        health.reservation_wait_started("txn-1");
        let r = health.readiness(&w, AFTER, Instant::now());
        assert!(!r.ready);
        assert!(r.reasons[0].contains("1 dedup reservation(s)"), "{r:?}");
        health.reservation_wait_ended("txn-1");
        assert!(health.readiness(&w, AFTER, Instant::now()).ready);
    }

    #[test]
    fn a_refused_call_is_a_reason_until_that_call_is_answered() {
        let health = Health::default();
        let w = worker(vec![partition(None, 0, false)], 0);
        let store = "dedup store (redis)";
        health.store_refused(store, "dedup_reserve", "NOPERM no rights".into());
        let r = health.readiness(&w, AFTER, Instant::now());
        assert!(!r.ready);
        assert_eq!(r.reasons.len(), 1, "one reason for the refused call: {r:?}");
        assert!(
            r.reasons[0].starts_with("dedup store (redis) refuses dedup_reserve: NOPERM no rights"),
            "{r:?}"
        );
        // Another call answered: the refused one still waits.
        health.store_answered(store, "dedup_complete");
        assert!(!health.readiness(&w, AFTER, Instant::now()).ready);
        health.store_answered(store, "dedup_reserve");
        assert!(health.readiness(&w, AFTER, Instant::now()).ready);
        // An outage is cleared by any answer of the store; a mark not refreshed passes.
        health.store_down(store, "connection refused".into());
        health.store_answered(store, "dedup_complete");
        assert!(health.readiness(&w, AFTER, Instant::now()).ready);
        health.store_refused(store, "dedup_reserve", "ERR".into());
        assert!(
            health
                .readiness(&w, AFTER, Instant::now() + STORE_MARK_TTL)
                .ready
        );
    }

    #[test]
    fn a_backlog_with_nothing_delivered_is_a_stall_only_when_the_worker_finishes_nothing() {
        let idle = worker(vec![partition(None, 0, false)], 60);
        assert!(!ready(&idle, &[(7, 60)]).ready);
        // Seen only just now: fetching may simply not have delivered it yet.
        assert!(ready(&idle, &[(7, 2)]).ready);
        // Other partitions progress: the bound on in-flight records holds this one back.
        let busy = worker(vec![partition(None, 0, false)], 1);
        assert!(ready(&busy, &[(7, 60)]).ready);
    }

    #[test]
    fn outages_no_assignment_and_an_open_breaker_are_reasons() {
        let mut w = worker(vec![], 0);
        let r = decide(
            &w,
            &HashMap::new(),
            Some("all brokers down".into()),
            vec!["dedup store (redis) unreachable: connection refused".into()],
            AFTER,
        );
        assert_eq!(r.reasons.len(), 3, "{r:?}");
        w.partitions.push(partition(Some((600, false)), 1, false));
        w.breaker_open = true;
        let r = decide(&w, &HashMap::new(), None, Vec::new(), AFTER);
        assert_eq!(
            r.reasons,
            vec!["circuit breaker open: every partition paused"]
        );
    }

    #[test]
    fn backlog_since_is_kept_while_above_zero_and_reset_at_zero() {
        let health = Health::default();
        let t0 = Instant::now();
        health.set_backlog("orders", 0, 5, t0);
        health.set_backlog("orders", 0, 9, t0 + Duration::from_secs(20));
        let w = worker(vec![partition(None, 0, false)], 30);
        assert!(
            !health
                .readiness(&w, AFTER, t0 + Duration::from_secs(30))
                .ready
        );
        health.set_backlog("orders", 0, 0, t0 + Duration::from_secs(31));
        health.set_backlog("orders", 0, 4, t0 + Duration::from_secs(32));
        assert!(
            health
                .readiness(&w, AFTER, t0 + Duration::from_secs(33))
                .ready
        );
    }

    #[test]
    fn a_store_mark_passes_unless_refreshed() {
        let health = Health::default();
        health.store_down("dedup store (redis)", "refused".into());
        let w = worker(vec![partition(None, 0, false)], 0);
        let now = Instant::now();
        assert!(!health.readiness(&w, AFTER, now).ready);
        assert!(health.readiness(&w, AFTER, now + STORE_MARK_TTL).ready);
        health.store_down("dedup store (redis)", "refused".into());
        health.store_up("dedup store (redis)");
        assert!(health.readiness(&w, AFTER, Instant::now()).ready);
    }
}
