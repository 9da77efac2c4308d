//! Run a handler with the full policy stack on given messages, without a broker: users test
//! their handler and retry policy in milliseconds.
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! use steadfast::testing::TestWorker;
//! use steadfast::message::RouteTarget;
//! use steadfast::{Context, HandlerError, Outcome, Retry};
//! use std::time::Duration;
//!
//! #[derive(Debug, Serialize, Deserialize, steadfast::Message)]
//! #[message(topic = "orders", key = order_id)]
//! struct Order { order_id: String, amount_cents: i64 }
//!
//! #[derive(steadfast::Handler)]
//! #[handler(message = Order, group = "billing")]
//! struct Billing;
//!
//! impl Billing {
//!     async fn handle(&self, msg: Order, _cx: &Context) -> Result<(), HandlerError> {
//!         if msg.amount_cents < 0 {
//!             return Err(HandlerError::permanent("negative amount"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let worker = TestWorker::new(Billing).retry(Retry::exponential(3, Duration::ZERO, Duration::ZERO));
//! let ok = worker.handle(&Order { order_id: "o1".into(), amount_cents: 5 }).await;
//! assert_eq!(ok, Outcome::Ack { attempt: 1 });
//! let bad = worker.handle(&Order { order_id: "o2".into(), amount_cents: -5 }).await;
//! assert!(matches!(bad, Outcome::Routed { target: RouteTarget::DeadLetter, .. }));
//! assert_eq!(worker.dead_letters().len(), 1);
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::{millis, BreakerConfig, RateLimitConfig, TransactionConfig, WorkerConfig};
use crate::handler::Handler;
use crate::message::{Envelope, Message, Outcome};
use crate::observe::{Health, Meters};
use crate::policy::{
    BoxedStack, MemorySink, OutgoingRecord, Retry, Routing, Sink, TierNames, UserLayer,
};
use crate::runtime::{build_stack, Guards};
use crate::store::memory::{MemoryDedupStore, MemoryLockStore, MemoryVersionStore};
use crate::store::StoreHandles;

/// A handler with the full policy stack and an in-memory sink for routed copies.
///
/// The stack is made at the first message and kept: the stores, the breaker and the rate
/// limit carry their state from one message to the next. A setting changed later makes a
/// fresh stack (with fresh state) at the next message.
#[derive(Debug)]
pub struct TestWorker<H> {
    handler: Arc<H>,
    config: WorkerConfig,
    stores: StoreHandles,
    layers: Vec<UserLayer>,
    sink: MemorySink,
    /// What handlers sent through their context's producer.
    produced: MemorySink,
    next_offset: std::sync::atomic::AtomicI64,
    stack: tokio::sync::OnceCell<BoxedStack>,
}

impl<H: Handler> TestWorker<H> {
    /// A test worker with the default policies (no retry tiers, so failures go to the DLQ).
    pub fn new(handler: H) -> Self {
        TestWorker {
            handler: Arc::new(handler),
            config: WorkerConfig::default(),
            stores: StoreHandles::default(),
            layers: Vec::new(),
            sink: MemorySink::default(),
            produced: MemorySink::default(),
            next_offset: std::sync::atomic::AtomicI64::new(0),
            stack: tokio::sync::OnceCell::new(),
        }
    }
    /// The in-place retry policy.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.config.retry = retry.into();
        self
    }
    /// Retry tiers (their delays are recorded in the copies' headers, not waited for).
    pub fn retry_topics(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.config.retry_tiers_ms = delays.into_iter().map(millis).collect();
        self
    }
    /// The time limit of one attempt.
    pub fn handler_timeout(mut self, limit: Duration) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.config.handler_timeout_ms = millis(limit);
        self
    }
    /// A batch handler's batches: up to `max` records, waiting up to `linger` for more.
    pub fn batches(mut self, max: usize, linger: Duration) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.config.max_batch = max;
        self.config.batch_linger_ms = millis(linger);
        self
    }
    /// Stale drop, the key lock and dedup on, with memory stores: the whole protective
    /// stack, in process. The key lock's lease is `[lock]`'s default (10 s).
    pub fn with_memory_stores(mut self) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.stores.version = Some(Arc::new(MemoryVersionStore::new()));
        self.stores.lock = Some(Arc::new(MemoryLockStore::new()));
        self.stores.dedup = Some(Arc::new(MemoryDedupStore::new()));
        self
    }
    /// The stores to use, given as handles (any backend, also one of your own); a store
    /// given turns its policy on.
    pub fn stores(mut self, stores: StoreHandles) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.stores = stores;
        self
    }
    /// A circuit breaker for the dependency `name` ([`crate::Context::dependency`]).
    pub fn dependency_breaker(mut self, name: &str, breaker: BreakerConfig) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.config.dependencies.insert(name.to_owned(), breaker);
        self
    }
    /// A circuit breaker around the handler.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.config.breaker = Some(breaker);
        self
    }
    /// A rate limit of `per_second` handler calls, `burst` at once (shared through the
    /// rate-limit store when [`Self::stores`] gave one).
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.config.rate_limit = Some(RateLimitConfig {
            per_second,
            burst,
            store: None,
            name: None,
        });
        self
    }
    /// Hands the handler transactions ([`crate::Context::transaction`]) of the Postgres at
    /// `postgres`, with steadfast's records in `schema` (created and migrated at the first
    /// message; give each test its own and drop it when done).
    pub fn transactions(mut self, postgres: impl Into<String>, schema: impl Into<String>) -> Self {
        self.stack = tokio::sync::OnceCell::new();
        self.config.transaction = Some(TransactionConfig {
            postgres: postgres.into(),
        });
        self.config.stores.schema = schema.into();
        self
    }
    /// Adds a tower layer of your own, where [`crate::WorkerBuilder::layer`] puts it.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<BoxedStack> + Send + Sync + 'static,
        L::Service: tower::Service<Envelope, Response = Outcome, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<Envelope>>::Future: Send + 'static,
    {
        self.stack = tokio::sync::OnceCell::new();
        self.layers.push(UserLayer::new(layer));
        self
    }

    /// The stack, made at the first call. Panics when a configured store cannot be used
    /// within 30 s (a test's Postgres that does not answer), saying which.
    async fn stack(&self) -> BoxedStack {
        let stack = self.stack.get_or_init(|| async {
            let health = Arc::new(Health::default());
            let never = CancellationToken::new();
            let connecting = Guards::connect(
                &self.config,
                &self.stores,
                H::GROUP,
                &never,
                &health,
            );
            let guards = match tokio::time::timeout(Duration::from_secs(30), connecting).await {
                Ok(Ok(guards)) => guards,
                Ok(Err(e)) => panic!("the test worker's stores cannot be used: {e}"),
                Err(_) => panic!("the test worker's stores did not answer within 30 s (is the test's Postgres running?)"),
            };
            let routing = Routing {
                tiers: self.config.retry_tiers(),
                names: TierNames::new(H::GROUP, self.config.shared_retry_topics),
                dead_letter: None,
                tier_partitions: None,
                sink: Arc::new(self.sink.clone()) as Arc<dyn Sink>,
            };
            build_stack(
                self.handler.clone(),
                &self.config,
                H::GROUP,
                &routing,
                &guards,
                &self.layers,
                &CancellationToken::new(),
                &Meters::noop(),
                crate::producer::Producer::to_sink(Arc::new(self.produced.clone())),
            )
        });
        stack.await.clone()
    }

    /// Runs `envelope` through the stack once (one delivery).
    pub async fn handle_envelope(&self, envelope: Envelope) -> Outcome {
        match self.stack().await.oneshot(envelope).await {
            Ok(outcome) => outcome,
            Err(never) => match never {},
        }
    }

    /// Encodes `message` as a record of its topic and runs it through the stack once.
    pub async fn handle(&self, message: &H::Message) -> Outcome {
        let payload = match message.encode() {
            Ok(p) => p,
            Err(e) => panic!("the test message does not encode: {e}"),
        };
        let offset = self
            .next_offset
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.handle_envelope(
            Envelope::new(H::Message::TOPIC, message.key(), payload).with_offset(offset),
        )
        .await
    }

    /// Runs `messages` through the stack at once, as records delivered together (a batch
    /// handler takes them in batches); their outcomes in the same order.
    pub async fn handle_all(&self, messages: &[H::Message]) -> Vec<Outcome> {
        futures::future::join_all(messages.iter().map(|m| self.handle(m))).await
    }

    /// Runs `message` and then each retry-tier copy it produces at once (ignoring the
    /// tiers' delays) until it is handled, dropped or dead-lettered; returns every outcome.
    pub async fn handle_through_tiers(&self, message: &H::Message) -> Vec<Outcome> {
        let mut outcomes = vec![self.handle(message).await];
        while let Some(Outcome::Routed {
            target: crate::message::RouteTarget::RetryTier(_),
            ..
        }) = outcomes.last()
        {
            let Some(copy) = self.sink.records().last().cloned() else {
                break;
            };
            let mut envelope = Envelope {
                topic: std::sync::Arc::from(copy.topic),
                partition: copy.partition.unwrap_or(0),
                offset: self
                    .next_offset
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                key: copy.key,
                payload: copy.payload,
                headers: copy.headers,
                timestamp_ms: None,
                attempt: 1,
                guard: crate::message::Guard::default(),
            };
            envelope.attempt = crate::policy::headers::attempts_before(&envelope.headers) + 1;
            outcomes.push(self.handle_envelope(envelope).await);
        }
        outcomes
    }

    /// Every routed copy (retry tiers and dead letters), in order.
    pub fn routed(&self) -> Vec<OutgoingRecord> {
        self.sink.records()
    }

    /// What handlers sent through their context's producer ([`crate::Context::producer`]), in
    /// order; kept here, not sent (a delivery reports partition 0 and offset -1).
    pub fn produced(&self) -> Vec<OutgoingRecord> {
        self.produced.records()
    }

    /// The copies sent to a dead-letter topic.
    pub fn dead_letters(&self) -> Vec<OutgoingRecord> {
        self.sink
            .records()
            .into_iter()
            .filter(|r| r.headers.get(crate::policy::headers::RETRY_TIER).is_none())
            .collect()
    }
}
