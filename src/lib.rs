//! steadfast — a consumer-side reliability framework for Kafka: per-key ordered parallel
//! processing, bounded retries, retry topics that keep key order and a dead-letter queue,
//! around the real Kafka client (librdkafka through the `rdkafka` crate).
//!
//! With the default `server` feature, [`server`] is the embedded log server that speaks the
//! Kafka wire protocol, so the same client code runs in tests, on a laptop and against a
//! Kafka cluster.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

/// The embedded Kafka-protocol log server (the `steadfast-server` crate).
#[cfg(feature = "server")]
pub use steadfast_server as server;
