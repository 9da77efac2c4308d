//! Where routed copies go: a broker topic in production ([`crate::broker`]), memory in tests.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::message::Headers;

/// A record to publish (a retry-tier or dead-letter copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    /// Target topic.
    pub topic: String,
    /// Target partition; `None` lets the key choose.
    pub partition: Option<i32>,
    /// Record key (the original key).
    pub key: Option<Bytes>,
    /// Record value (the original payload).
    pub payload: Option<Bytes>,
    /// Original headers plus steadfast's.
    pub headers: Headers,
}

/// A publish that did not get an acknowledgement.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publishing to {topic} failed: {reason}")]
pub struct SinkError {
    /// The topic.
    pub topic: String,
    /// What the client said.
    pub reason: String,
}

/// Publishes routed copies; `send` resolves once the broker acknowledged the record.
pub trait Sink: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes `record` and waits for its acknowledgement.
    fn send(&self, record: OutgoingRecord) -> BoxFuture<'_, Result<(), SinkError>>;

    /// Drops the records handed to [`Sink::send`] that were not transmitted yet: their sends
    /// fail (and are sent again by whoever still wants them). Records already on their way to
    /// the broker are not recalled. The default does nothing (a sink that queues nothing).
    fn purge_queued(&self) {}
}

/// A sink that keeps records in memory (for [`crate::testing`]).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    records: Arc<Mutex<Vec<OutgoingRecord>>>,
}

impl MemorySink {
    /// Everything sent so far.
    pub fn records(&self) -> Vec<OutgoingRecord> {
        self.records.lock().clone()
    }
}

impl Sink for MemorySink {
    fn send(&self, record: OutgoingRecord) -> BoxFuture<'_, Result<(), SinkError>> {
        self.records.lock().push(record);
        Box::pin(async { Ok(()) })
    }
}
