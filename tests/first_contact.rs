//! What a new user trips over first, through a real worker (rdkafka against the embedded
//! server): refused store credentials end the start at once with the reason, an unreachable
//! broker is named in the error, a shutdown while a store is unreachable at start ends
//! cleanly, the reference's `[kafka]` example makes no client warn, and a redelivered
//! duplicate with stale drop on counts as a duplicate.

use crate::support;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use steadfast::store::StoreError;
use steadfast::{Context, HandlerError, Retry, Worker, WorkerBuilder, WorkerError};
use support::*;
use tokio_util::sync::CancellationToken;

/// The message of these tests: a key, a version (stale drop) and an id (dedup).
#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "first-contact", key = key, version = version, id = id)]
struct Update {
    key: String,
    version: i64,
    id: String,
}

/// Key and JSON payload of a record carrying this update.
fn record(key: &str, version: i64, id: &str) -> (Vec<u8>, Vec<u8>) {
    let update = Update {
        key: key.to_owned(),
        version,
        id: id.to_owned(),
    };
    (
        key.as_bytes().to_vec(),
        serde_json::to_vec(&update).expect("encodes"),
    )
}

/// A handler that succeeds.
#[derive(Debug, Clone, steadfast::Handler)]
#[handler(message = Update, group = "first-contact")]
struct Accept;

impl Accept {
    async fn handle(&self, _update: Update, _cx: &Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn worker(bootstrap: &str, topic: &str, group: &str) -> WorkerBuilder<Accept> {
    Worker::builder()
        .brokers(bootstrap)
        .topic(topic)
        .group(group)
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::none())
        .handler(Accept)
}

/// A private `redis-server` that requires the password `s3cret`, stopped on drop.
struct PasswordRedis {
    child: std::process::Child,
    port: u16,
}

impl PasswordRedis {
    async fn start() -> PasswordRedis {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--requirepass",
                "s3cret",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (the test suite's Redis) is on PATH");
        let redis = PasswordRedis { child, port };
        eventually(
            Duration::from_secs(10),
            "the private Redis to listen",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )
        .await;
        redis
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_store_credentials_end_the_start_with_the_reason() {
    let s = server().await;
    let (topic, group) = topic_and_group(&s.bootstrap, "auth", 1).await;
    let redis = PasswordRedis::start().await;
    let url = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let w = worker(&s.bootstrap, &topic, &group)
        .dedup(url)
        .build()
        .expect("valid worker");
    // An outage would be waited out until the shutdown; refused credentials end the start.
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(w.run(shutdown.clone()));
    let ended = tokio::time::timeout(Duration::from_secs(60), run).await;
    shutdown.cancel();
    let err = ended
        .expect("the start ends without waiting for a shutdown")
        .expect("worker task")
        .expect_err("refused credentials are an error");
    assert!(
        matches!(err, WorkerError::Store(StoreError::Auth { .. })),
        "{err:?}"
    );
    assert!(!err.to_string().contains("wrong"), "no password in {err}");
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_broker_is_named_in_the_error() {
    let refusing = RefusingPort::new();
    let brokers = format!("127.0.0.1:{}", refusing.port);
    let w = worker(&brokers, "orders", "billing")
        .build()
        .expect("valid worker");
    let err = tokio::time::timeout(Duration::from_secs(120), w.run(CancellationToken::new()))
        .await
        .expect("the start gives up on a broker that is not there")
        .expect_err("no broker");
    assert!(
        err.to_string().contains(&brokers),
        "the error names the address tried ({brokers}): {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_while_a_store_is_unreachable_at_start_is_a_clean_stop() {
    let s = server().await;
    let (topic, group) = topic_and_group(&s.bootstrap, "startstop", 1).await;
    let refusing = RefusingPort::new();
    let w = worker(&s.bootstrap, &topic, &group)
        .dedup(format!("redis://127.0.0.1:{}", refusing.port))
        .build()
        .expect("valid worker");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(w.run(shutdown.clone()));
    // The start waits for the store; the shutdown (what SIGTERM does) comes during the wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !run.is_finished(),
        "the start waits for an unreachable store"
    );
    shutdown.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the worker stops")
        .expect("worker task")
        .unwrap_or_else(|e| panic!("a shutdown during start is not a failure: {e}"));
    assert_eq!(stats.handled, 0);
    s.handle.shutdown().await;
}

/// Everything logged at WARN and above, librdkafka's lines included.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_references_kafka_example_makes_no_client_warn() {
    let captured = Captured::default();
    let writer = captured.clone();
    // The `log` records of rdkafka reach this subscriber too; set before any client config.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init()
        .expect("the only subscriber of this test binary");

    let reference = include_str!("../docs/configuration.md");
    let example = reference
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/configuration.md has a ```toml example");
    let kafka = steadfast::WorkerConfig::from_toml(example)
        .expect("the example is valid")
        .kafka;
    assert!(!kafka.is_empty(), "the example sets librdkafka properties");

    let s = server().await;
    let (topic, group) = topic_and_group(&s.bootstrap, "quiet", 1).await;
    let mut builder = worker(&s.bootstrap, &topic, &group).retry_topics([Duration::from_secs(1)]);
    for (name, value) in &kafka {
        builder = builder.kafka_property(name, value);
    }
    let w = builder.build().expect("valid worker");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(w.run(shutdown.clone()));
    produce_raw(&s.bootstrap, &topic, &[record("k", 1, "a")]).await;
    eventually(Duration::from_secs(30), "the record's commit", || {
        committed(&s.bootstrap, &group, &topic).0 == Some(1)
    })
    .await;
    shutdown.cancel();
    run.await.expect("worker task").expect("worker runs");
    s.handle.shutdown().await;

    let log = String::from_utf8_lossy(&captured.0.lock()).into_owned();
    // Only the example's properties: the test's own helper clients are not the worker's.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONFWARN"))
        .filter(|l| kafka.keys().any(|k| l.contains(&format!("property {k} "))))
        .collect();
    assert!(
        warnings.is_empty(),
        "librdkafka warned about the example's properties: {warnings:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_duplicate_with_stale_drop_counts_as_a_duplicate() {
    let s = server().await;
    let (topic, group) = topic_and_group(&s.bootstrap, "redelivered", 1).await;
    // Version 2 twice (the same record delivered again), then version 1 (stale).
    produce_raw(
        &s.bootstrap,
        &topic,
        &[
            record("k", 2, "b"),
            record("k", 2, "b"),
            record("k", 1, "a"),
        ],
    )
    .await;
    let w = worker(&s.bootstrap, &topic, &group)
        .stale_drop("memory")
        .dedup("memory")
        .build()
        .expect("valid worker");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(w.run(shutdown.clone()));
    eventually(Duration::from_secs(30), "the commit past all three", || {
        committed(&s.bootstrap, &group, &topic).0 == Some(3)
    })
    .await;
    shutdown.cancel();
    let stats = run.await.expect("worker task").expect("worker runs");
    assert_eq!(
        (stats.handled, stats.dropped, stats.dropped_stale),
        (1, 2, 1),
        "one handled, the redelivery dropped as a duplicate, version 1 as stale: {stats:?}"
    );
    s.handle.shutdown().await;
}
