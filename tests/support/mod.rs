//! Helpers of the runtime tests: a recording handler whose behaviour each message chooses,
//! topic creation, producing events, reading a topic back, and reading committed offsets.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use steadfast::message::Json;
use steadfast::{Context, Handler, HandlerError, Message};

pub mod mock;

/// A test event: its key, its sequence number within the key, and what the handler does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Event {
    pub key: String,
    pub seq: u64,
    /// Fail transiently on the first `fail_times` attempts.
    #[serde(default)]
    pub fail_times: u32,
    /// Fail permanently.
    #[serde(default)]
    pub permanent: bool,
    /// Panic.
    #[serde(default)]
    pub panic: bool,
    /// Sleep this long in the handler.
    #[serde(default)]
    pub sleep_ms: u64,
}

impl Message for Event {
    const TOPIC: &'static str = "events";
    type Codec = Json;
    fn key(&self) -> Vec<u8> {
        self.key.as_bytes().to_vec()
    }
}

/// One handler call.
#[derive(Debug, Clone)]
pub struct Call {
    pub key: String,
    pub seq: u64,
    pub attempt: u32,
    pub topic: String,
    pub started: Instant,
    pub ended: Instant,
    pub ok: bool,
    /// Which recorder (worker) made the call.
    pub worker: usize,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    running: usize,
    max_running: usize,
    running_keys: HashMap<String, usize>,
    key_overlaps: usize,
}

/// A handler that records every call, the most calls it saw at once, and whether two calls
/// of one key ever overlapped.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
    worker: usize,
}

impl Recorder {
    /// A recorder sharing this one's record, marking its calls with `worker`.
    pub fn for_worker(&self, worker: usize) -> Recorder {
        Recorder {
            state: self.state.clone(),
            worker,
        }
    }
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }
    pub fn successes(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.ok).collect()
    }
    pub fn max_running(&self) -> usize {
        self.state.lock().max_running
    }
    pub fn key_overlaps(&self) -> usize {
        self.state.lock().key_overlaps
    }
    /// Polls until `done` holds for the calls, or panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&[Call]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.state.lock().calls) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; calls: {}",
                self.state.lock().calls.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Handler for Recorder {
    type Message = Event;
    const GROUP: &'static str = "recorder";

    fn handle_message(
        &self,
        event: Event,
        cx: &Context,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
        let state = self.state.clone();
        let attempt = cx.attempt();
        let topic = cx.topic().to_owned();
        let worker = self.worker;
        async move {
            let started = Instant::now();
            {
                let mut s = state.lock();
                s.running += 1;
                s.max_running = s.max_running.max(s.running);
                let n = s.running_keys.entry(event.key.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    s.key_overlaps += 1;
                }
            }
            if event.sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(event.sleep_ms)).await;
            }
            let result = if event.panic {
                None
            } else if event.permanent {
                Some(Err(HandlerError::permanent(format!(
                    "{} is invalid",
                    event.key
                ))))
            } else if attempt <= event.fail_times {
                Some(Err(HandlerError::transient(format!(
                    "flaky dependency at attempt {attempt}"
                ))))
            } else {
                Some(Ok(()))
            };
            {
                let mut s = state.lock();
                s.running -= 1;
                if let Some(n) = s.running_keys.get_mut(&event.key) {
                    *n -= 1;
                    if *n == 0 {
                        s.running_keys.remove(&event.key);
                    }
                }
                s.calls.push(Call {
                    key: event.key.clone(),
                    seq: event.seq,
                    attempt,
                    topic,
                    started,
                    ended: Instant::now(),
                    ok: matches!(result, Some(Ok(()))),
                    worker,
                });
            }
            match result {
                Some(r) => r,
                None => panic!("handler panics on {}", event.key),
            }
        }
    }
}

pub use steadfast_testkit::{client_config as client, create_topic as create_topic_with};

/// Creates `topic` with `partitions` partitions and no config overrides.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    create_topic_with(bootstrap, topic, partitions, &[]).await;
}

/// A fresh topic with `partitions` partitions, and its group's name.
pub async fn topic_and_group(bootstrap: &str, prefix: &str, partitions: i32) -> (String, String) {
    let topic = steadfast_testkit::unique_topic(prefix);
    create_topic(bootstrap, &topic, partitions).await;
    let group = format!("{topic}-group");
    (topic, group)
}

/// Produces raw records (key, payload) to partition 0 of `topic`, in order.
pub async fn produce_raw(bootstrap: &str, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
    produce_to(bootstrap, topic, records, Some(0)).await;
}

/// Produces raw records to `partition`, or to the partition their key hashes to.
pub async fn produce_to(
    bootstrap: &str,
    topic: &str,
    records: &[(Vec<u8>, Vec<u8>)],
    partition: Option<i32>,
) {
    let producer: FutureProducer = client(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(records.len());
    for (key, payload) in records {
        let mut record = FutureRecord::to(topic)
            .key(key.as_slice())
            .payload(payload.as_slice());
        if let Some(p) = partition {
            record = record.partition(p);
        }
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("queued"),
        );
        if pending.len() >= 10_000 {
            for p in pending.drain(..) {
                p.await.expect("delivery").expect("acknowledged");
            }
        }
    }
    for p in pending {
        p.await.expect("delivery").expect("acknowledged");
    }
}

/// Produces raw records (key, payload) in order, each to the partition its key hashes to, in
/// batches of at most `batch` records (small batches make a consumer with a small fetch size
/// fetch all along a run rather than everything at once); returns each record's (partition,
/// offset).
pub async fn produce_keyed(
    bootstrap: &str,
    topic: &str,
    records: &[(Vec<u8>, Vec<u8>)],
    batch: usize,
) -> Vec<(i32, i64)> {
    let producer: FutureProducer = client(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", batch.to_string())
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(records.len());
    for (key, payload) in records {
        let record = FutureRecord::to(topic)
            .key(key.as_slice())
            .payload(payload.as_slice());
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("queued"),
        );
    }
    acknowledged(pending).await
}

/// Waits for every produce of `pending` to be acknowledged: each record's partition and offset.
pub async fn acknowledged(
    pending: Vec<rdkafka::producer::future_producer::DeliveryFuture>,
) -> Vec<(i32, i64)> {
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        let d = p.await.expect("delivery").expect("acknowledged");
        out.push((d.partition, d.offset));
    }
    out
}

/// Sends `record` through `producer` and waits until the broker acknowledged it.
pub async fn send_acknowledged<K, P>(producer: &FutureProducer, record: FutureRecord<'_, K, P>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("acknowledged");
}

/// Raw records (key, JSON payload) of `messages`, in order.
pub fn json_records<M: Message + Serialize>(messages: &[M]) -> Vec<(Vec<u8>, Vec<u8>)> {
    messages
        .iter()
        .map(|m| (m.key(), serde_json::to_vec(m).expect("encodes")))
        .collect()
}

/// Produces events as JSON to partition 0 of `topic`, in order.
pub async fn produce(bootstrap: &str, topic: &str, events: &[Event]) {
    produce_events_to(bootstrap, topic, 0, events).await;
}

/// Produces `events` as JSON to `partition` of `topic`, in order (on a fresh topic, event `i`
/// lands at offset `i`).
pub async fn produce_events_to(bootstrap: &str, topic: &str, partition: i32, events: &[Event]) {
    produce_to(bootstrap, topic, &json_records(events), Some(partition)).await;
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Reads partition 0 of `topic` from the beginning until `count` records arrived (or panics).
pub fn read_topic(bootstrap: &str, topic: &str, count: usize, limit: Duration) -> Vec<Read> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count} records of {topic}",
            out.len()
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Read {
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    out
}

/// The offset `group` committed for partition 0 of `topic`, with its metadata.
pub fn committed(bootstrap: &str, group: &str, topic: &str) -> (Option<i64>, String) {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let elem = c.find_partition(topic, 0).expect("partition listed");
    let offset = match elem.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    };
    (offset, elem.metadata().to_owned())
}

/// The end offset of partition 0 of `topic`.
pub fn log_end(bootstrap: &str, topic: &str) -> i64 {
    steadfast_testkit::watermarks(bootstrap, topic, 0).1
}

/// Polls `check` until it holds or panics after `limit`.
pub async fn eventually(limit: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the asynchronous `check` until it holds or panics after `limit`.
pub async fn eventually_async<F>(limit: Duration, what: &str, mut check: impl FnMut() -> F)
where
    F: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Milliseconds since the epoch, now (the clock `steadfast-deliver-at` is compared with).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The Redis the store tests use.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The Postgres the store tests use.
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A Redis key prefix of its own, for isolation.
pub fn fresh_prefix() -> String {
    format!("sf-test-{}", uuid::Uuid::new_v4().simple())
}

/// How long the suite's Redis has been up (`uptime_in_seconds`, whole seconds).
pub async fn redis_uptime() -> Duration {
    let mut conn = redis::Client::open(REDIS_URL)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("start redis-server on 127.0.0.1:6379 (scripts/services.sh): {e}")
        });
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .expect("INFO server");
    let seconds = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("uptime_in_seconds:"))
        .and_then(|s| s.parse().ok())
        .expect("uptime_in_seconds in INFO server");
    Duration::from_secs(seconds)
}

/// Waits until the suite's Redis has been up for `lease` and a second: until then it holds
/// back key locks of that lease (it cannot tell its first start from a restart that forgot
/// the leases it granted). Only a Redis started just before the suite makes this wait.
pub async fn redis_up_for(lease: Duration) {
    let needed = lease + Duration::from_secs(1);
    let uptime = redis_uptime().await;
    if uptime < needed {
        tokio::time::sleep(needed - uptime + Duration::from_secs(1)).await;
    }
}

/// A Postgres schema of its own, for isolation.
pub fn fresh_schema() -> String {
    format!("sf_test_{}", uuid::Uuid::new_v4().simple())
}

/// The Redis stores under `prefix`; panics saying what to start when Redis does not answer.
pub async fn redis_stores(prefix: &str) -> steadfast::store::redis::RedisStores {
    steadfast::store::redis::RedisStores::connect(REDIS_URL, prefix)
        .await
        .unwrap_or_else(|e| {
            panic!("start redis-server on 127.0.0.1:6379 (scripts/services.sh): {e}")
        })
}

/// The Postgres stores in `schema`; panics saying what to start when Postgres does not answer.
pub async fn postgres_stores(schema: &str) -> steadfast::store::postgres::PostgresStores {
    steadfast::store::postgres::PostgresStores::connect(POSTGRES_URL, schema)
        .await
        .unwrap_or_else(|e| panic!("start PostgreSQL on 127.0.0.1:5432 (scripts/services.sh): {e}"))
}

/// Every record of `partitions` partitions of `topic`, from the beginning up to the high
/// watermarks read first (blocking; call from a blocking context).
pub fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> Vec<steadfast_testkit::Received> {
    let expected: i64 = (0..partitions)
        .map(|p| steadfast_testkit::watermarks(bootstrap, topic, p).1)
        .sum();
    let by_partition = steadfast_testkit::consume(
        bootstrap,
        topic,
        partitions,
        Offset::Beginning,
        usize::try_from(expected).expect("a record count"),
        Duration::from_secs(60),
    );
    let mut records: Vec<_> = by_partition.into_values().flatten().collect();
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// The offsets `group` committed for partitions `0..partitions` of `topic` (`None` where
/// nothing is committed), and the high watermarks of those partitions (blocking).
pub fn committed_and_ends(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> (Vec<Option<i64>>, Vec<i64>) {
    let committed = steadfast_testkit::committed_offsets(bootstrap, group, topic, partitions);
    let ends = (0..partitions)
        .map(|p| steadfast_testkit::watermarks(bootstrap, topic, p).1)
        .collect();
    (committed, ends)
}

/// An in-process server on a temporary directory (its data in `dir`'s `data`).
pub struct Server {
    pub dir: tempfile::TempDir,
    pub handle: steadfast::server::ServerHandle,
    pub bootstrap: String,
}

/// Starts an in-process server on a fresh temporary directory.
pub async fn server() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let handle = steadfast_testkit::start_server(&dir.path().join("data")).await;
    Server {
        bootstrap: handle.bootstrap_servers(),
        dir,
        handle,
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// A port bound but not listening, for as long as it lives: a connection to it is refused,
/// and no server another test starts can take it meanwhile (a port merely found free, as
/// [`free_port`] gives, can be taken before the test connects, and then answers).
pub struct RefusingPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl RefusingPort {
    /// A fresh loopback port that refuses connections.
    pub fn new() -> RefusingPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("bind a port");
        let port = socket.local_addr().expect("address").port();
        RefusingPort {
            _socket: socket,
            port,
        }
    }
}

/// A private `redis-server` without persistence: killed, it comes back empty.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        PrivateRedis::start_on(free_port())
    }

    /// Starts one on `port`.
    pub fn start_on(port: u16) -> PrivateRedis {
        let mut redis = PrivateRedis { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server on its port and waits until it answers `PING`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): install Redis (apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "the private redis-server on port {} does not answer",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// SIGKILL: everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An example binary next to the running test's: `target/<profile>/deps/<test>` →
/// `target/<profile>/examples/<name>` (scripts/test.sh builds the examples first).
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --example {name}` first (scripts/test.sh does)",
        binary.display()
    );
    binary
}

/// The body of `GET path` on 127.0.0.1:`port` (empty when nothing answers).
pub fn http_get(port: u16, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

/// The name libtest knows a test of this binary by, for re-running this test binary as a
/// child that runs only `test` (`--exact`): `module_path` is the test's `module_path!()`,
/// whose first segment (the binary's crate) libtest leaves out.
pub fn test_name(module_path: &str, test: &str) -> String {
    match module_path.split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_owned(),
    }
}

/// A message with a key, a version (stale drop) and an id (dedup): the policies' tests'.
#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "policies", key = key, version = version, id = id)]
pub struct Update {
    pub key: String,
    pub version: i64,
    pub id: String,
}

pub fn update(key: &str, version: i64, id: &str) -> Update {
    Update {
        key: key.to_owned(),
        version,
        id: id.to_owned(),
    }
}

/// Key and JSON payload of a record carrying `u`.
pub fn record(u: &Update) -> (Vec<u8>, Vec<u8>) {
    (
        u.key.as_bytes().to_vec(),
        serde_json::to_vec(u).expect("encodes"),
    )
}

/// A worker of `group` over `topic` committing every 100 ms, without retries.
pub fn worker(bootstrap: &str, topic: &str, group: &str) -> steadfast::WorkerBuilder {
    steadfast::Worker::builder()
        .brokers(bootstrap)
        .topic(topic)
        .group(group)
        .commit_interval(Duration::from_millis(100))
        .retry(steadfast::Retry::none())
}

/// A worker running in a task until stopped.
pub struct Running {
    token: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<steadfast::WorkerStats>,
}

/// Builds the worker and runs it in a task.
pub fn spawn<H: Handler>(builder: steadfast::WorkerBuilder<H>) -> Running {
    let token = tokio_util::sync::CancellationToken::new();
    let w = builder.build().expect("valid worker");
    let t = token.clone();
    let handle = tokio::spawn(async move { w.run(t).await.expect("worker runs") });
    Running { token, handle }
}

impl Running {
    /// Stops the worker (a graceful shutdown) and returns its counts.
    pub async fn stop(self) -> steadfast::WorkerStats {
        self.token.cancel();
        self.handle.await.expect("worker task")
    }
}

/// Logs the runtime's tracing to stderr when `RUST_LOG` is set (a diagnostic).
pub fn init_tracing() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The seed of a randomized test: `var`'s value when set (a replay), else a random one;
/// printed as "`what` seed N (replay with `var`=N)".
pub fn seed(var: &str, what: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{what} seed {seed} (replay with {var}={seed})");
    seed
}
