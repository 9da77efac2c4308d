//! Shared helpers of the integration tests: an in-process server on a fresh data directory,
//! unique topic names, librdkafka producers and consumers, and a raw protocol client.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use steadfast_server::{Server, ServerBuilder, ServerHandle};

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
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
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

/// A minimal blocking Kafka-protocol client for tests that must speak the protocol directly.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    correlation_id: i32,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        RawClient {
            stream,
            correlation_id: 0,
        }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Whether the server closed the connection (read returns EOF or reset) within the timeout.
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Closes the sending side, as a client that stops mid-request would.
    pub fn stream_shutdown_write(&mut self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown write");
    }

    /// True when no byte arrives for `wait` (the connection stays open and silent).
    pub fn nothing_received_for(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut probe = [0u8; 1];
        let silent = matches!(
            self.stream.peek(&mut probe),
            Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut
        );
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        silent
    }

    /// Encodes a request frame for `request` at `version`.
    pub fn frame<R: Request>(&mut self, request: &R, version: i16) -> Vec<u8> {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("raw-test"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .expect("header encodes");
        request.encode(&mut body, version).expect("request encodes");
        let mut framed = Vec::with_capacity(body.len() + 4);
        framed.put_i32(body.len() as i32);
        framed.extend_from_slice(&body);
        framed
    }

    /// Reads one response frame and decodes it as `R::Response`.
    pub fn receive<R: Request>(&mut self, version: i16) -> R::Response {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).expect("response length");
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).expect("response body");
        let mut body = Bytes::from(body);
        let header_version = if R::KEY == ApiKey::ApiVersions as i16 {
            0
        } else {
            R::Response::header_version(version)
        };
        let header = ResponseHeader::decode(&mut body, header_version).expect("response header");
        assert_eq!(header.correlation_id, self.correlation_id, "correlation id");
        let response = R::Response::decode(&mut body, version).expect("response body decodes");
        assert!(
            !body.has_remaining() || body.remaining() < 4,
            "unexpected trailing response bytes"
        );
        response
    }

    /// Sends `request` and waits for its response.
    pub fn call<R: Request>(&mut self, request: &R, version: i16) -> R::Response {
        let frame = self.frame(request, version);
        self.send_raw(&frame).expect("send");
        self.receive::<R>(version)
    }
}

/// One delivery report: the message index and its (partition, offset), or the error.
pub type DeliveryReport = (usize, Result<(i32, i64), String>);

/// Delivery reports collected by a producer.
#[derive(Default, Debug)]
pub struct DeliveryLog {
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
