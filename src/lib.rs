//! steadfast — a consumer-side reliability framework for Kafka: per-key ordered parallel
//! processing, bounded retries, retry topics that keep key order and a dead-letter queue,
//! around the real Kafka client (librdkafka through the `rdkafka` crate).
//!
//! ```no_run
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use steadfast::{Context, HandlerError, Retry, Worker};
//!
//! #[derive(Debug, Serialize, Deserialize, steadfast::Message)]
//! #[message(topic = "orders", key = order_id, version = updated_at, id = event_id)]
//! struct OrderUpdated { event_id: String, order_id: String, updated_at: i64, amount_cents: i64 }
//!
//! #[derive(steadfast::Handler)]
//! #[handler(message = OrderUpdated, group = "billing")]
//! struct Billing;
//!
//! impl Billing {
//!     async fn handle(&self, msg: OrderUpdated, cx: &Context) -> Result<(), HandlerError> {
//!         println!("{} at attempt {}", msg.order_id, cx.attempt());
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), steadfast::WorkerError> {
//! Worker::builder()
//!     .brokers("127.0.0.1:9092")
//!     .handler(Billing)
//!     .concurrency(256)
//!     .retry(Retry::exponential(3, Duration::from_millis(100), Duration::from_secs(30)))
//!     .retry_topics([Duration::from_secs(10), Duration::from_secs(300)])
//!     .dead_letter_topic("orders.dlq")
//!     .run_until_signal()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! With the default `server` feature, [`server`] is the embedded log server that speaks the
//! Kafka wire protocol, so the same client code runs in tests, on a laptop and against a
//! Kafka cluster.
//!
//! Every setting of `steadfast.toml` is in [`config::WorkerConfig`]; the repository's `docs/`
//! holds the configuration reference (`docs/configuration.md`) and one guide per guarantee —
//! what it promises and its limits, what it costs, which tests hold it, how to configure it:
//! `ordering.md`, `once-only-effects.md`, `stale-drop.md`, `lock.md`, `retry-and-dlq.md`,
//! `rate-limit-and-breaker.md`, `observability.md` (traces across retry hops, OTLP export
//! with the `otel` feature), and guides for users of Spring Kafka
//! (`from-spring-kafka.md`) and Confluent's Parallel Consumer (`from-parallel-consumer.md`).
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod broker;
pub mod config;
pub mod delay;
pub mod dlq;
mod error;
pub mod handler;
pub mod message;
pub mod observe;
pub mod policy;
pub mod producer;
pub mod runtime;
pub mod store;
pub mod testing;

/// Every settings type a user writes, at the root beside [`WorkerConfig`].
pub use config::{
    BreakerConfig, ConfigError, DedupConfig, LockConfig, ObserveConfig, Ordering, RateLimitConfig,
    RetryConfig, StaleConfig, StartFrom, StoresConfig, TransactionConfig, WorkerConfig,
};
pub use error::WorkerError;
pub use handler::{Context, Handler, HandlerError};
pub use message::{Envelope, Headers, Message, Outcome};
pub use policy::Retry;
pub use producer::{Producer, Record};
pub use runtime::{Worker, WorkerBuilder, WorkerStats};

/// Derive macros: `#[derive(steadfast::Message)]` and `#[derive(steadfast::Handler)]`.
pub use steadfast_macros::{Handler, Message};

/// The embedded Kafka-protocol log server (the `steadfast-server` crate).
#[cfg(feature = "server")]
pub use steadfast_server as server;

/// Items the derive macros expand to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::message::{Json, MessageId, MessageKey, MessageVersion, Protobuf, RawBytes};
}

/// The README's Rust examples, compiled (and the runnable ones run) as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;

/// docs/observability.md's examples (the `otel` feature's), compiled as doc tests.
#[cfg(all(doctest, feature = "otel"))]
#[doc = include_str!("../docs/observability.md")]
pub struct ObservabilityExamples;

/// docs/delayed-messages.md's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/delayed-messages.md")]
pub struct DelayedMessagesExamples;

/// docs/several-handlers.md's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/several-handlers.md")]
pub struct SeveralHandlersExamples;

/// The derive macros' documentation (`steadfast-macros`), its examples run as doc tests here.
#[cfg(doctest)]
#[doc = include_str!("../macros/docs/crate.md")]
pub struct MacrosCrateExamples;

/// `#[derive(Message)]`'s documentation, its examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../macros/docs/message.md")]
pub struct MessageDeriveExamples;

/// `#[derive(Handler)]`'s documentation, its examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../macros/docs/handler.md")]
pub struct HandlerDeriveExamples;
