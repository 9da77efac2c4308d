//! Configures a worker: the handler, its bounds, retry policy, retry tiers and dead-letter
//! topic, from code or from `steadfast.toml`.

use std::marker::PhantomData;
use std::time::Duration;

use super::worker::Worker;
use crate::config::{millis, Ordering, WorkerConfig};
use crate::error::WorkerError;
use crate::handler::Handler;
use crate::policy::Retry;

/// No handler given yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

/// Builds a [`Worker`]: `Worker::builder().brokers(..).handler(h)....build()`.
#[derive(Debug)]
pub struct WorkerBuilder<H = NoHandler> {
    config: WorkerConfig,
    handler: H,
    _marker: PhantomData<fn() -> H>,
}

impl Default for WorkerBuilder<NoHandler> {
    fn default() -> Self {
        WorkerBuilder {
            config: WorkerConfig::default(),
            handler: NoHandler,
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
    /// The handler.
    pub fn handler<H2: Handler>(self, handler: H2) -> WorkerBuilder<H2> {
        WorkerBuilder {
            config: self.config,
            handler,
            _marker: PhantomData,
        }
    }
}

impl<H: Handler> WorkerBuilder<H> {
    /// Checks the settings and builds the worker.
    pub fn build(self) -> Result<Worker<H>, WorkerError> {
        self.config.validate()?;
        Ok(Worker::new(self.handler, self.config))
    }
    /// Builds and runs the worker until SIGTERM or SIGINT; a second signal exits at once.
    pub async fn run_until_signal(self) -> Result<crate::runtime::WorkerStats, WorkerError> {
        self.build()?.run_until_signal().await
    }
}
