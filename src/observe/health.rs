//! Readiness: what a worker knows about its broker, its stores and the progress of its
//! partitions, and the pure decision whether it is ready.
//!
//! A partition is *stalled* when, for the configured time, nothing of it finished while work
//! waited: either messages of it were delivered and are not finished (a handler that hangs),
//! or it has lag, nothing of it is delivered, and the whole worker finished nothing (fetching
//! is stuck). Work that waits on purpose is not counted: a retry-tier message held until it
//! is due, keys parked behind a retry-tier message, partitions paused by an open circuit
//! breaker (reported as a reason of its own).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// A topic and partition.
pub(crate) type TopicPartitionView = (std::sync::Arc<str>, i32);

/// A partition's state as the stall detector sees it.
#[derive(Debug, Clone)]
pub(crate) struct PartitionView {
    /// Topic and partition.
    pub(crate) tp: TopicPartitionView,
    /// Delivered, unfinished messages that could run (not held for a due time, not parked).
    pub(crate) waiting: usize,
    /// Whether a retry-tier message is held until it is due.
    pub(crate) held: bool,
    /// Since when nothing of the partition finished (or since work began waiting, if later).
    pub(crate) idle_for: Duration,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Whether the worker is ready.
    pub ready: bool,
    /// Why it is not (empty when ready).
    pub reasons: Vec<String>,
}

/// A partition's lag and since when it has been above zero without a break.
#[derive(Debug, Clone, Copy)]
struct Lag {
    messages: i64,
    since: Instant,
}

/// What the broker client and the stores report, kept for the readiness probe.
#[derive(Debug, Default)]
pub(crate) struct Health {
    broker_down: Mutex<Option<String>>,
    stores_down: Mutex<BTreeMap<&'static str, String>>,
    lag: Mutex<HashMap<(String, i32), Lag>>,
}

impl Health {
    /// The broker client reported that no broker answers.
    pub(crate) fn broker_down(&self, reason: String) {
        *self.broker_down.lock() = Some(reason);
    }

    /// A broker answered.
    pub(crate) fn broker_up(&self) {
        let mut down = self.broker_down.lock();
        if down.is_some() {
            *down = None;
        }
    }

    /// A store call to `backend` found it unreachable.
    pub(crate) fn store_down(&self, backend: &'static str, reason: String) {
        self.stores_down.lock().insert(backend, reason);
    }

    /// A store call to `backend` was answered.
    pub(crate) fn store_up(&self, backend: &'static str) {
        let mut down = self.stores_down.lock();
        if !down.is_empty() {
            down.remove(backend);
        }
    }

    /// Records the lag of a partition read at `now`.
    pub(crate) fn set_lag(&self, topic: &str, partition: i32, messages: i64, now: Instant) {
        let mut lag = self.lag.lock();
        let key = (topic.to_owned(), partition);
        if messages <= 0 {
            lag.remove(&key);
            return;
        }
        let since = lag.get(&key).map_or(now, |l| l.since);
        lag.insert(key, Lag { messages, since });
    }

    /// Forgets the lag of partitions no longer assigned.
    pub(crate) fn retain_lag(&self, assigned: &[TopicPartitionView]) {
        self.lag
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
        let lag: HashMap<(String, i32), (i64, Duration)> = self
            .lag
            .lock()
            .iter()
            .map(|(k, l)| {
                (
                    k.clone(),
                    (l.messages, now.saturating_duration_since(l.since)),
                )
            })
            .collect();
        decide(
            worker,
            &lag,
            self.broker_down.lock().clone(),
            self.stores_down
                .lock()
                .iter()
                .map(|(b, r)| (*b, r.clone()))
                .collect(),
            stall_after,
        )
    }
}

/// The readiness decision, pure: `lag` maps a partition to its lag and how long it has been
/// above zero.
fn decide(
    worker: &WorkerView,
    lag: &HashMap<(String, i32), (i64, Duration)>,
    broker_down: Option<String>,
    stores_down: Vec<(&'static str, String)>,
    stall_after: Duration,
) -> Readiness {
    let mut reasons = Vec::new();
    if worker.stopping {
        reasons.push("shutting down".to_owned());
    }
    if let Some(reason) = broker_down {
        reasons.push(format!("broker unreachable: {reason}"));
    }
    for (backend, reason) in stores_down {
        reasons.push(format!("{backend} store unreachable: {reason}"));
    }
    if worker.starting {
        reasons.push("starting: connecting stores and joining the group".to_owned());
    } else if worker.partitions.is_empty() {
        reasons.push("no partitions assigned".to_owned());
    }
    if worker.breaker_open {
        reasons.push("circuit breaker open: every partition paused".to_owned());
    } else {
        for p in &worker.partitions {
            if p.held || p.idle_for < stall_after {
                continue;
            }
            let (topic, partition) = (&p.tp.0, p.tp.1);
            let idle = p.idle_for.as_secs();
            if p.waiting > 0 {
                reasons.push(format!(
                    "partition {topic}-{partition} stalled: {} message(s) unfinished, none finished for {idle} s",
                    p.waiting
                ));
                continue;
            }
            let lagging = lag
                .get(&(topic.to_string(), partition))
                .is_some_and(|(messages, for_)| *messages > 0 && *for_ >= stall_after);
            if lagging && worker.idle_for >= stall_after {
                reasons.push(format!(
                    "partition {topic}-{partition} stalled: lag but nothing delivered or finished for {idle} s",
                ));
            }
        }
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const AFTER: Duration = Duration::from_secs(10);

    fn partition(waiting: usize, held: bool, idle_s: u64) -> PartitionView {
        PartitionView {
            tp: (Arc::from("orders"), 0),
            waiting,
            held,
            idle_for: Duration::from_secs(idle_s),
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

    fn ready(worker: &WorkerView, lag: &[(i64, u64)]) -> Readiness {
        let lag = lag
            .iter()
            .map(|(m, s)| (("orders".to_owned(), 0), (*m, Duration::from_secs(*s))))
            .collect();
        decide(worker, &lag, None, Vec::new(), AFTER)
    }

    #[test]
    fn a_busy_or_quiet_partition_is_ready() {
        assert!(ready(&worker(vec![partition(5, false, 3)], 3), &[]).ready);
        assert!(ready(&worker(vec![partition(0, false, 600)], 600), &[]).ready);
    }

    #[test]
    fn unfinished_work_without_progress_past_the_limit_is_a_stall() {
        let r = ready(&worker(vec![partition(1, false, 11)], 11), &[]);
        assert!(!r.ready);
        assert!(r.reasons[0].contains("orders-0 stalled"), "{r:?}");
    }

    #[test]
    fn a_held_retry_message_is_not_a_stall() {
        assert!(ready(&worker(vec![partition(0, true, 600)], 600), &[(3, 600)]).ready);
    }

    #[test]
    fn lag_with_nothing_delivered_is_a_stall_only_when_the_worker_finishes_nothing() {
        let idle = worker(vec![partition(0, false, 60)], 60);
        assert!(!ready(&idle, &[(7, 60)]).ready);
        // Lag seen only just now: fetching may simply not have delivered it yet.
        assert!(ready(&idle, &[(7, 2)]).ready);
        // Other partitions progress: the bound on in-flight messages holds this one back.
        let busy = worker(vec![partition(0, false, 60)], 1);
        assert!(ready(&busy, &[(7, 60)]).ready);
    }

    #[test]
    fn outages_no_assignment_and_an_open_breaker_are_reasons() {
        let mut w = worker(vec![], 0);
        let r = decide(
            &w,
            &HashMap::new(),
            Some("all brokers down".into()),
            vec![("redis", "connection refused".into())],
            AFTER,
        );
        assert_eq!(r.reasons.len(), 3, "{r:?}");
        w.partitions.push(partition(1, false, 600));
        w.breaker_open = true;
        let r = decide(&w, &HashMap::new(), None, Vec::new(), AFTER);
        assert_eq!(
            r.reasons,
            vec!["circuit breaker open: every partition paused"]
        );
    }

    #[test]
    fn lag_since_is_kept_while_above_zero_and_reset_at_zero() {
        let health = Health::default();
        let t0 = Instant::now();
        health.set_lag("orders", 0, 5, t0);
        health.set_lag("orders", 0, 9, t0 + Duration::from_secs(20));
        let w = worker(vec![partition(0, false, 30)], 30);
        assert!(
            !health
                .readiness(&w, AFTER, t0 + Duration::from_secs(30))
                .ready
        );
        health.set_lag("orders", 0, 0, t0 + Duration::from_secs(31));
        health.set_lag("orders", 0, 4, t0 + Duration::from_secs(32));
        assert!(
            health
                .readiness(&w, AFTER, t0 + Duration::from_secs(33))
                .ready
        );
    }
}
