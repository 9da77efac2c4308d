//! What a handler knows about the message it handles: where it came from and which attempt
//! this is.

use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::message::{Envelope, Headers};

/// The context of one handler call.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) envelope: Envelope,
    pub(crate) attempt: u32,
    pub(crate) group: Arc<str>,
    pub(crate) shutdown: Arc<CancellationToken>,
}

impl Context {
    // Called by the consumer runtime, which is not in this crate yet.
    pub(crate) fn new(
        envelope: Envelope,
        attempt: u32,
        group: Arc<str>,
        shutdown: Arc<CancellationToken>,
    ) -> Self {
        Context {
            envelope,
            attempt,
            group,
            shutdown,
        }
    }
    /// The attempt number, counting from 1 at the first delivery, across in-place retries
    /// and retry tiers (it travels in a header).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The topic the record was read from (a retry tier's topic for a retried record).
    pub fn topic(&self) -> &str {
        &self.envelope.topic
    }
    /// The record's partition.
    pub fn partition(&self) -> i32 {
        self.envelope.partition
    }
    /// The record's offset.
    pub fn offset(&self) -> i64 {
        self.envelope.offset
    }
    /// The record key.
    pub fn key(&self) -> Option<&Bytes> {
        self.envelope.key.as_ref()
    }
    /// The record headers.
    pub fn headers(&self) -> &Headers {
        &self.envelope.headers
    }
    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }
    /// Cancelled when the worker shuts down: long handlers may stop early and return a
    /// transient error (the message is delivered again).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}
