//! The idempotent producer that publishes retry-tier and dead-letter copies.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _, PurgeConfig};

use crate::policy::{OutgoingRecord, Sink, SinkError};

/// Publishes with `enable.idempotence=true` and `acks=all`; a send resolves on the broker's
/// acknowledgement.
pub(crate) struct KafkaSink {
    config: ClientConfig,
    /// Replaced by a fresh producer when queued copies are purged (see `purge_queued`).
    producer: parking_lot::RwLock<Arc<FutureProducer>>,
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
            producer: parking_lot::RwLock::new(Arc::new(config.create()?)),
            config,
        })
    }
}

impl Sink for KafkaSink {
    fn send(&self, record: OutgoingRecord) -> BoxFuture<'_, Result<(), SinkError>> {
        let producer = self.producer.read().clone();
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
            match producer.send(out, Duration::from_secs(30)).await {
                Ok(delivery) => {
                    tracing::debug!(topic = %record.topic, partition = delivery.partition, offset = delivery.offset, from = ?record.headers.get_str(crate::policy::headers::ROUTED_FROM), "copy acknowledged");
                    Ok(())
                }
                Err((e, _)) => Err(SinkError {
                    topic: record.topic.clone(),
                    reason: e.to_string(),
                }),
            }
        })
    }

    fn purge_queued(&self) {
        // Later sends go through a fresh producer: purging part of an idempotent producer's
        // queue would leave a gap in its sequence numbers. The old one has its queue purged
        // (not its in-flight requests, whose outcome would be unknown) and is closed once its
        // last send ended.
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *self.producer.write(), Arc::new(fresh));
                old.purge(PurgeConfig::default().queue());
            }
            Err(e) => tracing::warn!(
                error = %e,
                "no fresh routing producer; copies queued for abandoned handlers may still be published"
            ),
        }
    }
}
