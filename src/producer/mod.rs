//! Sending messages through steadfast: [`Producer`] publishes typed messages (the derive's
//! topic, key and codec) with an idempotent, `acks=all` librdkafka producer and answers with
//! where each landed. A handler gets one from its context ([`crate::Context::producer`]); the
//! records it sends carry a provenance header naming the record being handled.

mod record;

pub use self::record::Record;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::broker::owned_headers;
use crate::config::{KafkaClient, WorkerConfig};
use crate::delay::buckets;
use crate::message::headers::{self, CAUSED_BY};
use crate::message::Message;
use crate::observe::trace::{self, send_span, Parent, TraceContext};
use crate::policy::{self, OutgoingRecord, Sink};
use tracing::Instrument;

/// How long a send may wait in librdkafka's queue and retries before it fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The latest delivery time a delayed send takes (9999-12-31T23:59:59.999Z, the last time
/// RFC 3339 writes); a later one is delivered then.
const LATEST_DELIVERY_MS: i64 = 253_402_300_799_999;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
}

/// A send that did not land.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The message could not be encoded with its codec.
    #[error("encoding a message for `{topic}`: {reason}")]
    Encode {
        /// The topic it was for.
        topic: String,
        /// The codec's error.
        reason: String,
    },
    /// The producer could not be created from the settings.
    #[error("creating the producer: {0}")]
    Client(String),
    /// The bucket topics of a delayed send could not be made ready.
    #[error("sending a delayed record to `{topic}`: {source}")]
    Delay {
        /// The topic it was for.
        topic: String,
        /// What went wrong.
        source: crate::delay::DelayError,
    },
    /// The broker did not acknowledge the record (refused it, or it timed out).
    #[error("`{topic}` did not acknowledge the record: {reason}")]
    NotAcknowledged {
        /// The topic.
        topic: String,
        /// What librdkafka reported.
        reason: String,
    },
}

/// The librdkafka producer, created on the first send (a worker whose handlers never send
/// runs no producer threads for it).
struct Lazy {
    config: ClientConfig,
    producer: OnceLock<Result<FutureProducer, String>>,
    /// The topics whose bucket topics exist (made sure of on the first delayed send; held
    /// while it runs, so concurrent first sends wait for one check).
    delay_ready: tokio::sync::Mutex<HashSet<String>>,
}

/// Where sent records go.
enum Backend {
    /// A Kafka cluster, through librdkafka.
    Kafka(Lazy),
    /// The test worker's record of sends ([`crate::testing::TestWorker::produced`]).
    Sink(Arc<dyn Sink>),
}

/// Publishes typed messages; cheap to clone (clones share one librdkafka producer).
#[derive(Clone)]
pub struct Producer {
    backend: Arc<Backend>,
    /// `<topic>/<partition>/<offset>` of the record a handler was handling when it sent
    /// through its context: the value of [`CAUSED_BY`].
    caused_by: Option<Arc<str>>,
    /// The trace context of the handler attempt that sends through its context: the parent
    /// of each record's `send` span where the send runs outside the attempt's task.
    trace: Option<TraceContext>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("caused_by", &self.caused_by)
            .field("trace", &self.trace)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer for `config`'s brokers and `[kafka]` properties (those that apply to a
    /// producer), idempotent with `acks=all`; created on the first send.
    pub fn new(config: &WorkerConfig) -> Producer {
        let mut c = ClientConfig::new();
        for (k, v) in config.kafka_properties(KafkaClient::Producer) {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &config.brokers);
        Producer::with_client_config(c)
    }

    /// A producer for the brokers `bootstrap` (`host:port,...`) with librdkafka's defaults
    /// but idempotence and `acks=all`.
    pub fn connect(bootstrap: &str) -> Producer {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap);
        Producer::with_client_config(c)
    }

    fn with_client_config(mut config: ClientConfig) -> Producer {
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        Producer {
            backend: Arc::new(Backend::Kafka(Lazy {
                config,
                producer: OnceLock::new(),
                delay_ready: tokio::sync::Mutex::new(HashSet::new()),
            })),
            caused_by: None,
            trace: None,
        }
    }

    /// A producer that hands its records to `sink` (the test worker's): a delivery reports
    /// partition 0 and offset -1.
    pub(crate) fn to_sink(sink: Arc<dyn Sink>) -> Producer {
        Producer {
            backend: Arc::new(Backend::Sink(sink)),
            caused_by: None,
            trace: None,
        }
    }

    /// The same producer, its records marked as caused by `topic`/`partition`/`offset`, their
    /// `send` spans children of `trace` (the handler attempt's context).
    pub(crate) fn caused_by(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        trace: Option<TraceContext>,
    ) -> Producer {
        Producer {
            backend: self.backend.clone(),
            caused_by: Some(Arc::from(format!("{topic}/{partition}/{offset}"))),
            trace,
        }
    }

    /// Sends `message` to its type's topic under its key; answers once the broker
    /// acknowledged it.
    pub async fn send<M: Message>(&self, message: &M) -> Result<Delivery, ProduceError> {
        self.send_record(Record::of(message)?).await
    }

    /// Sends `record` (see [`Record`] for headers and another topic). The send runs in a
    /// `send` span (kind producer) whose context the record carries as `traceparent`: a
    /// child of the `traceparent` the record was given, else of the handler attempt that
    /// sends it, else of the current span (docs/observability.md).
    pub async fn send_record(&self, mut record: Record) -> Result<Delivery, ProduceError> {
        if let Some(cause) = &self.caused_by {
            record.headers.push(CAUSED_BY, cause.as_bytes().to_vec());
        }
        let given = TraceContext::from_headers(&record.headers);
        let parent = match (&given, &self.trace) {
            (Some(p), _) => Parent::Remote(Some(p)),
            // Sent from a task the handler spawned: the attempt's context was captured.
            (None, Some(p)) if trace::current().is_none() => Parent::Remote(Some(p)),
            _ => Parent::Local,
        };
        let (span, cx) = send_span("send", &record.topic, parent);
        if let Some(cx) = cx {
            cx.write_to(&mut record.headers);
        }
        self.send_traced(record).instrument(span).await
    }

    /// Sends `message` to be delivered to its type's topic no earlier than `when` (as soon as
    /// a relay reads it if that has passed): it waits in the topic's bucket topics until a
    /// relay delivers it (docs/delayed-messages.md); the delivery names where it waits.
    /// Delayed messages of one key reach the topic in the order of their due times when one
    /// relay holds them both before the first is due.
    pub async fn send_at<M: Message>(
        &self,
        message: &M,
        when: SystemTime,
    ) -> Result<Delivery, ProduceError> {
        self.send_record_at(Record::of(message)?, when).await
    }

    /// [`Producer::send_at`] `delay` from now.
    pub async fn send_after<M: Message>(
        &self,
        message: &M,
        delay: Duration,
    ) -> Result<Delivery, ProduceError> {
        let when = SystemTime::now().checked_add(delay).unwrap_or_else(|| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(LATEST_DELIVERY_MS as u64)
        });
        self.send_at(message, when).await
    }

    /// [`Producer::send_at`] for a [`Record`]: its topic's bucket topics are created on the
    /// first delayed send to it (the topic itself must exist).
    pub async fn send_record_at(
        &self,
        mut record: Record,
        when: SystemTime,
    ) -> Result<Delivery, ProduceError> {
        let deliver_at = match when.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
        .min(LATEST_DELIVERY_MS);
        record
            .headers
            .set(headers::DELIVER_AT, headers::format_time_ms(deliver_at));
        // A record due now or soon waits in the relay's memory (through bucket 1) like the
        // rest, so it cannot pass a record of its key due earlier.
        let (bucket, hop_at) = match buckets::place(deliver_at, policy::now_ms()) {
            buckets::Placement::Deliver | buckets::Placement::Hold => (1, deliver_at),
            buckets::Placement::Bucket { bucket, hop_at_ms } => (bucket, hop_at_ms),
        };
        self.delay_ready(&record.topic).await?;
        record
            .headers
            .set(headers::DELAY_HOP_AT, headers::format_time_ms(hop_at));
        record.topic = buckets::bucket_topic(&record.topic, bucket);
        self.send_record(record).await
    }

    /// Makes sure `topic`'s bucket topics exist, once per topic and producer.
    async fn delay_ready(&self, topic: &str) -> Result<(), ProduceError> {
        let Backend::Kafka(lazy) = self.backend.as_ref() else {
            return Ok(());
        };
        let mut ready = lazy.delay_ready.lock().await;
        if ready.contains(topic) {
            return Ok(());
        }
        crate::delay::ensure_bucket_topics(&lazy.config, topic)
            .await
            .map_err(|source| ProduceError::Delay {
                topic: topic.to_owned(),
                source,
            })?;
        ready.insert(topic.to_owned());
        Ok(())
    }

    /// Sends `record` as it is.
    async fn send_traced(&self, record: Record) -> Result<Delivery, ProduceError> {
        let lazy = match self.backend.as_ref() {
            Backend::Kafka(lazy) => lazy,
            Backend::Sink(sink) => return to_sink(sink.as_ref(), record).await,
        };
        let producer = lazy
            .producer
            .get_or_init(|| lazy.config.create().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ProduceError::Client(e.clone()))?;
        let out = FutureRecord::to(&record.topic)
            .key(&record.key)
            .payload(&record.payload)
            .headers(owned_headers(&record.headers));
        match producer.send(out, DELIVERY_TIMEOUT).await {
            Ok(d) => Ok(Delivery {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((e, _)) => Err(ProduceError::NotAcknowledged {
                topic: record.topic.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

/// Hands `record` to a test worker's sink.
async fn to_sink(sink: &dyn Sink, record: Record) -> Result<Delivery, ProduceError> {
    let topic = record.topic.clone();
    sink.send(OutgoingRecord {
        topic: record.topic,
        partition: None,
        key: Some(record.key.into()),
        payload: Some(record.payload.into()),
        headers: record.headers,
    })
    .await
    .map_err(|e| ProduceError::NotAcknowledged {
        topic,
        reason: e.reason,
    })?;
    Ok(Delivery {
        partition: 0,
        offset: -1,
    })
}
