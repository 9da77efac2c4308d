//! The idempotent producer that publishes retry-tier and dead-letter copies.

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::policy::{OutgoingRecord, Sink, SinkError};

/// Publishes with `enable.idempotence=true` and `acks=all`; a send resolves on the broker's
/// acknowledgement.
pub(crate) struct KafkaSink {
    producer: FutureProducer,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A producer for `config` (the worker's brokers and raw properties).
    pub(crate) fn new(mut config: ClientConfig) -> Result<Self, rdkafka::error::KafkaError> {
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // A copy's timestamp is taken when it is first sent: bounded here, so a worker
            // taking over a partition knows how far back to look for copies (see
            // `runtime::recovery`). A send that times out is sent again by the route layer.
            .set("message.timeout.ms", "60000");
        Ok(KafkaSink {
            producer: config.create()?,
        })
    }
}

impl Sink for KafkaSink {
    fn send(&self, record: OutgoingRecord) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in record.headers.iter() {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_ref()),
                });
            }
            let mut out: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&record.topic).headers(headers);
            if let Some(key) = record.key.as_deref() {
                out = out.key(key);
            }
            if let Some(payload) = record.payload.as_deref() {
                out = out.payload(payload);
            }
            if let Some(p) = record.partition {
                out = out.partition(p);
            }
            match self.producer.send(out, Duration::from_secs(30)).await {
                Ok(_) => Ok(()),
                Err((e, _)) => Err(SinkError {
                    topic: record.topic.clone(),
                    reason: e.to_string(),
                }),
            }
        })
    }
}
