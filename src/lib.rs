//! steadfast — a consumer-side reliability framework for Kafka, with an embedded log server
//! that speaks the Kafka wire protocol.
//!
//! This crate currently ships the embedded server ([`server`]): a single-node,
//! Kafka-protocol log server that unmodified Kafka clients (librdkafka through the
//! `rdkafka` crate, kcat, kafka-python) produce to and consume from.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod server;
