//! Configures a worker: the handler, its bounds, retry policy, retry tiers and dead-letter
//! topic, from code or from `steadfast.toml`.

use std::marker::PhantomData;
use std::time::Duration;

use std::convert::Infallible;
use std::sync::Arc;

use super::handlers::{prepare_all, Section};
use super::worker::Worker;
use crate::config::{millis, Ordering, WorkerConfig};
use crate::error::WorkerError;
use crate::handler::Handler;
use crate::message::{Envelope, Outcome};
use crate::policy::Retry;
use crate::policy::{BoxedStack, UserLayer};
use crate::store::{
    DedupStore, LockStore, RateLimitStore, StoreHandles, TransactionalStore, VersionStore,
};

/// No handler given yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

impl Worker<()> {
    /// A builder with the defaults of [`WorkerConfig`].
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }
}

/// Builds a [`Worker`]: `Worker::builder().brokers(..).handler(h)....build()`.
#[derive(Debug)]
pub struct WorkerBuilder<H = NoHandler> {
    config: WorkerConfig,
    listener: Option<std::net::TcpListener>,
    stores: StoreHandles,
    layers: Vec<UserLayer>,
    /// The handler given ([`NoHandler`] until one is).
    given: H,
    /// The handlers given before it, each with the settings it had then.
    others: Vec<Box<dyn Section>>,
    _marker: PhantomData<fn() -> H>,
}

impl Default for WorkerBuilder<NoHandler> {
    fn default() -> Self {
        WorkerBuilder {
            config: WorkerConfig::default(),
            listener: None,
            stores: StoreHandles::default(),
            layers: Vec::new(),
            given: NoHandler,
            others: Vec::new(),
            _marker: PhantomData,
        }
    }
}

impl<H> WorkerBuilder<H> {
    /// Replaces every setting with `config` (from `steadfast.toml`, see [`WorkerConfig::load`]).
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }
    /// `bootstrap.servers`: the embedded server's or a Kafka cluster's.
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.config.brokers = brokers.into();
        self
    }
    /// The consumer group (the handler's when not set).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = Some(group.into());
        self
    }
    /// The source topic (the message type's when not set).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.config.topic = Some(topic.into());
        self
    }
    /// Reads every topic whose whole name the regular expression `pattern` matches, those
    /// created later included (found at each listing, every `refresh`), instead of one
    /// topic; each with its own retry tiers and dead-letter topic (`topic_pattern`,
    /// `topic_pattern_refresh_ms`). Topics steadfast derives never match.
    pub fn topic_pattern(mut self, pattern: impl Into<String>, refresh: Duration) -> Self {
        self.config.topic_pattern = Some(pattern.into());
        self.config.topic_pattern_refresh_ms = millis(refresh);
        self
    }
    /// Handler calls at once, across keys (default 64).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency;
        self
    }
    /// Messages delivered and unfinished before fetching pauses (default 4 × concurrency).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.config.max_in_flight = Some(max);
        self
    }
    /// Messages queued for one key before its partition pauses (default 256).
    pub fn max_per_key(mut self, max: usize) -> Self {
        self.config.max_per_key = max;
        self
    }
    /// Records one batch handler call takes at most (default 256; batch handlers only).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.config.max_batch = max;
        self
    }
    /// How long a batch waits for more records before its handler call starts (default
    /// 5 ms; batch handlers only).
    pub fn batch_linger(mut self, linger: Duration) -> Self {
        self.config.batch_linger_ms = millis(linger);
        self
    }
    /// Key order through retry tiers (default strict).
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.config.ordering = ordering;
        self
    }
    /// In-place retry policy (default: 3 attempts, 100 ms to 30 s).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.config.retry = retry.into();
        self
    }
    /// Retry tiers with their delays: `<topic>.retry.1`, `<topic>.retry.2`, ...
    pub fn retry_topics(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.config.retry_tiers_ms = delays.into_iter().map(millis).collect();
        self
    }
    /// The dead-letter topic (default `<topic>.dlq`).
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.config.dead_letter_topic = Some(topic.into());
        self
    }
    /// Runs the relay of the source topic's delayed messages in this worker
    /// (`relay_delayed_messages`).
    pub fn relay_delayed_messages(mut self, relay: bool) -> Self {
        self.config.relay_delayed_messages = relay;
        self
    }
    /// Time limit of one handler attempt (default 30 s).
    pub fn handler_timeout(mut self, limit: Duration) -> Self {
        self.config.handler_timeout_ms = millis(limit);
        self
    }
    /// How long a revoke or a shutdown waits for running handlers (default 10 s).
    pub fn drain_timeout(mut self, limit: Duration) -> Self {
        self.config.drain_timeout_ms = millis(limit);
        self
    }
    /// How often finished offsets are committed (default 1 s).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.config.commit_interval_ms = millis(interval);
        self
    }
    /// A raw librdkafka property, passed through.
    pub fn kafka_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.kafka.insert(key.into(), value.into());
        self
    }
    /// Drops messages whose version is not newer than their key's last applied one, with the
    /// version store at `store` (`memory`, `redis://…`, `postgres://…`).
    pub fn stale_drop(mut self, store: impl Into<String>) -> Self {
        self.config.stale = Some(crate::config::StaleConfig {
            store: store.into(),
            copy_to_topic: false,
        });
        self
    }
    /// Also copies every stale message to `<topic>.stale` (needs [`Self::stale_drop`]).
    pub fn stale_copies(mut self, copy: bool) -> Self {
        if let Some(stale) = &mut self.config.stale {
            stale.copy_to_topic = copy;
        }
        self
    }
    /// Holds a lease lock on each message's key while it is handled, in the lock store at
    /// `store`, with leases of `lease` renewed every third of it.
    pub fn key_lock(mut self, store: impl Into<String>, lease: Duration) -> Self {
        let keep_ms = self.config.lock.as_ref().map_or(20, |l| l.keep_ms);
        self.config.lock = Some(crate::config::LockConfig {
            store: store.into(),
            lease_ms: millis(lease),
            keep_ms,
        });
        self
    }
    /// How long a key's lease is kept after a record ends, for the key's next record, which
    /// then runs under the same grant (20 ms by default; zero releases it at once). Sets it
    /// on the lock of [`key_lock`](Self::key_lock): call it after that (a later `key_lock`
    /// keeps it); without a key lock there is nothing to keep.
    pub fn key_lock_keep(mut self, keep: Duration) -> Self {
        if let Some(lock) = self.config.lock.as_mut() {
            lock.keep_ms = millis(keep);
        }
        self
    }
    /// Deduplicates messages by id in the dedup store at `store` (completed ids remembered
    /// for 7 days).
    pub fn dedup(mut self, store: impl Into<String>) -> Self {
        self.config.dedup = Some(crate::config::DedupConfig {
            store: store.into(),
            lease_ms: None,
            ttl_ms: 7 * 24 * 3_600_000,
        });
        self
    }
    /// Limits handler calls of this worker to `per_second`, `burst` at once.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.config.rate_limit = Some(crate::config::RateLimitConfig {
            per_second,
            burst,
            store: None,
            name: None,
        });
        self
    }
    /// Limits handler calls of every worker sharing the Redis at `redis` and the limit
    /// `name` to `per_second`, `burst` at once.
    pub fn shared_rate_limit(
        mut self,
        redis: impl Into<String>,
        name: impl Into<String>,
        per_second: u32,
        burst: u32,
    ) -> Self {
        self.config.rate_limit = Some(crate::config::RateLimitConfig {
            per_second,
            burst,
            store: Some(redis.into()),
            name: Some(name.into()),
        });
        self
    }
    /// A circuit breaker for the dependency `name`, which the handler calls through
    /// [`crate::Context::dependency`]: while it is open those calls fail at once as
    /// unavailable (waited out without spending an attempt) and the worker pauses its
    /// partitions. One per dependency; several may be given.
    pub fn dependency_breaker(
        mut self,
        name: impl Into<String>,
        breaker: crate::config::BreakerConfig,
    ) -> Self {
        self.config.dependencies.insert(name.into(), breaker);
        self
    }
    /// Puts a circuit breaker around the handler.
    pub fn breaker(mut self, breaker: crate::config::BreakerConfig) -> Self {
        self.config.breaker = Some(breaker);
        self
    }
    /// Hands handlers Postgres transactions with the idempotency records in them
    /// ([`crate::Context::transaction`]), on the database at `postgres`.
    pub fn transactions(mut self, postgres: impl Into<String>) -> Self {
        self.config.transaction = Some(crate::config::TransactionConfig {
            postgres: postgres.into(),
        });
        self
    }
    /// The Postgres schema of the store tables (default `steadfast`).
    pub fn store_schema(mut self, schema: impl Into<String>) -> Self {
        self.config.stores.schema = schema.into();
        self
    }
    /// Where a partition the group has no committed offset for starts (`start_from`):
    /// [`StartFrom::Earliest`](crate::StartFrom) (the default), `Latest`, or `Time(ms)`, the
    /// first record at or after a time; `"2026-12-01T00:00:00Z".parse()` makes the last. A
    /// group's committed offsets always win: this applies to a new group, or a partition it
    /// never committed.
    pub fn start_from(mut self, start: crate::StartFrom) -> Self {
        self.config.start_from = Some(start);
        self
    }
    /// The prefix of the stores' Redis keys (default `steadfast`).
    pub fn store_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.stores.key_prefix = prefix.into();
        self
    }
    /// Dead-letters a message (class `store`) after a store refused `refusals` times a call it
    /// needs before its handler runs (`stores.dead_letter_after_refusals`); by default such a
    /// message waits until the store is fixed. Outages never count.
    pub fn dead_letter_after_store_refusals(mut self, refusals: u32) -> Self {
        self.config.stores.dead_letter_after_refusals = Some(refusals);
        self
    }
    /// Whether the key lock, stale check and dedup make their calls together where they share
    /// one Redis (`stores.combine_calls`, on by default): one script before the handler and
    /// one after it.
    pub fn combine_store_calls(mut self, combine: bool) -> Self {
        self.config.stores.combine_calls = combine;
        self
    }
    /// Serves `/metrics`, `/healthz` and `/readyz` on `listen` (`ip:port`).
    pub fn observe(mut self, listen: impl Into<String>) -> Self {
        self.config.observe.listen = Some(listen.into());
        self
    }
    /// Serves `/metrics`, `/healthz` and `/readyz` on an already bound listener (port 0 in
    /// tests, or a socket handed over by a supervisor); it takes precedence over
    /// [`Self::observe`].
    pub fn observe_listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }
    /// How long a partition may have work waiting without progress before `/readyz` reports
    /// the worker not ready (default 120 s).
    pub fn stall_after(mut self, limit: Duration) -> Self {
        self.config.observe.stall_after_ms = millis(limit);
        self
    }
    /// How often consumer lag per partition is read (default 5 s).
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.config.observe.lag_interval_ms = millis(interval);
        self
    }
    /// The key lock's store (instead of `[lock] store`): turns the key lock on, with the
    /// configured lease or 10 s. Any [`LockStore`] will do, also one of your own.
    pub fn lock_store(mut self, store: Arc<dyn LockStore>) -> Self {
        self.stores.lock = Some(store);
        self
    }
    /// The dedup store (instead of `[dedup] store`): turns dedup on, with the configured
    /// lease and time-to-live or their defaults.
    pub fn dedup_store(mut self, store: Arc<dyn DedupStore>) -> Self {
        self.stores.dedup = Some(store);
        self
    }
    /// The stale-drop policy's version store (instead of `[stale] store`): turns stale
    /// dropping on.
    pub fn version_store(mut self, store: Arc<dyn VersionStore>) -> Self {
        self.stores.version = Some(store);
        self
    }
    /// The store of a shared rate limit (instead of `[rate_limit] store`); the limit itself
    /// is [`Self::rate_limit`]'s (the build fails without one).
    pub fn rate_limit_store(mut self, store: Arc<dyn RateLimitStore>) -> Self {
        self.stores.rate = Some(store);
        self
    }
    /// The transactional store handed to handlers (instead of `[transaction] postgres`).
    pub fn transactional_store(mut self, store: Arc<dyn TransactionalStore>) -> Self {
        self.stores.transactions = Some(store);
        self
    }
    /// Adds a tower layer of your own to the stack, between retry in place and the attempt's
    /// time limit (so every attempt goes through it); layers added first are outermost. Its
    /// service gets and returns what the policies do: an [`crate::Envelope`] in, an
    /// [`crate::Outcome`] out, never an error. An `Outcome::Requeue` it returns while the
    /// worker runs is waited out in place and tried again, as an unavailable dependency is
    /// (no attempt spent, never routed); its panic fails the message permanently (class
    /// `panic`), as a handler's does.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<BoxedStack> + Send + Sync + 'static,
        L::Service: tower::Service<Envelope, Response = Outcome, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<Envelope>>::Future: Send + 'static,
    {
        self.layers.push(UserLayer::new(layer));
        self
    }
}

impl WorkerBuilder<NoHandler> {
    /// The handler; the settings given so far are its, and so are the ones given after, up
    /// to the next [`handler`](WorkerBuilder::handler) call.
    pub fn handler<H: Handler>(self, handler: H) -> WorkerBuilder<H> {
        WorkerBuilder {
            config: self.config,
            listener: self.listener,
            stores: self.stores,
            layers: self.layers,
            given: handler,
            others: self.others,
            _marker: PhantomData,
        }
    }
}

impl<H: Handler> WorkerBuilder<H> {
    /// Another handler, run by the same worker beside the ones given before it, in a consumer
    /// group of its own: `Worker::builder().brokers(..).handler(a).concurrency(8)
    /// .handler(b).topic("b-events")`. The settings given after this call are its; they start
    /// as the previous handler's, except the ones that name that handler's topics and group
    /// (`topic`, `topic_pattern`, `group`, `dead_letter_topic`, `relay_delayed_messages`),
    /// which start unset. Stores given as handles and tower layers carry over too. Each
    /// handler's `[handlers.<name>]` table is put over its settings at [`build`](Self::build).
    /// The metrics and health endpoint is the worker's, set with the first handler.
    pub fn handler<H2: Handler>(self, next: H2) -> WorkerBuilder<H2> {
        let mut others = self.others;
        others.push(Box::new(
            Worker::new(self.given, self.config.clone())
                .with_parts(self.stores.clone(), self.layers.clone()),
        ));
        let mut config = self.config;
        config.clear_naming();
        WorkerBuilder {
            config,
            listener: self.listener,
            stores: self.stores,
            layers: self.layers,
            given: next,
            others,
            _marker: PhantomData,
        }
    }

    /// Checks the settings (every handler's, with its `[handlers.<name>]` table) and builds
    /// the worker.
    pub fn build(self) -> Result<Worker<H>, WorkerError> {
        let mut last = Worker::new(self.given, self.config).with_parts(self.stores, self.layers);
        let mut others = self.others;
        {
            let mut all: Vec<&mut dyn Section> = others
                .iter_mut()
                .map(|s| &mut **s as &mut dyn Section)
                .collect();
            all.push(&mut last);
            prepare_all(&mut all)?;
        }
        Ok(last.with_others(others).with_listener(self.listener))
    }
    /// Builds and runs the worker until SIGTERM or SIGINT; a second signal exits at once.
    pub async fn run_until_signal(self) -> Result<crate::runtime::WorkerStats, WorkerError> {
        self.build()?.run_until_signal().await
    }
}
