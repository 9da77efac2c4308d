//! The worker: subscribes to the source topic and its retry tiers, feeds delivered records to
//! the dispatcher, carries out its pause/resume decisions, commits finished offsets, and shuts
//! down gracefully (stop fetching, drain with a deadline, commit, leave the group).

mod consume;
mod queues;
mod signals;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::{CancellationToken, DropGuard};

use self::consume::{drain, final_commit, ConsumeLoop, Pace, WorkerConsumer};
use self::signals::Signals;
use super::assembly::build_stack;
use super::dispatch::{Dispatcher, Limits};
use super::endpoint::{bind, serve, ProbeSet, WorkerProbe};
use super::guards::Guards;
use super::handlers::{run_set, Section};
use super::rebalance::{never_committed_start, WorkerContext};
use super::recovery::RecoveryPlan;
use super::shared::{Parts, Shared};
use super::stats::WorkerStats;
use super::tiers::{self, RoutingTopics};
use crate::broker::{connect_quickly, Ensured, KafkaSink};
use crate::config::{KafkaClient, Ordering, WorkerConfig};
use crate::error::WorkerError;
use crate::handler::Handler;
use crate::message::Message;
use crate::observe::{self, Health, Meters};
use crate::policy::{self, KeptLeases, Routing, Sink, UserLayer};
use crate::store::StoreHandles;

/// A running delay relay: the token that stops it and its task.
type RelayTask = (
    CancellationToken,
    tokio::task::JoinHandle<Result<crate::delay::RelayStats, crate::delay::DelayError>>,
);

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
    /// The worker's other handlers, given to the builder before this one.
    others: Vec<Box<dyn Section>>,
}

impl<H: Handler> Worker<H> {
    /// A worker running `handler` with `config`.
    pub(crate) fn new(handler: H, config: WorkerConfig) -> Self {
        Worker {
            handler: Arc::new(handler),
            config,
            listener: None,
            stores: StoreHandles::default(),
            layers: Vec::new(),
            others: Vec::new(),
        }
    }

    /// Runs `others` beside this handler (they were given to the builder before it).
    pub(crate) fn with_others(mut self, others: Vec<Box<dyn Section>>) -> Self {
        self.others = others;
        self
    }

    /// The worker of this handler for one `topic` of its pattern: the same handler, stores
    /// and layers; no endpoint of its own.
    pub(crate) fn for_topic(&self, topic: &str) -> Self {
        let mut config = self.config.clone();
        config.topic = Some(topic.to_owned());
        config.topic_pattern = None;
        Worker {
            handler: self.handler.clone(),
            config,
            listener: None,
            stores: self.stores.clone(),
            layers: self.layers.clone(),
            others: Vec::new(),
        }
    }

    /// The settings.
    pub(crate) fn settings(&self) -> &WorkerConfig {
        &self.config
    }

    /// Puts the handler's `[handlers.<name>]` table over its settings and checks them.
    pub(crate) fn apply_handler_table(&mut self) -> Result<(), WorkerError> {
        self.config = self.config.for_handler(H::GROUP)?;
        self.config.validate()?;
        if self.stores.rate.is_some() && self.config.rate_limit.is_none() {
            return Err(crate::config::ConfigError::Invalid {
                key: "rate_limit",
                reason: "a rate-limit store was given without a limit: call `rate_limit(per_second, burst)` too".to_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// Uses the store handles and the tower layers given to the builder.
    pub(crate) fn with_parts(mut self, stores: StoreHandles, layers: Vec<UserLayer>) -> Self {
        self.stores = stores;
        self.layers = layers;
        self
    }

    /// Serves the metrics and health endpoint on `listener` (instead of `[observe] listen`).
    pub(crate) fn with_listener(mut self, listener: Option<std::net::TcpListener>) -> Self {
        self.listener = listener;
        self
    }

    /// The source topic: configured, or the message type's.
    pub(crate) fn topic(&self) -> String {
        self.config
            .topic
            .clone()
            .unwrap_or_else(|| H::Message::TOPIC.to_owned())
    }

    /// The consumer group: configured, or the handler's.
    pub(crate) fn group_name(&self) -> String {
        self.config
            .group
            .clone()
            .unwrap_or_else(|| H::GROUP.to_owned())
    }

    /// The settings of one of the worker's clients: only the `[kafka]` properties that kind
    /// of client takes (librdkafka warns about the others), and the brokers; a helper also
    /// connects to the broker its first answer names without librdkafka's 50 ms hold-back
    /// (see [`connect_quickly`]).
    pub(crate) fn client(&self, client: KafkaClient) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in self.config.kafka_properties(client) {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.config.brokers);
        if matches!(client, KafkaClient::Helper) {
            connect_quickly(&mut c);
        }
        c
    }

    /// A broker error naming the brokers tried.
    fn broker_error(&self, error: rdkafka::error::KafkaError) -> WorkerError {
        WorkerError::kafka(
            format_args!("bootstrap.servers {}", self.config.brokers),
            error,
        )
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
    /// (up to the drain timeout), commits and leaves the group. A worker of several handlers
    /// (or of a topic pattern) runs each handler's topics this way side by side and returns
    /// their stats added up, or the first error one stopped with, once all have stopped.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<WorkerStats, WorkerError> {
        if tokio::runtime::Handle::current().runtime_flavor()
            != tokio::runtime::RuntimeFlavor::MultiThread
        {
            return Err(WorkerError::CurrentThreadRuntime);
        }
        if self.others.is_empty() && self.config.topic_pattern.is_none() {
            return self.run_single(shutdown, None).await;
        }
        let listener = self.listener.take();
        let mut sections = std::mem::take(&mut self.others);
        sections.push(Box::new(self));
        run_set(sections, listener, shutdown).await
    }

    /// Runs the handler over one topic until `shutdown`; its probe goes to `probes` when it is
    /// one of several, else to an endpoint of its own when one is configured.
    pub(crate) async fn run_single(
        mut self,
        shutdown: CancellationToken,
        probes: Option<Arc<ProbeSet>>,
    ) -> Result<WorkerStats, WorkerError> {
        let runtime = tokio::runtime::Handle::current();
        let (topic, group) = (self.topic(), self.group_name());
        let retry_tiers = self.config.retry_tiers();
        let topics = RoutingTopics::of(&self.config, &topic, &group, &retry_tiers);
        let observed = self.observe(&topic, &group, probes)?;
        let Some((ensured, guards)) = self
            .connect(&topics, &group, &shutdown, &observed.health)
            .await?
        else {
            return Ok(WorkerStats::default());
        };
        let partitions = ensured.partitions;
        let routing_producer = match KafkaSink::new(self.client(KafkaClient::Producer)) {
            Ok(producer) => Arc::new(producer),
            Err(e) => {
                ensured.closed().await;
                return Err(self.broker_error(e));
            }
        };
        let sink: Arc<dyn Sink> = routing_producer.clone();
        // Handlers see this token; it fires only once the drain deadline has passed.
        let handler_shutdown = CancellationToken::new();
        let routing = Routing {
            tiers: retry_tiers,
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
            &observed.meters,
            crate::producer::Producer::new(&self.config),
        );
        let relay = match self
            .start_relay(&topic, &topics.dead_letter, &shutdown)
            .await
        {
            Ok(relay) => relay,
            Err(e) => {
                ensured.closed().await;
                return Err(e);
            }
        };
        // Stops the relay on every way out, an error return included.
        let _stop_relay = relay.as_ref().map(|(stop, _)| stop.clone().drop_guard());
        let limits = self.limits();
        let worker_stopped = CancellationToken::new();
        let _stop_timers = worker_stopped.clone().drop_guard();
        let parts = Parts {
            stack,
            sink,
            runtime,
            meters: observed.meters.clone(),
            health: observed.health.clone(),
            shutdown: worker_stopped.clone(),
        };
        let dispatcher = Dispatcher::with_topology(limits, topics.topology());
        let shared = Arc::new(Shared::new(dispatcher, parts));
        // The admin client that created missing topics closes meanwhile; waited for at the stop.
        if let Some(closing) = ensured.closing {
            shared.helpers.track(closing);
        }
        let _ = observed.started.set(shared.clone());
        let split = queues::split_count(topics.subscription().len(), partitions);
        let consumer = match self.subscribe(&topics, &group, limits, split, &shared) {
            Ok(consumer) => Arc::new(consumer),
            Err(e) => {
                // Nothing ran: the clients made so far close before the error returns.
                shared.helpers.wait(HELPERS_WAIT).await;
                close_producer(&routing_producer).await;
                return Err(e);
            }
        };
        // Before the first poll (see `queues`).
        let partition_queues = match split {
            0 => Vec::new(),
            _ => queues::split(&consumer, &topics.subscription(), partitions),
        };
        let lag_reader = self.lag_reader(&topics, &group);
        let pace = Pace {
            commit_interval: Duration::from_millis(self.config.commit_interval_ms),
            lag_interval: Duration::from_millis(self.config.observe.lag_interval_ms),
        };
        let mut breakers: Vec<_> = guards.breaker.iter().cloned().collect();
        breakers.extend(guards.dependencies.breakers());
        let mut consume = ConsumeLoop::new(
            &consumer,
            &partition_queues,
            &shared,
            &shutdown,
            pace,
            breakers,
            lag_reader,
        );
        consume.run().await;
        consume.finish_commits().await;
        drop(consume);
        // They hold the consumer: it must close in `close`, off the async thread.
        drop(partition_queues);
        let stats = self
            .close(
                consumer,
                &shared,
                (&handler_shutdown, &worker_stopped),
                guards.kept_leases.as_deref(),
            )
            .await;
        if let Some((stop, task)) = relay {
            stop.cancel();
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the delay relay's task failed");
            }
        }
        // Closed before the worker returns: a producer outliving the worker would log its
        // broker down when an embedded server stops next. Sends still running (of handlers
        // abandoned at the drain deadline) keep it until they end.
        close_producer(&routing_producer).await;
        Ok(stats)
    }

    /// Starts the relay of the topic's delayed messages when the worker runs one
    /// (`relay_delayed_messages`), after making sure its bucket topics exist; it stops with
    /// `shutdown` or when the worker stops. A record whose move is refused for good goes to
    /// the worker's dead-letter topic.
    async fn start_relay(
        &self,
        topic: &str,
        dead_letter: &str,
        shutdown: &CancellationToken,
    ) -> Result<Option<RelayTask>, WorkerError> {
        if !self.config.relay_delayed_messages {
            return Ok(None);
        }
        // Its consumer takes the worker's consumer properties (`session.timeout.ms`, say),
        // its producer the producer properties.
        let mut relay = crate::delay::Relay::new(topic, self.client(KafkaClient::Consumer))
            .producer_config(self.client(KafkaClient::Producer))
            .dead_letter_topic(dead_letter);
        relay
            .ensure_topics()
            .await
            .map_err(|e| WorkerError::broker(format!("the delay relay's topics: {e}")))?;
        let stop = shutdown.child_token();
        let until = stop.clone();
        // A run that stops with an error (a client that could not be made, say) is started
        // again: the worker's delayed messages never go without their relay while it runs.
        let task = tokio::spawn(async move {
            policy::restart_on_error("the delay relay", &until, || {
                relay.clone().run(until.clone())
            })
            .await
        });
        Ok(Some((stop, task)))
    }

    /// Binds the metrics and health endpoint when one is configured and serves it from now
    /// on: live at once, not ready (with the reason) until the worker consumes. One of
    /// several handlers adds its probe to their set instead, as `<group>/<topic>`.
    fn observe(
        &mut self,
        topic: &str,
        group: &str,
        probes: Option<Arc<ProbeSet>>,
    ) -> Result<Observed, WorkerError> {
        let endpoint = match probes {
            Some(_) => None,
            None => bind(self.listener.take(), self.config.observe.listen.as_deref())?,
        };
        if endpoint.is_some() {
            // Before the first handle is made: handles made earlier record nowhere.
            if let Err(why) = observe::metrics::prometheus() {
                tracing::warn!(why, "/metrics will answer 503");
            }
        }
        let meters = Meters::new(group, topic);
        let health = Arc::new(Health::default());
        let started = Arc::new(OnceLock::new());
        let probe = Arc::new(WorkerProbe {
            shared: started.clone(),
            health: health.clone(),
            meters: meters.clone(),
            stall_after: Duration::from_millis(self.config.observe.stall_after_ms),
        });
        if let Some(probes) = probes {
            probes.add(format!("{group}/{topic}"), probe.clone());
        }
        let _stop = endpoint.map(|listener| serve(listener, probe));
        Ok(Observed {
            meters,
            health,
            started,
            _stop,
        })
    }

    /// Makes sure the topics exist and connects the stores; returns the source topic's
    /// partition count and the stores, or `None` when the worker was shut down first (nothing
    /// ran, nothing to commit).
    async fn connect(
        &self,
        topics: &RoutingTopics,
        group: &str,
        shutdown: &CancellationToken,
        health: &Arc<Health>,
    ) -> Result<Option<(Ensured, Guards)>, WorkerError> {
        let ensured = match topics.ensure(&self.client(KafkaClient::Helper)).await {
            Ok(ensured) => ensured,
            Err(_) if shutdown.is_cancelled() => return Ok(None),
            Err(e @ WorkerError::Broker { .. }) => return Err(e.at_brokers(&self.config.brokers)),
            Err(e) => return Err(e),
        };
        match Guards::connect(&self.config, &self.stores, group, shutdown, health).await {
            Ok(guards) => Ok(Some((ensured, guards))),
            // A shutdown while a store is still unreachable at start: nothing ran, nothing to
            // commit.
            Err(WorkerError::Store(e)) if e.is_unavailable() && shutdown.is_cancelled() => {
                tracing::info!(error = %e, "shut down while waiting for a store at start");
                ensured.closed().await;
                Ok(None)
            }
            Err(e) => {
                ensured.closed().await;
                Err(e)
            }
        }
    }

    /// The dispatcher's bounds and ordering mode. For a batch handler, `concurrency` counts
    /// batch calls: up to `concurrency × max_batch` records run at once, within
    /// `max_in_flight`.
    fn limits(&self) -> Limits {
        let batched = H::batch_runner(self.handler.clone()).is_some();
        let running = if batched {
            self.config
                .concurrency
                .saturating_mul(self.config.max_batch.max(1))
        } else {
            self.config.concurrency
        };
        let max_in_flight = self
            .config
            .max_in_flight
            .unwrap_or(running.saturating_mul(4));
        Limits {
            concurrency: running.min(max_in_flight),
            max_in_flight,
            max_per_key: self.config.max_per_key,
            strict: self.config.ordering == Ordering::Strict,
            park_limit: tiers::park_limit(&self.config),
        }
    }

    /// The worker's consumer, its rebalance callbacks wired to `shared`, subscribed to the
    /// source topic and its retry tiers, its prefetch sized for `split` partitions read from
    /// queues of their own (none: 0).
    fn subscribe(
        &self,
        topics: &RoutingTopics,
        group: &str,
        limits: Limits,
        split: usize,
        shared: &Arc<Shared>,
    ) -> Result<WorkerConsumer, WorkerError> {
        let consumer_config = self.consumer_config(group, limits, split);
        let context = WorkerContext {
            shared: shared.clone(),
            drain_timeout: Duration::from_millis(self.config.drain_timeout_ms),
            recovery: RecoveryPlan {
                client: self.client(KafkaClient::Helper),
                topology: topics.topology(),
                dead_letter: topics.dead_letter.clone(),
                strict: limits.strict,
            },
            start_at: match self.config.start_from {
                Some(crate::config::StartFrom::Time(ms)) => Some((topics.source.clone(), ms)),
                _ => None,
            },
            never_committed: consumer_config
                .get("auto.offset.reset")
                .and_then(never_committed_start),
            committed: Mutex::new(None),
            cooperative: self
                .config
                .kafka
                .get("partition.assignment.strategy")
                .is_some_and(|strategy| strategy.contains("cooperative")),
        };
        let consumer: WorkerConsumer = consumer_config
            .create_with_context(context)
            .map_err(|e| self.broker_error(e))?;
        consumer
            .subscribe(&topics.subscription())
            .map_err(|e| self.broker_error(e))?;
        tracing::info!(topic = %topics.source, %group, tiers = topics.tiers.len(), "worker started");
        Ok(consumer)
    }

    /// The consumer's settings: the group, offsets stored and committed by the worker only,
    /// and defaults (where `[kafka]` sets none) that suit the worker's bounds and its `split`
    /// partitions read from queues of their own.
    fn consumer_config(&self, group: &str, limits: Limits, split: usize) -> ClientConfig {
        let mut consumer_config = self.client(KafkaClient::Consumer);
        consumer_config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        // librdkafka prefetches up to 100,000 records per partition by default; rebalance
        // events queue behind them, so a large prefetch delays a revoke by as long as the
        // handlers need to work through it. Keep it near the in-flight bound: the bounds
        // apply to each queue, so a split partition takes its share of them.
        let lag_interval = self.config.observe.lag_interval_ms.to_string();
        let (prefetch, prefetch_kbytes) = queues::prefetch(limits.max_in_flight, split);
        let prefetch = prefetch.to_string();
        let prefetch_kbytes = prefetch_kbytes.map(|kbytes| kbytes.to_string());
        if let Some(kbytes) = &prefetch_kbytes {
            if !self.config.kafka.contains_key("queued.max.messages.kbytes") {
                consumer_config.set("queued.max.messages.kbytes", kbytes);
            }
        }
        for (key, default) in [
            // Range assigns partition p of the topic and of each retry tier (they have the same
            // partition count) to the same member, so a key parked for its retry copy is on
            // the worker that consumes that copy, and the source partitions spread over the
            // members. Rebalances are eager: every member drains and commits at each one.
            ("partition.assignment.strategy", "range"),
            (
                "auto.offset.reset",
                self.config
                    .start_from
                    .map_or("earliest", crate::config::StartFrom::offset_reset),
            ),
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
        consumer_config
    }

    /// A client that reads the log end of retry-tier partitions for their lag (see
    /// `refresh_tier_lag`); none without tiers.
    fn lag_reader(&self, topics: &RoutingTopics, group: &str) -> Option<Arc<BaseConsumer>> {
        if topics.tiers.is_empty() {
            return None;
        }
        let mut reader = self.client(KafkaClient::Helper);
        reader.set("group.id", format!("{group}.steadfast-lag"));
        reader.create().map(Arc::new).ok()
    }

    /// Stops: drains running handlers (up to the drain timeout), releases the key leases
    /// kept between records, commits, leaves the group, and ends the held-record timers and
    /// read-backs (`tokens`: the handlers' shutdown, the worker's stop); returns what the
    /// worker did.
    async fn close(
        &self,
        consumer: Arc<WorkerConsumer>,
        shared: &Arc<Shared>,
        (handler_shutdown, worker_stopped): (&CancellationToken, &CancellationToken),
        kept_leases: Option<&KeptLeases>,
    ) -> WorkerStats {
        let drain_timeout = Duration::from_millis(self.config.drain_timeout_ms);
        drain(&consumer, shared, drain_timeout, handler_shutdown).await;
        if let Some(kept) = kept_leases {
            kept.close().await;
        }
        // The final commit, the unsubscribe and the close wait on the broker: off the async
        // worker thread, or an in-process broker on the same runtime could not answer them.
        tokio::task::block_in_place(|| {
            final_commit(&consumer, shared, FINAL_COMMIT_WAIT);
            shared.set_closing();
            consumer.unsubscribe();
            drop(consumer);
        });
        // Held-record timers and read-backs end here; they hold the routing producer.
        worker_stopped.cancel();
        // Read-backs and reads of the tiers' log ends hold clients of their own: gone before
        // the worker returns, unless one is stuck on a broker that does not answer.
        let left = shared.helpers.wait(HELPERS_WAIT).await;
        if left > 0 {
            tracing::warn!(
                left,
                "helper tasks still wait on the broker at stop; their clients close when they end"
            );
        }
        let stats = WorkerStats::of(shared.counters());
        tracing::info!(?stats, "worker stopped");
        stats
    }
}

/// How long a stopping worker waits for its helper tasks (see `shared::helpers`).
const HELPERS_WAIT: Duration = Duration::from_secs(5);

/// How long a stopping worker waits for its final commit (see `consume::final_commit`).
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Takes the routing producer out of `sink` and drops it on a blocking thread (its close
/// flushes and joins its polling thread), waiting until it is closed.
async fn close_producer(sink: &KafkaSink) {
    let producer = sink.close();
    if let Err(e) = tokio::task::spawn_blocking(move || drop(producer)).await {
        tracing::warn!(error = %e, "closing the routing producer failed");
    }
}

/// The metric handles and health of a worker, and its endpoint while it is served.
struct Observed {
    meters: Meters,
    health: Arc<Health>,
    /// Set once the worker consumes: the endpoint's probes then see it.
    started: Arc<OnceLock<Arc<Shared>>>,
    /// Stops serving the endpoint when dropped.
    _stop: Option<DropGuard>,
}
