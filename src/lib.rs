//! steadfast — a consumer-side reliability framework for Kafka: per-key ordered parallel
//! processing, bounded retries, retry topics that keep key order and a dead-letter queue,
//! around the real Kafka client (librdkafka through the `rdkafka` crate).
//!
//! With the default `server` feature, [`server`] is the embedded log server that speaks the
//! Kafka wire protocol, so the same client code runs in tests, on a laptop and against a
//! Kafka cluster.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod handler;
pub mod message;

pub use handler::{Context, Handler, HandlerError};
pub use message::{Envelope, Headers, Message, Outcome};

/// Derive macros: `#[derive(steadfast::Message)]` and `#[derive(steadfast::Handler)]`.
pub use steadfast_macros::{Handler, Message};

/// The embedded Kafka-protocol log server (the `steadfast-server` crate).
#[cfg(feature = "server")]
pub use steadfast_server as server;

/// Items the derive macros expand to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::message::{Json, MessageId, MessageKey, MessageVersion, RawBytes};
}
