//! The worker's Prometheus metrics: their names, the recorder that renders them, and the
//! handles a worker updates. Names follow Prometheus conventions: `steadfast_` prefix, base
//! units, `_total` counters, `_seconds` histograms.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::message::{DropReason, Outcome, RouteTarget};

/// Records taken from the broker (source topic and retry tiers), labelled `group`, `topic`.
pub const CONSUMED: &str = "steadfast_messages_consumed_total";
/// Finished deliveries by `outcome`: `handled`, `routed` (to a retry tier), `dead_lettered`,
/// `dropped`, `requeued` (unfinished at a shutdown or revoke), `skipped` (finished before the
/// last commit).
pub const MESSAGES: &str = "steadfast_messages_total";
/// Deliveries routed to a retry tier, by `tier`.
pub const ROUTED: &str = "steadfast_messages_routed_total";
/// Deliveries dropped without running the handler, by `reason` (`stale`, `duplicate`).
pub const DROPPED: &str = "steadfast_messages_dropped_total";
/// Handler attempts retried in place.
pub const RETRIES: &str = "steadfast_retries_total";
/// Duration of one handler attempt, in seconds.
pub const HANDLER_DURATION: &str = "steadfast_handler_duration_seconds";
/// Records per batch handler call.
pub const BATCH_RECORDS: &str = "steadfast_batch_records";
/// Messages delivered and not finished (running, queued, parked, held).
pub const IN_FLIGHT: &str = "steadfast_in_flight_messages";
/// Handler calls running now.
pub const RUNNING: &str = "steadfast_running_handlers";
/// Keys parked while one of their messages waits in a retry tier.
pub const PARKED: &str = "steadfast_parked_keys";
/// Messages queued behind keys parked for a retry-tier message.
pub const PARKED_MESSAGES: &str = "steadfast_parked_messages";
/// Partitions assigned to the worker.
pub const ASSIGNED: &str = "steadfast_assigned_partitions";
/// Delayed records a relay moved, labelled `topic` (the topic they are for) and `outcome`:
/// `delivered` (appended to the topic), `hopped` (to a shorter bucket topic) or
/// `dead_lettered` (the broker refused the move for good).
pub const DELAYED_MOVED: &str = "steadfast_delayed_moved_total";
/// Delayed records a relay has read and not yet moved, labelled `topic`.
pub const DELAYED_WAITING: &str = "steadfast_delayed_waiting_messages";
/// Consumer lag per partition (log end minus committed offset), labelled `partition`.
pub const LAG: &str = "steadfast_consumer_lag_messages";
/// The circuit breaker: 0 closed, 1 half-open, 2 open.
pub const BREAKER: &str = "steadfast_breaker_state";
/// Time from asking for a key's lock to holding it, by `backend`, in seconds.
pub const LOCK_WAIT: &str = "steadfast_lock_wait_seconds";
/// Duration of one store call, by `backend` and `call`, in seconds.
pub const STORE_CALL: &str = "steadfast_store_call_duration_seconds";
/// Store calls that failed, by `backend`, `call` and `kind` (`unavailable`, `failed`,
/// `auth`).
pub const STORE_ERRORS: &str = "steadfast_store_errors_total";
/// Restarts of a store seen while the worker ran (a Redis whose run id changed), by
/// `backend`.
pub const STORE_RESTARTS: &str = "steadfast_store_restarts_total";
/// Rebalance events, by `kind` (`assign`, `revoke`, `lost`).
pub const REBALANCES: &str = "steadfast_rebalances_total";
/// 1 when `/readyz` answers ready, else 0.
pub const READY: &str = "steadfast_ready";

/// Histogram buckets of [`BATCH_RECORDS`]: 1 to 4,096 records.
const BATCH_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Histogram buckets for every `_seconds` metric: 1 ms to 60 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

/// How often the recorder folds the histogram samples recorded since into their buckets.
/// The recorder keeps every sample until then, and a scrape does it too; without this a
/// worker serving `/metrics` that nothing scrapes (only its probes polled) kept every
/// sample it ever recorded: 4-5 MiB a minute at 330-500 msg/s with the Redis policies on
/// (benches/soak.rs).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder: installed by the first worker that serves `/metrics`.
/// `Err` holds why it could not be (another recorder was installed first).
static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The handle that renders this process's metrics, installing the recorder on first use.
pub(crate) fn prometheus() -> Result<&'static PrometheusHandle, &'static str> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_RECORDS.to_owned()), &BATCH_BUCKETS)
                })
                .map_err(|e| e.to_string())?;
            let handle = builder.install_recorder().map_err(|e| {
                format!("another metrics recorder is installed in this process ({e}); steadfast's metrics go to it")
            })?;
            describe();
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("steadfast-metrics-upkeep".to_owned())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread: histogram samples are kept until the next scrape");
            }
            Ok(handle)
        })
        .as_ref()
        .map_err(String::as_str)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CONSUMED, Unit::Count, "Records taken from the broker");
    describe_counter!(MESSAGES, Unit::Count, "Finished deliveries by outcome");
    describe_counter!(ROUTED, Unit::Count, "Deliveries routed to a retry tier");
    describe_counter!(
        DROPPED,
        Unit::Count,
        "Deliveries dropped before the handler"
    );
    describe_counter!(RETRIES, Unit::Count, "Handler attempts retried in place");
    describe_histogram!(
        HANDLER_DURATION,
        Unit::Seconds,
        "One handler attempt (a batch handler's: one batch call)"
    );
    describe_histogram!(BATCH_RECORDS, Unit::Count, "Records per batch handler call");
    describe_gauge!(IN_FLIGHT, Unit::Count, "Delivered and unfinished messages");
    describe_gauge!(RUNNING, Unit::Count, "Running handler calls");
    describe_gauge!(PARKED, Unit::Count, "Keys parked for a retry-tier message");
    describe_gauge!(
        PARKED_MESSAGES,
        Unit::Count,
        "Messages queued behind keys parked for a retry-tier message"
    );
    describe_gauge!(ASSIGNED, Unit::Count, "Assigned partitions");
    describe_gauge!(LAG, Unit::Count, "Log end minus committed offset");
    describe_gauge!(BREAKER, "Circuit breaker: 0 closed, 1 half-open, 2 open");
    describe_histogram!(LOCK_WAIT, Unit::Seconds, "Waiting for a key's lock");
    describe_histogram!(STORE_CALL, Unit::Seconds, "One store call");
    describe_counter!(STORE_ERRORS, Unit::Count, "Failed store calls");
    describe_counter!(
        STORE_RESTARTS,
        Unit::Count,
        "Store restarts seen while running"
    );
    describe_counter!(REBALANCES, Unit::Count, "Rebalance events");
    describe_counter!(
        DELAYED_MOVED,
        Unit::Count,
        "Delayed records moved by a relay"
    );
    describe_gauge!(
        DELAYED_WAITING,
        Unit::Count,
        "Delayed records a relay holds, not yet moved"
    );
    describe_gauge!(READY, "1 when the worker is ready");
}

/// A worker's metric handles, labelled with its group and source topic.
#[derive(Debug, Clone)]
pub(crate) struct Meters {
    group: String,
    topic: String,
    consumed: Counter,
    handled: Counter,
    routed: Counter,
    dead_lettered: Counter,
    dropped: Counter,
    requeued: Counter,
    skipped: Counter,
    stale: Counter,
    duplicate: Counter,
    /// [`RETRIES`].
    pub(crate) retries: Counter,
    /// [`HANDLER_DURATION`].
    pub(crate) handler_duration: Histogram,
    /// [`BATCH_RECORDS`].
    pub(crate) batch_records: Histogram,
    /// [`IN_FLIGHT`].
    pub(crate) in_flight: Gauge,
    /// [`RUNNING`].
    pub(crate) running: Gauge,
    /// [`PARKED`].
    pub(crate) parked: Gauge,
    /// [`PARKED_MESSAGES`].
    pub(crate) parked_messages: Gauge,
    /// [`ASSIGNED`].
    pub(crate) assigned: Gauge,
    /// [`BREAKER`].
    pub(crate) breaker: Gauge,
    /// [`READY`].
    pub(crate) ready: Gauge,
}

impl Meters {
    /// Handles for `group` consuming `topic` (and its retry tiers).
    pub(crate) fn new(group: &str, topic: &str) -> Self {
        let (g, t) = (group.to_owned(), topic.to_owned());
        let outcome = |o: &'static str| metrics::counter!(MESSAGES, "group" => g.clone(), "topic" => t.clone(), "outcome" => o);
        let dropped = |r: &'static str| metrics::counter!(DROPPED, "group" => g.clone(), "topic" => t.clone(), "reason" => r);
        Meters {
            consumed: metrics::counter!(CONSUMED, "group" => g.clone(), "topic" => t.clone()),
            handled: outcome("handled"),
            routed: outcome("routed"),
            dead_lettered: outcome("dead_lettered"),
            dropped: outcome("dropped"),
            requeued: outcome("requeued"),
            skipped: outcome("skipped"),
            stale: dropped("stale"),
            duplicate: dropped("duplicate"),
            retries: metrics::counter!(RETRIES, "group" => g.clone(), "topic" => t.clone()),
            handler_duration: metrics::histogram!(HANDLER_DURATION, "group" => g.clone(), "topic" => t.clone()),
            batch_records: metrics::histogram!(BATCH_RECORDS, "group" => g.clone(), "topic" => t.clone()),
            in_flight: metrics::gauge!(IN_FLIGHT, "group" => g.clone()),
            running: metrics::gauge!(RUNNING, "group" => g.clone()),
            parked: metrics::gauge!(PARKED, "group" => g.clone()),
            parked_messages: metrics::gauge!(PARKED_MESSAGES, "group" => g.clone()),
            assigned: metrics::gauge!(ASSIGNED, "group" => g.clone()),
            breaker: metrics::gauge!(BREAKER, "group" => g.clone()),
            ready: metrics::gauge!(READY, "group" => g.clone()),
            group: g,
            topic: t,
        }
    }

    /// Handles that record nothing (tests of the stack without a worker).
    pub(crate) fn noop() -> Self {
        metrics::with_local_recorder(&metrics::NoopRecorder, || Meters::new("", ""))
    }

    /// A record taken from the broker.
    pub(crate) fn consumed(&self) {
        self.consumed.increment(1);
    }

    /// A record skipped as finished before the last commit.
    pub(crate) fn skipped(&self) {
        self.skipped.increment(1);
    }

    /// A finished (or requeued) delivery.
    pub(crate) fn outcome(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Ack { .. } => self.handled.increment(1),
            Outcome::Routed {
                target: RouteTarget::RetryTier(tier),
                ..
            } => {
                self.routed.increment(1);
                metrics::counter!(ROUTED, "group" => self.group.clone(), "topic" => self.topic.clone(), "tier" => tier.to_string()).increment(1);
            }
            Outcome::Routed { .. } => self.dead_lettered.increment(1),
            Outcome::Drop(reason) => {
                self.dropped.increment(1);
                match reason {
                    DropReason::Stale => self.stale.increment(1),
                    DropReason::Duplicate => self.duplicate.increment(1),
                }
            }
            Outcome::Requeue | Outcome::Failed(_) => self.requeued.increment(1),
        }
    }

    /// `n` delivered records dropped unfinished, delivered again later.
    pub(crate) fn requeued(&self, n: u64) {
        self.requeued.increment(n);
    }

    /// A rebalance event of `kind` (`assign`, `revoke`, `lost`).
    pub(crate) fn rebalance(&self, kind: &'static str) {
        metrics::counter!(REBALANCES, "group" => self.group.clone(), "kind" => kind).increment(1);
    }

    /// The lag of one partition.
    pub(crate) fn lag(&self, topic: &str, partition: i32, lag: i64) {
        metrics::gauge!(LAG, "group" => self.group.clone(), "topic" => topic.to_owned(), "partition" => partition.to_string())
            .set(lag as f64);
    }
}

/// Records the time from its creation to its drop in a histogram (seconds): an attempt
/// dropped by a timeout or a shutdown is recorded too.
#[derive(Debug)]
pub(crate) struct Timer {
    started: std::time::Instant,
    histogram: Histogram,
}

impl Timer {
    /// Starts timing into `histogram`.
    pub(crate) fn start(histogram: Histogram) -> Self {
        Timer {
            started: std::time::Instant::now(),
            histogram,
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.record(self.started.elapsed().as_secs_f64());
    }
}

/// Time spent waiting for a key's lock on `backend`.
pub(crate) fn lock_wait(backend: &'static str, seconds: f64) {
    metrics::histogram!(LOCK_WAIT, "backend" => backend).record(seconds);
}

/// One store call on `backend`: its duration, and its failure kind if it failed.
pub(crate) fn store_call(
    backend: &'static str,
    call: &'static str,
    seconds: f64,
    error: Option<&'static str>,
) {
    metrics::histogram!(STORE_CALL, "backend" => backend, "call" => call).record(seconds);
    if let Some(kind) = error {
        metrics::counter!(STORE_ERRORS, "backend" => backend, "call" => call, "kind" => kind)
            .increment(1);
    }
}

/// A restart of a `backend` store seen while the worker ran.
pub(crate) fn store_restarted(backend: &'static str) {
    metrics::counter!(STORE_RESTARTS, "backend" => backend).increment(1);
}
