//! Shared helpers of the tests: an in-process server on a free port, unique topic names,
//! creating topics, librdkafka producers and consumers, reading a partition back, a raw
//! protocol client ([`RawClient`], over `steadfast_server::client`) and the record-batch
//! encoder ([`batch`]).

pub mod batch;
mod raw;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use steadfast_server::{Server, ServerBuilder, ServerHandle};

pub use self::raw::RawClient;

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A builder for an in-process server on `dir`, listening on a free loopback port.
pub fn server_on(dir: &Path) -> ServerBuilder {
    Server::builder().listen("127.0.0.1:0").data_dir(dir)
}

/// Starts an in-process server with defaults on `dir`.
pub async fn start_server(dir: &Path) -> ServerHandle {
    server_on(dir).start().await.expect("server starts")
}

/// A client config pointing at `bootstrap`.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "30000");
    config
}

/// One consumed record, everything a test compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub payload: Option<Vec<u8>>,
    /// Its headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Its timestamp in milliseconds, if it has one.
    pub timestamp: Option<i64>,
}

fn to_received<M: Message>(m: &M) -> Received {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_owned(), h.value.map(|v| v.to_vec())))
                .collect()
        })
        .unwrap_or_default();
    Received {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| k.to_vec()),
        payload: m.payload().map(|p| p.to_vec()),
        headers,
        timestamp: m.timestamp().to_millis(),
    }
}

/// Reads `expected` records from `partitions` partitions of `topic` from `start`, with a
/// deadline; returns them per partition in the order received.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    start: Offset,
    expected: usize,
    deadline: Duration,
) -> HashMap<i32, Vec<Received>> {
    consume_with(bootstrap, topic, partitions, start, expected, deadline, &[])
}

/// [`consume`] with extra consumer `settings` (such as `check.crcs=true`); a consume error
/// fails the test.
pub fn consume_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    start: Offset,
    expected: usize,
    deadline: Duration,
    settings: &[(&str, &str)],
) -> HashMap<i32, Vec<Received>> {
    let mut config = client_config(bootstrap);
    config
        .set("group.id", unique_topic("test-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, start)
            .expect("partition offset");
    }
    consumer.assign(&assignment).expect("assign");
    let mut out: HashMap<i32, Vec<Received>> = HashMap::new();
    let mut count = 0;
    let end = Instant::now() + deadline;
    while count < expected {
        assert!(
            Instant::now() < end,
            "timed out after {count} of {expected} records from {topic}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consume error: {e}"),
            Some(Ok(m)) => {
                out.entry(m.partition()).or_default().push(to_received(&m));
                count += 1;
            }
        }
    }
    // Anything beyond `expected` would be a duplicate: give it a moment to show up.
    let grace = Instant::now() + Duration::from_millis(300);
    while Instant::now() < grace {
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Err(e)) => panic!("consume error: {e}"),
            Some(Ok(m)) => out.entry(m.partition()).or_default().push(to_received(&m)),
        }
    }
    out
}

/// Reads partition 0 of `topic` from the beginning up to its high watermark; returns the
/// watermark and the records (keyed by partition, as [`consume`] returns them).
pub fn read_partition(bootstrap: &str, topic: &str) -> (i64, HashMap<i32, Vec<Received>>) {
    let (_, high) = watermarks(bootstrap, topic, 0);
    let received = consume(
        bootstrap,
        topic,
        1,
        Offset::Beginning,
        high as usize,
        Duration::from_secs(30),
    );
    (high, received)
}

/// Creates `topic` with `partitions` partitions and the topic `configs` through the admin
/// API (CreateTopics); panics if it is refused.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap).create().expect("admin client");
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    let results = admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await
        .expect("create topics");
    for r in results {
        r.unwrap_or_else(|(name, code)| panic!("creating {name}: {code}"));
    }
}

/// The low and high watermarks of a partition.
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", unique_topic("test-watermarks"))
        .create()
        .expect("consumer");
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
}

/// The offsets `group` committed on partitions `0..partitions` of `topic` (`None` where it
/// committed none). Panics when they cannot be read.
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<i64>> {
    try_committed_offsets(bootstrap, group, topic, partitions).expect("committed offsets")
}

/// As [`committed_offsets`], or the error that kept them from being read (the server down,
/// say).
pub fn try_committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<i64>>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = client_config(bootstrap).set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match c.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect())
}

/// One delivery report: the message index and its (partition, offset), or the error.
pub type DeliveryReport = (usize, Result<(i32, i64), String>);

/// Delivery reports collected by a producer.
#[derive(Default, Debug)]
pub struct DeliveryLog {
    /// The reports in the order they arrived.
    pub reports: std::sync::Mutex<Vec<DeliveryReport>>,
}

impl rdkafka::ClientContext for DeliveryLog {}

impl rdkafka::producer::ProducerContext for DeliveryLog {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, index: Self::DeliveryOpaque) {
        let entry = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.reports
            .lock()
            .expect("delivery log lock")
            .push((*index, entry));
    }
}

/// A producer whose delivery reports land in a [`DeliveryLog`].
pub type LoggedProducer = rdkafka::producer::BaseProducer<DeliveryLog>;

/// Creates a [`LoggedProducer`] with `settings` applied over `client_config(bootstrap)`.
pub fn logged_producer(bootstrap: &str, settings: &[(&str, &str)]) -> LoggedProducer {
    let mut config = client_config(bootstrap);
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config
        .create_with_context(DeliveryLog::default())
        .expect("producer")
}

/// Sends one record, polling while the local queue is full.
pub fn send_record(
    producer: &LoggedProducer,
    record: rdkafka::producer::BaseRecord<'_, [u8], [u8], Box<usize>>,
) {
    let mut record = record;
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => panic!("send failed: {e}"),
        }
    }
}

/// Flushes and returns the successful deliveries as index → (partition, offset), panicking
/// on any failed delivery.
pub fn delivered_ok(producer: &LoggedProducer) -> HashMap<usize, (i32, i64)> {
    use rdkafka::producer::Producer;
    producer.flush(Duration::from_secs(60)).expect("flush");
    let reports = producer.context().reports.lock().expect("lock");
    let mut out = HashMap::new();
    for (index, result) in reports.iter() {
        match result {
            Ok(at) => {
                out.insert(*index, *at);
            }
            Err(e) => panic!("delivery of message {index} failed: {e}"),
        }
    }
    out
}

/// Creates `topic` the way an application would: a producer's metadata request auto-creates
/// it, and one record is produced and acknowledged.
pub fn create_by_producing(bootstrap: &str, topic: &str) {
    let producer = logged_producer(bootstrap, &[]);
    send_record(
        &producer,
        rdkafka::producer::BaseRecord::with_opaque_to(topic, Box::new(0)).payload(&b"x"[..]),
    );
    assert_eq!(delivered_ok(&producer).len(), 1);
}
