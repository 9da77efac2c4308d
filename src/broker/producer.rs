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
    /// Replaced by a fresh producer when queued copies are purged (see `purge_queued`);
    /// `None` once closed.
    producer: parking_lot::RwLock<Option<Arc<FutureProducer>>>,
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
            producer: parking_lot::RwLock::new(Some(Arc::new(config.create()?))),
            config,
        })
    }

    /// Takes the producer out: later sends fail. Drop what this returns off the async
    /// threads (a producer's drop flushes for up to 500 ms and joins its polling thread);
    /// sends still running hold the producer until they end.
    pub(crate) fn close(&self) -> Option<Arc<FutureProducer>> {
        self.producer.write().take()
    }
}

/// `headers` as librdkafka takes them, in order.
pub(crate) fn owned_headers(headers: &crate::message::Headers) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |out, (name, value)| {
            out.insert(Header {
                key: name,
                value: Some(value.as_ref()),
            })
        },
    )
}

impl Sink for KafkaSink {
    fn send(&self, record: OutgoingRecord) -> BoxFuture<'_, Result<(), SinkError>> {
        let producer = self.producer.read().clone();
        Box::pin(async move {
            let Some(producer) = producer else {
                return Err(SinkError {
                    topic: record.topic.clone(),
                    reason: "the worker stopped: its routing producer is closed".to_owned(),
                });
            };
            let mut out: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&record.topic).headers(owned_headers(&record.headers));
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
                    tracing::debug!(topic = %record.topic, partition = delivery.partition, offset = delivery.offset, from = ?record.headers.get_str(crate::message::headers::ROUTED_FROM), "copy acknowledged");
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
        // last send ended. A closed sink stays closed.
        let mut current = self.producer.write();
        let Some(old) = current.take() else {
            return;
        };
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                *current = Some(Arc::new(fresh));
                drop(current);
                old.purge(PurgeConfig::default().queue());
            }
            Err(e) => {
                *current = Some(old);
                tracing::warn!(
                    error = %e,
                    "no fresh routing producer; copies queued for abandoned handlers may still be published"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use bytes::Bytes;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message as _, Offset, TopicPartitionList};

    use super::*;
    use crate::message::Headers;
    use crate::server::{Server, ServerHandle};

    const TOPIC: &str = "copies";

    fn record(payload: &str) -> OutgoingRecord {
        OutgoingRecord {
            topic: TOPIC.to_owned(),
            partition: Some(0),
            key: Some(Bytes::from_static(b"k")),
            payload: Some(Bytes::from(payload.to_owned())),
            headers: Headers::new(),
        }
    }

    async fn server(dir: &Path, listen: &str) -> ServerHandle {
        Server::builder()
            .listen(listen)
            .data_dir(dir)
            .auto_create_topics(true)
            .default_partitions(1)
            .start()
            .await
            .expect("the server starts")
    }

    /// A closed sink refuses sends with a clear error (no broker needed), and a purge does
    /// not open it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_sink_refuses_sends_and_stays_closed() {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        let sink = KafkaSink::new(config).expect("a producer");
        let producer = sink.close().expect("open until closed");
        tokio::task::spawn_blocking(move || drop(producer))
            .await
            .expect("closed");
        let refused = sink
            .send(record("after"))
            .await
            .expect_err("refused once closed");
        assert!(refused.reason.contains("closed"), "{}", refused.reason);
        sink.purge_queued();
        assert!(sink.close().is_none(), "a purge opened a closed sink again");
    }

    /// Every payload of partition 0 of `TOPIC`, in order.
    fn payloads(bootstrap: &str) -> Vec<String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "copies-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let (_, end) = consumer
            .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&tpl).expect("assigned");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while (out.len() as i64) < end {
            assert!(Instant::now() < deadline, "read {out:?} of {end} records");
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.expect("a record");
                out.push(
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                );
            }
        }
        out
    }

    /// The seed-2 finding of the chaos test: a copy handed to the producer while the server
    /// was down landed after the restart, after the next owner's read-back. Purged, it never
    /// lands, and the sink keeps publishing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_queued_while_the_server_is_down_and_purged_never_lands() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let first = server(dir.path(), "127.0.0.1:0").await;
        let bootstrap = first.local_addr().to_string();
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &bootstrap);
        let sink = Arc::new(KafkaSink::new(config).expect("a producer"));
        sink.send(record("before")).await.expect("acknowledged");

        first.shutdown().await;
        // Until the producer has seen the server go, a send may still be written to the
        // closing connection: in flight, not queued, and out of the purge's reach (as meant).
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::task::block_in_place(|| {
            sink.producer.read().as_ref().is_some_and(|p| {
                p.client()
                    .fetch_metadata(Some(TOPIC), Duration::from_millis(200))
                    .is_ok()
            })
        }) {
            assert!(
                Instant::now() < deadline,
                "the producer still reads metadata from the stopped server"
            );
        }
        let queued = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.send(record("abandoned")).await })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink
            .producer
            .read()
            .as_ref()
            .map_or(0, |p| p.in_flight_count())
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "the send never reached the producer"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.purge_queued();
        let purged = tokio::time::timeout(Duration::from_secs(10), queued)
            .await
            .expect("the purged send ends")
            .expect("the send task");
        assert!(purged.is_err(), "a purged send is not acknowledged");

        let second = server(dir.path(), &bootstrap).await;
        sink.send(record("after"))
            .await
            .expect("acknowledged after the restart");
        let reader = bootstrap.clone();
        let seen = tokio::task::spawn_blocking(move || payloads(&reader))
            .await
            .expect("the reader");
        assert_eq!(seen, ["before", "after"]);
        second.shutdown().await;
    }
}
