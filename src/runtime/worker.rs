//! The worker: subscribes to the source topic and its retry tiers, feeds delivered records to
//! the dispatcher, carries out its pause/resume decisions, commits finished offsets, and shuts
//! down gracefully (stop fetching, drain with a deadline, commit, leave the group).

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::TopicPartitionList;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::assembly::build_stack;
use super::dispatch::{Dispatcher, Limits};
use super::endpoint::{bind, refresh_gauges, refresh_tier_lag, serve, WorkerProbe};
use super::guards::Guards;
use super::rebalance::{commit_list, WorkerContext};
use super::recovery::RecoveryPlan;
use super::shared::{Counters, Shared};
use super::tiers::{self, RoutingTopics};
use crate::broker::{envelope_of, KafkaSink, TopicNames};
use crate::config::{KafkaClient, Ordering, WorkerConfig};
use crate::error::WorkerError;
use crate::handler::Handler;
use crate::message::Message;
use crate::observe::{self, Health, Meters};
use crate::policy::{self, BreakerPhase, Routing, Sink, UserLayer};
use crate::store::StoreHandles;

/// Runs a handler over a topic and its retry tiers. Built with [`Worker::builder`].
#[derive(Debug)]
pub struct Worker<H> {
    handler: Arc<H>,
    config: WorkerConfig,
    listener: Option<std::net::TcpListener>,
    /// Store handles given to the builder (the rest come from the configured URLs).
    stores: StoreHandles,
    /// The user's tower layers, outermost first.
    layers: Vec<UserLayer>,
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Messages the handler finished successfully.
    pub handled: u64,
    /// Messages sent to a retry tier.
    pub routed_to_tier: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages dropped as stale or duplicate.
    pub dropped: u64,
    /// Of those, messages dropped as stale (the rest were duplicates).
    pub dropped_stale: u64,
    /// Messages left unfinished at shutdown or revoke (delivered again later).
    pub requeued: u64,
    /// Messages skipped because the last commit recorded them as finished.
    pub skipped_finished: u64,
    /// Partitions assigned to the worker, counted at every assignment.
    pub partitions_assigned: u64,
}

type WorkerConsumer = StreamConsumer<WorkerContext>;

impl<H: Handler> Worker<H> {
    pub(crate) fn new(handler: H, config: WorkerConfig) -> Self {
        Worker {
            handler: Arc::new(handler),
            config,
            listener: None,
            stores: StoreHandles::default(),
            layers: Vec::new(),
        }
    }

    pub(crate) fn with_parts(mut self, stores: StoreHandles, layers: Vec<UserLayer>) -> Self {
        self.stores = stores;
        self.layers = layers;
        self
    }

    pub(crate) fn with_listener(mut self, listener: Option<std::net::TcpListener>) -> Self {
        self.listener = listener;
        self
    }

    fn topic(&self) -> String {
        self.config
            .topic
            .clone()
            .unwrap_or_else(|| H::Message::TOPIC.to_owned())
    }

    fn group(&self) -> String {
        self.config
            .group
            .clone()
            .unwrap_or_else(|| H::GROUP.to_owned())
    }

    /// The settings of one of the worker's clients: only the `[kafka]` properties that kind
    /// of client takes (librdkafka warns about the others), and the brokers.
    fn client_config(&self, client: KafkaClient) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in self.config.kafka_properties(client) {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.config.brokers);
        c
    }

    /// A broker error naming the brokers tried.
    fn broker_error(&self, why: impl std::fmt::Display) -> WorkerError {
        WorkerError::Broker(format!("bootstrap.servers {}: {why}", self.config.brokers))
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully; a second signal exits the
    /// process at once (committed offsets stay correct: only finished work was committed).
    pub async fn run_until_signal(self) -> Result<WorkerStats, WorkerError> {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        // One set of listeners for both signals: a listener registered after the first signal
        // would report that same signal again at once.
        let mut signals = Signals::new()?;
        tokio::spawn(async move {
            if signals.next().await.is_some() {
                tracing::info!("signal received: draining (send another to exit at once)");
                trigger.cancel();
                if signals.next().await.is_some() {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(130);
                }
            }
        });
        self.run(shutdown).await
    }

    /// Runs until `shutdown` is cancelled, then stops fetching, drains running handlers
    /// (up to the drain timeout), commits and leaves the group.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<WorkerStats, WorkerError> {
        let runtime = tokio::runtime::Handle::current();
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(WorkerError::CurrentThreadRuntime);
        }
        let topic = self.topic();
        let group = self.group();
        let tiers = self.config.retry_tiers();
        let topics = RoutingTopics::of(&self.config, &topic, &group, &tiers);
        let endpoint = bind(self.listener.take(), self.config.observe.listen.as_deref())?;
        if endpoint.is_some() {
            // Before the first handle is made: handles made earlier record nowhere.
            if let Err(why) = observe::metrics::prometheus() {
                tracing::warn!(why, "/metrics will answer 503");
            }
        }
        let meters = Meters::new(&group, &topic);
        let health = Arc::new(Health::default());
        // Served from the start: live at once, not ready (with the reason) until consuming.
        let started = Arc::new(std::sync::OnceLock::new());
        let _stop_endpoint = endpoint.map(|listener| {
            serve(
                listener,
                WorkerProbe {
                    shared: started.clone(),
                    health: health.clone(),
                    meters: meters.clone(),
                    stall_after: Duration::from_millis(self.config.observe.stall_after_ms),
                },
            )
        });
        let partitions = match topics
            .ensure(&self.client_config(KafkaClient::Helper))
            .await
        {
            Ok(partitions) => partitions,
            Err(_) if shutdown.is_cancelled() => return Ok(WorkerStats::default()),
            Err(WorkerError::Broker(why)) => return Err(self.broker_error(why)),
            Err(e) => return Err(e),
        };
        let guards =
            match Guards::connect(&self.config, &self.stores, &group, &shutdown, &health).await {
                Ok(guards) => guards,
                // A shutdown while a store is still unreachable at start: nothing ran, nothing to
                // commit.
                Err(WorkerError::Store(e)) if e.is_unavailable() && shutdown.is_cancelled() => {
                    tracing::info!(error = %e, "shut down while waiting for a store at start");
                    return Ok(WorkerStats::default());
                }
                Err(e) => return Err(e),
            };

        let sink: Arc<dyn Sink> = Arc::new(
            KafkaSink::new(self.client_config(KafkaClient::Producer))
                .map_err(|e| self.broker_error(e))?,
        );
        // Handlers see this token; it fires only once the drain deadline has passed.
        let handler_shutdown = CancellationToken::new();
        let routing = Routing {
            tiers,
            names: topics.names.clone(),
            dead_letter: Some(topics.dead_letter.clone()),
            tier_partitions: Some(partitions),
            sink: sink.clone(),
        };
        let stack = build_stack(
            self.handler.clone(),
            &self.config,
            &group,
            &routing,
            &guards,
            &self.layers,
            &handler_shutdown,
            &meters,
        );
        let limits = Limits {
            concurrency: self.config.concurrency,
            max_in_flight: self
                .config
                .max_in_flight
                .unwrap_or(self.config.concurrency.saturating_mul(4)),
            max_per_key: self.config.max_per_key,
            strict: self.config.ordering == Ordering::Strict,
            park_limit: tiers::park_limit(&self.config),
        };
        let topology = topics.topology();
        let worker_stopped = CancellationToken::new();
        let _stop_timers = worker_stopped.clone().drop_guard();
        let shared = Arc::new(Shared {
            dispatcher: Mutex::new(Dispatcher::with_topology(limits, topology.clone())),
            completed: Condvar::new(),
            wake: Notify::new(),
            stack,
            sink,
            runtime,
            counters: Counters::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
            meters,
            health,
            shutdown: worker_stopped.clone(),
        });
        let _ = started.set(shared.clone());
        let context = WorkerContext {
            shared: shared.clone(),
            drain_timeout: Duration::from_millis(self.config.drain_timeout_ms),
            recovery: RecoveryPlan {
                client: self.client_config(KafkaClient::Helper),
                topology,
                dead_letter: topics.dead_letter.clone(),
                strict: limits.strict,
            },
        };
        let mut consumer_config = self.client_config(KafkaClient::Consumer);
        consumer_config
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        // librdkafka prefetches up to 100,000 records per partition by default; rebalance
        // events queue behind them, so a large prefetch delays a revoke by as long as the
        // handlers need to work through it. Keep it near the in-flight bound.
        let lag_interval = self.config.observe.lag_interval_ms.to_string();
        let prefetch = limits
            .max_in_flight
            .saturating_mul(2)
            .max(1_000)
            .to_string();
        for (key, default) in [
            // Range assigns partition p of the topic and of each retry tier (they have the same
            // partition count) to the same member, so a key parked for its retry copy is on
            // the worker that consumes that copy, and the source partitions spread over the
            // members. Rebalances are eager: every member drains and commits at each one.
            ("partition.assignment.strategy", "range"),
            ("auto.offset.reset", "earliest"),
            ("queued.min.messages", prefetch.as_str()),
            // With the prefetch that small, librdkafka's default pause of 1 s before fetching
            // again once the queue is full starves the handlers between fetches.
            ("fetch.queue.backoff.ms", "10"),
            // A resumed partition (a retry tier's held record now due, a tier paused at its
            // bound) is fetched only once the fetch request already waiting at the broker for
            // the other partitions returns: with the default 500 ms, every resume of a retry
            // tier cost up to half a second, and a tier drained at two records a second when
            // its bound was 1 (the chaos test's seed 10).
            ("fetch.wait.max.ms", "100"),
            ("statistics.interval.ms", lag_interval.as_str()),
        ] {
            if !self.config.kafka.contains_key(key) {
                consumer_config.set(key, default);
            }
        }
        let consumer: WorkerConsumer = consumer_config
            .create_with_context(context)
            .map_err(|e| self.broker_error(e))?;
        consumer
            .subscribe(&topics.subscription())
            .map_err(|e| self.broker_error(e))?;
        tracing::info!(%topic, %group, tiers = topics.tiers.len(), "worker started");
        // Reads the log end of retry-tier partitions for their lag (see `refresh_tier_lag`).
        let lag_reader = if topics.tiers.is_empty() {
            None
        } else {
            let mut reader = self.client_config(KafkaClient::Helper);
            reader.set("group.id", format!("{group}.steadfast-lag"));
            reader.create().map(Arc::new).ok()
        };

        consume(
            &consumer,
            &shared,
            &shutdown,
            Duration::from_millis(self.config.commit_interval_ms),
            guards.breaker.as_ref().map(policy::Breaker::watch),
            lag_reader,
            Duration::from_millis(self.config.observe.lag_interval_ms),
        )
        .await;
        drain(
            &consumer,
            &shared,
            Duration::from_millis(self.config.drain_timeout_ms),
            &handler_shutdown,
        )
        .await;
        // The final commit, the unsubscribe and the close wait on the broker: off the async
        // worker thread, or an in-process broker on the same runtime could not answer them.
        tokio::task::block_in_place(|| {
            commit(&consumer, &shared, CommitMode::Sync, true);
            shared.closing.store(true, AtomicOrdering::SeqCst);
            consumer.unsubscribe();
            drop(consumer);
        });
        // Held-record timers and read-backs end here; they hold the routing producer.
        worker_stopped.cancel();
        let c = &shared.counters;
        let stats = WorkerStats {
            handled: c.handled.load(AtomicOrdering::Relaxed),
            routed_to_tier: c.routed_to_tier.load(AtomicOrdering::Relaxed),
            dead_lettered: c.dead_lettered.load(AtomicOrdering::Relaxed),
            dropped: c.dropped.load(AtomicOrdering::Relaxed),
            dropped_stale: c.dropped_stale.load(AtomicOrdering::Relaxed),
            requeued: c.requeued.load(AtomicOrdering::Relaxed),
            skipped_finished: c.skipped_finished.load(AtomicOrdering::Relaxed),
            partitions_assigned: c.partitions_assigned.load(AtomicOrdering::Relaxed),
        };
        tracing::info!(?stats, "worker stopped");
        Ok(stats)
    }
}

/// How long the in-flight bound may stay reached before every partition is paused so that
/// the loop can keep polling (rebalance callbacks, `max.poll.interval.ms`) without taking
/// records. Shorter stalls just wait for completions: pausing and resuming a partition costs
/// a fetch round trip and the prefetched records.
const STALL_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// The consume loop: records in, pause/resume decisions out, periodic commits.
async fn consume(
    consumer: &WorkerConsumer,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    commit_interval: Duration,
    mut breaker: Option<watch::Receiver<BreakerPhase>>,
    lag_reader: Option<Arc<rdkafka::consumer::BaseConsumer>>,
    lag_interval: Duration,
) {
    let mut commit_tick = tokio::time::interval(commit_interval);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut full_since: Option<Instant> = None;
    let mut topics = TopicNames::trusting(shared.dispatcher.lock().tier_topics().to_vec());
    let mut lag_read_at = Instant::now();
    loop {
        let (full, stalled) = {
            let d = shared.dispatcher.lock();
            (d.is_full(), d.is_stalled())
        };
        if full && !stalled {
            let since = *full_since.get_or_insert_with(Instant::now);
            let stall_at = since + STALL_BEFORE_PAUSE;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = shared.wake.notified() => apply_control(consumer, shared),
                Some(open) = breaker_change(&mut breaker, &shared.meters) => {
                    shared.dispatcher.lock().set_breaker_open(open);
                    apply_control(consumer, shared);
                }
                _ = commit_tick.tick() => commit(consumer, shared, CommitMode::Async, false),
                _ = tokio::time::sleep_until(stall_at.into()) => {
                    shared.dispatcher.lock().set_stalled(true);
                    apply_control(consumer, shared);
                }
            }
            continue;
        }
        if !full {
            full_since = None;
            if stalled {
                shared.dispatcher.lock().set_stalled(false);
                apply_control(consumer, shared);
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = shared.wake.notified() => apply_control(consumer, shared),
            Some(open) = breaker_change(&mut breaker, &shared.meters) => {
                shared.dispatcher.lock().set_breaker_open(open);
                apply_control(consumer, shared);
            }
            _ = commit_tick.tick() => {
                commit(consumer, shared, CommitMode::Async, false);
                refresh_gauges(shared);
                shared.dispatcher.lock().report_long_parked(Instant::now());
                if let Some(reader) = &lag_reader {
                    if lag_read_at.elapsed() >= lag_interval {
                        lag_read_at = Instant::now();
                        refresh_tier_lag(shared, reader);
                    }
                }
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    shared.health.broker_up();
                    let envelope = envelope_of(&message, &mut topics);
                    drop(message);
                    shared.meters.consumed();
                    shared.accept(envelope);
                    apply_control(consumer, shared);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
        }
    }
}

/// The next change of the breaker's phase: `Some(true)` when it opened, `Some(false)` when
/// it half-opened or closed; never resolves without a breaker (or once it is gone).
async fn breaker_change(
    breaker: &mut Option<watch::Receiver<BreakerPhase>>,
    meters: &Meters,
) -> Option<bool> {
    let Some(rx) = breaker else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        *breaker = None;
        return std::future::pending().await;
    }
    let phase = *rx.borrow_and_update();
    meters.breaker.set(match phase {
        BreakerPhase::Closed => 0.0,
        BreakerPhase::HalfOpen => 1.0,
        BreakerPhase::Open => 2.0,
    });
    let open = phase == BreakerPhase::Open;
    if open {
        tracing::warn!("circuit breaker open: partitions paused, polling continues");
    } else {
        tracing::info!("circuit breaker probing or closed: partitions resumed");
    }
    Some(open)
}

/// Carries out the dispatcher's pause and resume decisions.
fn apply_control(consumer: &WorkerConsumer, shared: &Shared) {
    let decisions = shared.dispatcher.lock().take_control();
    if decisions.is_empty() {
        return;
    }
    let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
    for ((topic, partition), paused) in decisions {
        if paused {
            pause.add_partition(&topic, partition);
        } else {
            resume.add_partition(&topic, partition);
        }
    }
    if pause.count() > 0 {
        if let Err(e) = consumer.pause(&pause) {
            tracing::warn!(error = %e, "pause failed");
        }
    }
    if resume.count() > 0 {
        if let Err(e) = consumer.resume(&resume) {
            tracing::warn!(error = %e, "resume failed");
        }
    }
}

/// Commits each partition's lowest unfinished offset with its finished-offset metadata.
fn commit(consumer: &WorkerConsumer, shared: &Shared, mode: CommitMode, all: bool) {
    let commits = {
        let mut d = shared.dispatcher.lock();
        if all {
            d.forget_commits();
        }
        d.take_commits(policy::now_ms())
    };
    if commits.is_empty() {
        return;
    }
    if let Err(e) = consumer.commit(&commit_list(&commits), mode) {
        tracing::warn!(error = %e, "commit failed; trying again at the next interval");
        shared.dispatcher.lock().forget_commits();
    }
}

/// Stops fetching and waits for running handlers, up to `limit`.
async fn drain(
    consumer: &WorkerConsumer,
    shared: &Arc<Shared>,
    limit: Duration,
    handler_shutdown: &CancellationToken,
) {
    let assigned = {
        let mut d = shared.dispatcher.lock();
        d.stop();
        d.assigned()
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in &assigned {
        tpl.add_partition(topic, *partition);
    }
    if tpl.count() > 0 {
        let _ = consumer.pause(&tpl);
    }
    let deadline = Instant::now() + limit;
    loop {
        let notified = shared.wake.notified();
        let running = shared.dispatcher.lock().running();
        if running == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(running, "drain deadline passed; abandoning running handlers (their messages are delivered again)");
            handler_shutdown.cancel();
            return;
        }
        let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified)
            .await;
    }
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere), listened for from creation on.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> Result<Self, WorkerError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(WorkerError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(WorkerError::Signal)?,
        })
    }
    /// The next signal; `None` once no more can arrive.
    async fn next(&mut self) -> Option<()> {
        tokio::select! {
            s = self.term.recv() => s,
            s = self.int.recv() => s,
        }
    }
}

/// Ctrl-C, listened for from creation on.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> Result<Self, WorkerError> {
        Ok(Signals)
    }
    async fn next(&mut self) -> Option<()> {
        tokio::signal::ctrl_c().await.ok()
    }
}
