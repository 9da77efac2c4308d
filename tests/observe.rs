//! The worker's HTTP endpoint, through a real worker (rdkafka against the embedded server) and
//! real HTTP: `/metrics` parsed with a Prometheus text parser agrees with what the handler saw,
//! in the middle of a run and at its end; `/readyz` turns not ready when a handler hangs
//! past the stall limit and ready again once it returns; an unreachable store is a reason.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use steadfast::{Context, HandlerError, Retry, Worker, WorkerBuilder, WorkerStats};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A keyed, versioned update with an id.
#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "observe", key = key, version = version, id = id)]
pub(crate) struct Update {
    key: String,
    version: i64,
    id: String,
    /// Fail permanently.
    #[serde(default)]
    fail: bool,
    /// Wait for the gate before finishing.
    #[serde(default)]
    gated: bool,
}

/// What the handler saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) calls: AtomicU64,
    pub(crate) successes: AtomicU64,
    failures: AtomicU64,
    applied: Mutex<HashMap<String, u32>>,
}

#[derive(steadfast::Handler)]
#[handler(message = Update, group = "observe")]
pub(crate) struct Recording {
    pub(crate) seen: Arc<Seen>,
    /// Gated messages wait until this is `true`.
    pub(crate) gate: watch::Receiver<bool>,
}

impl Recording {
    async fn handle(&self, u: Update, _cx: &Context) -> Result<(), HandlerError> {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        if u.fail {
            self.seen.failures.fetch_add(1, Ordering::SeqCst);
            return Err(HandlerError::permanent("bad update"));
        }
        if u.gated {
            let mut gate = self.gate.clone();
            gate.wait_for(|open| *open)
                .await
                .map_err(|_| HandlerError::transient("gate dropped"))?;
        }
        *self.seen.applied.lock().entry(u.id.clone()).or_default() += 1;
        self.seen.successes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// An update that succeeds at once.
pub(crate) fn plain(key: &str, version: i64, id: &str) -> Update {
    Update {
        key: key.to_owned(),
        version,
        id: id.to_owned(),
        fail: false,
        gated: false,
    }
}

/// Waits until the handler succeeded `n` times and `/readyz` answers 200.
pub(crate) async fn handled_and_ready(
    seen: &Arc<Seen>,
    address: SocketAddr,
    n: u64,
    limit: Duration,
) {
    until(limit, &format!("{n} handled and ready"), || {
        let seen = seen.clone();
        async move {
            (seen.successes.load(Ordering::SeqCst) == n && get(address, "/readyz").await.0 == 200)
                .then_some(())
        }
    })
    .await;
}

fn record(u: &Update) -> (Vec<u8>, Vec<u8>) {
    (
        u.key.as_bytes().to_vec(),
        serde_json::to_vec(u).expect("encodes"),
    )
}

/// Produces `updates` to partition 0 in order.
pub(crate) async fn send(bootstrap: &str, topic: &str, updates: &[Update]) {
    let records: Vec<_> = updates.iter().map(record).collect();
    produce_raw(bootstrap, topic, &records).await;
}

/// `GET path` over plain HTTP/1.1: status and body.
pub(crate) async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("the endpoint accepts connections");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response");
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    // Bodies come chunked or with a length; rebuild a chunked one.
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            out.push_str(&tail[..size]);
            rest = &tail[size + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// The samples of one scrape, summed by metric name and the given label values.
pub(crate) struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    pub(crate) async fn take(address: SocketAddr) -> Scrape {
        let (status, body) = get(address, "/metrics").await;
        assert_eq!(status, 200, "/metrics answers: {body}");
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("Prometheus text format"))
    }

    /// The sum of `name`'s samples whose labels include every pair of `labels`.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// The observation count of histogram `name` with `labels` (its `_count` sample).
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(&format!("{name}_count"), labels)
    }
}

/// Every count of one scrape the identity needs, for `topic`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    consumed: f64,
    handled: f64,
    dead_lettered: f64,
    dropped: f64,
    stale: f64,
    duplicate: f64,
    in_flight: f64,
}

impl Counts {
    fn of(scrape: &Scrape, group: &str, topic: &str) -> Counts {
        let outcome = |o: &str| {
            scrape.value(
                "steadfast_messages_total",
                &[("group", group), ("topic", topic), ("outcome", o)],
            )
        };
        let dropped = |r: &str| {
            scrape.value(
                "steadfast_messages_dropped_total",
                &[("group", group), ("topic", topic), ("reason", r)],
            )
        };
        Counts {
            consumed: scrape.value(
                "steadfast_messages_consumed_total",
                &[("group", group), ("topic", topic)],
            ),
            handled: outcome("handled"),
            dead_lettered: outcome("dead_lettered"),
            dropped: outcome("dropped"),
            stale: dropped("stale"),
            duplicate: dropped("duplicate"),
            in_flight: scrape.value("steadfast_in_flight_messages", &[("group", group)]),
        }
    }

    fn finished(&self) -> f64 {
        self.handled + self.dead_lettered + self.dropped
    }
}

/// A worker running in a task, with the address of its endpoint.
pub(crate) struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<WorkerStats>,
    pub(crate) address: SocketAddr,
}

pub(crate) fn spawn<H: steadfast::Handler>(builder: WorkerBuilder<H>) -> Running {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = listener.local_addr().expect("bound");
    let worker = builder
        .observe_listener(listener)
        .build()
        .expect("valid worker");
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move { worker.run(t).await.expect("worker runs") });
    Running {
        token,
        handle,
        address,
    }
}

impl Running {
    pub(crate) async fn stop(self) -> WorkerStats {
        self.token.cancel();
        self.handle.await.expect("worker task")
    }
}

/// A worker builder for `topic` in `group`.
pub(crate) fn worker(bootstrap: &str, topic: &str, group: &str) -> WorkerBuilder {
    Worker::builder()
        .brokers(bootstrap)
        .topic(topic)
        .group(group)
}

pub(crate) async fn server() -> (tempfile::TempDir, steadfast::server::ServerHandle, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let handle = steadfast_testkit::start_server(&dir.path().join("data")).await;
    let bootstrap = handle.bootstrap_servers();
    (dir, handle, bootstrap)
}

/// Polls `check` every 100 ms until it gives `Some`, failing after `limit`.
pub(crate) async fn until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_agree_with_what_the_handler_saw_mid_run_and_at_the_end() {
    let (_dir, _server, bootstrap) = server().await;
    let (topic, group) = topic_and_group(&bootstrap, "observe-metrics", 4).await;

    // 1,000 updates of 100 keys: every 10th fails permanently, 40 are gated (they wait for
    // the gate, holding their keys), then 150 redeliveries of applied ids with newer versions
    // (duplicates by id) and 50 older versions of keys already applied (stale).
    let mut updates = Vec::new();
    for i in 0..1_000 {
        updates.push(Update {
            key: format!("k{}", i % 100),
            version: 10 + i64::from(i / 100) * 10,
            id: format!("u{i}"),
            fail: i % 10 == 3,
            gated: i % 25 == 7,
        });
    }
    let originals = updates.clone();
    for (j, u) in originals
        .iter()
        .filter(|u| !u.fail && !u.gated)
        .take(150)
        .enumerate()
    {
        let mut again = u.clone();
        // Newer than every version of its key, so only its id makes it a duplicate.
        again.version = 10_000 + j as i64;
        updates.push(again);
    }
    // Keys k3, k13, … only ever failed: nothing of them was applied, nothing is stale.
    for k in (0..100).filter(|k| k % 10 != 3).take(50) {
        updates.push(plain(&format!("k{k}"), 1, &format!("old{k}")));
    }
    let total = updates.len() as f64;
    let records: Vec<_> = updates.iter().map(record).collect();
    produce_to(&bootstrap, &topic, &records, None).await;

    let seen = Arc::new(Seen::default());
    let (open_gate, gate) = watch::channel(false);
    let running = spawn(
        worker(&bootstrap, &topic, &group)
            .commit_interval(Duration::from_millis(100))
            .retry(Retry::none())
            .lag_interval(Duration::from_millis(200))
            .dedup("memory")
            .stale_drop("memory")
            .handler(Recording {
                seen: seen.clone(),
                gate,
            }),
    );

    // Mid-run: the gated messages hold their keys, so the run cannot finish; once the counts
    // stop moving, every consumed message is finished or in flight, and the finished ones
    // match what the handler reported.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<Counts> = None;
    let mid = loop {
        let counts = Counts::of(&Scrape::take(running.address).await, &group, &topic);
        let settled = last == Some(counts)
            && counts.in_flight > 0.0
            && counts.handled == seen.successes.load(Ordering::SeqCst) as f64
            && counts.dead_lettered == seen.failures.load(Ordering::SeqCst) as f64;
        if settled {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "no settled mid-run scrape; last {counts:?}"
        );
        last = Some(counts);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        mid.finished() < total,
        "mid-run: not everything finished: {mid:?}"
    );
    assert_eq!(
        mid.consumed,
        mid.finished() + mid.in_flight,
        "mid-run: consumed = handled + dead-lettered + dropped + in flight: {mid:?}"
    );
    assert_eq!(mid.dropped, mid.stale + mid.duplicate, "{mid:?}");
    // The gated messages hold their partitions' commits back: lag shows.
    let lag = |scrape: &Scrape, group: &str| {
        (0..4)
            .map(|p| {
                let p = p.to_string();
                scrape.value(
                    "steadfast_consumer_lag_messages",
                    &[("group", group), ("partition", p.as_str())],
                )
            })
            .sum::<f64>()
    };
    until(Duration::from_secs(20), "lag reported mid-run", || {
        let (address, group) = (running.address, group.clone());
        async move { (lag(&Scrape::take(address).await, &group) > 0.0).then_some(()) }
    })
    .await;

    // Open the gate: the run finishes.
    open_gate.send(true).expect("gate");
    let end = until(Duration::from_secs(60), "every message finished", || {
        let (address, group, topic) = (running.address, group.clone(), topic.clone());
        async move {
            let counts = Counts::of(&Scrape::take(address).await, &group, &topic);
            (counts.finished() == total && counts.in_flight == 0.0).then_some(counts)
        }
    })
    .await;
    until(
        Duration::from_secs(20),
        "no lag once all is committed",
        || {
            let (address, group) = (running.address, group.clone());
            async move { (lag(&Scrape::take(address).await, &group) == 0.0).then_some(()) }
        },
    )
    .await;
    let scrape = Scrape::take(running.address).await;
    let stats = running.stop().await;

    let successes = seen.successes.load(Ordering::SeqCst) as f64;
    let failures = seen.failures.load(Ordering::SeqCst) as f64;
    assert_eq!(end.consumed, total, "{end:?}");
    assert_eq!(end.handled, successes, "handled = the handler's successes");
    assert_eq!(end.dead_lettered, failures, "dead-lettered = its failures");
    assert_eq!(end.dead_lettered, 100.0);
    assert_eq!(end.duplicate, 150.0, "{end:?}");
    assert_eq!(end.stale, 50.0, "{end:?}");
    assert_eq!(
        seen.applied.lock().values().filter(|n| **n > 1).count(),
        0,
        "no id applied twice"
    );
    assert_eq!(
        scrape.histogram_count(
            "steadfast_handler_duration_seconds",
            &[("group", &group), ("topic", &topic)]
        ),
        seen.calls.load(Ordering::SeqCst) as f64,
        "one duration per handler call"
    );
    assert_eq!(
        scrape.value("steadfast_assigned_partitions", &[("group", &group)]),
        4.0
    );
    assert!(
        scrape.value(
            "steadfast_rebalances_total",
            &[("group", &group), ("kind", "assign")]
        ) >= 1.0
    );
    assert_eq!(
        (
            stats.handled as f64,
            stats.dead_lettered as f64,
            stats.dropped as f64
        ),
        (end.handled, end.dead_lettered, end.dropped),
        "the worker's own stats agree"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_reports_a_hung_handler_after_the_stall_limit_and_recovers() {
    let (_dir, _server, bootstrap) = server().await;
    let (topic, group) = topic_and_group(&bootstrap, "observe-stall", 1).await;
    let stall_after = Duration::from_secs(3);

    let seen = Arc::new(Seen::default());
    let (open_gate, gate) = watch::channel(false);
    let running = spawn(
        worker(&bootstrap, &topic, &group)
            .handler_timeout(Duration::from_secs(600))
            .stall_after(stall_after)
            .lag_interval(Duration::from_millis(500))
            .handler(Recording {
                seen: seen.clone(),
                gate,
            }),
    );
    let address = running.address;
    let (live, _) = get(address, "/healthz").await;
    assert_eq!(live, 200);
    until(
        Duration::from_secs(30),
        "ready once assigned",
        || async move { (get(address, "/readyz").await.0 == 200).then_some(()) },
    )
    .await;

    // Handled and idle for longer than the stall limit: ready.
    let flowing: Vec<_> = (0..5)
        .map(|i| plain("a", i + 1, &format!("f{i}")))
        .collect();
    send(&bootstrap, &topic, &flowing).await;
    until(
        Duration::from_secs(30),
        "the first messages handled",
        || {
            let seen = seen.clone();
            async move { (seen.successes.load(Ordering::SeqCst) == 5).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(stall_after + Duration::from_secs(1)).await;
    let (status, body) = get(address, "/readyz").await;
    assert_eq!(status, 200, "an idle worker is not stalled: {body}");

    // One message hangs.
    let hung = Update {
        key: "a".into(),
        version: 100,
        id: "hung".into(),
        fail: false,
        gated: true,
    };
    send(&bootstrap, &topic, &[hung]).await;
    until(Duration::from_secs(30), "the hung message started", || {
        let seen = seen.clone();
        async move { (seen.calls.load(Ordering::SeqCst) == 6).then_some(()) }
    })
    .await;
    let started = Instant::now();
    // Other keys keep flowing: the worker is busy, the partition's commit still waits.
    let others: Vec<_> = (0..20)
        .map(|i| plain(&format!("other{i}"), 1, &format!("o{i}")))
        .collect();
    send(&bootstrap, &topic, &others).await;
    until(Duration::from_secs(30), "the other keys handled", || {
        let seen = seen.clone();
        async move { (seen.successes.load(Ordering::SeqCst) == 25).then_some(()) }
    })
    .await;
    let (status, body) = until(
        Duration::from_secs(30),
        "/readyz not ready",
        || async move {
            let (status, body) = get(address, "/readyz").await;
            (status == 503).then_some((status, body))
        },
    )
    .await;
    // Noticed (the wait above has a deadline, not a pass mark on how soon: on a loaded machine
    // the probe and the handlers run late), and not before the stall limit had passed.
    let noticed = started.elapsed();
    println!("stall noticed after {noticed:?} (limit {stall_after:?})");
    assert!(
        noticed + Duration::from_millis(200) >= stall_after,
        "not before the stall limit: after {noticed:?}"
    );
    assert_eq!(status, 503);
    let reply: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(reply["ready"], false);
    let reason = reply["reasons"][0].as_str().expect("a reason");
    assert!(
        reason.contains(&format!("{topic}-0 stalled: offset 5 unfinished")),
        "{reason}"
    );
    let scrape = Scrape::take(address).await;
    assert_eq!(scrape.value("steadfast_ready", &[("group", &group)]), 0.0);

    // Unblock: ready again.
    open_gate.send(true).expect("gate");
    until(
        Duration::from_secs(30),
        "/readyz ready again",
        || async move { (get(address, "/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    let stats = running.stop().await;
    assert_eq!(stats.handled, 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_names_an_unreachable_store() {
    let (_dir, _server, bootstrap) = server().await;
    let (topic, group) = topic_and_group(&bootstrap, "observe-store", 1).await;
    let mut redis = PrivateRedis::start();

    let seen = Arc::new(Seen::default());
    let (_open_gate, gate) = watch::channel(true);
    let running = spawn(
        worker(&bootstrap, &topic, &group)
            .dedup(redis.url())
            .store_key_prefix(fresh_prefix())
            .handler(Recording {
                seen: seen.clone(),
                gate,
            }),
    );
    let address = running.address;
    let first = plain("a", 1, "first");
    send(&bootstrap, &topic, &[first]).await;
    handled_and_ready(&seen, address, 1, Duration::from_secs(30)).await;

    redis.kill();
    let second = plain("a", 2, "second");
    send(&bootstrap, &topic, &[second]).await;
    let body = until(
        Duration::from_secs(30),
        "/readyz naming redis",
        || async move {
            let (status, body) = get(address, "/readyz").await;
            (status == 503 && body.contains("dedup store (redis) unreachable")).then_some(body)
        },
    )
    .await;
    assert!(body.contains("\"ready\":false"), "{body}");

    // Back (empty): the waiting message goes through and the worker is ready again.
    tokio::task::block_in_place(|| redis.restart());
    handled_and_ready(&seen, address, 2, Duration::from_secs(60)).await;
    let stats = running.stop().await;
    assert_eq!(stats.dead_lettered, 0, "an outage dead-letters nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_names_an_unreachable_broker_and_recovers_when_it_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let server = steadfast_testkit::start_server(&data).await;
    let address = server.local_addr();
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "observe-broker", 1).await;

    let seen = Arc::new(Seen::default());
    let (_open_gate, gate) = watch::channel(true);
    let running = spawn(
        worker(&bootstrap, &topic, &group)
            .lag_interval(Duration::from_millis(500))
            .handler(Recording {
                seen: seen.clone(),
                gate,
            }),
    );
    let endpoint = running.address;
    until(
        Duration::from_secs(30),
        "ready once assigned",
        || async move { (get(endpoint, "/readyz").await.0 == 200).then_some(()) },
    )
    .await;

    server.shutdown().await;
    let body = until(
        Duration::from_secs(30),
        "/readyz naming the broker",
        || async move {
            let (status, body) = get(endpoint, "/readyz").await;
            (status == 503 && body.contains("broker unreachable")).then_some(body)
        },
    )
    .await;
    assert!(body.contains("\"ready\":false"), "{body}");

    // The same server comes back on the same port and data: ready again.
    let server = steadfast_testkit::server_on(&data)
        .listen(address.to_string())
        .start()
        .await
        .expect("server restarts on its port");
    until(
        Duration::from_secs(60),
        "/readyz ready again",
        || async move { (get(endpoint, "/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    running.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_waiting_for_its_store_at_start_is_live_but_not_ready() {
    let (_dir, _server, bootstrap) = server().await;
    let (topic, group) = topic_and_group(&bootstrap, "observe-start", 1).await;
    let port = free_port();

    let seen = Arc::new(Seen::default());
    let (_open_gate, gate) = watch::channel(true);
    let running = spawn(
        worker(&bootstrap, &topic, &group)
            .dedup(format!("redis://127.0.0.1:{port}"))
            .store_key_prefix(fresh_prefix())
            .handler(Recording {
                seen: seen.clone(),
                gate,
            }),
    );
    let endpoint = running.address;
    let body = until(
        Duration::from_secs(30),
        "/readyz naming redis at start",
        || async move {
            let (status, body) = get(endpoint, "/readyz").await;
            let named = body.contains(&format!("store redis://127.0.0.1:{port} unreachable"));
            (status == 503 && named).then_some(body)
        },
    )
    .await;
    assert!(body.contains("starting"), "{body}");
    assert_eq!(
        get(endpoint, "/healthz").await.0,
        200,
        "live while it waits"
    );

    let _redis = tokio::task::block_in_place(|| PrivateRedis::start_on(port));
    until(
        Duration::from_secs(60),
        "ready once the store answers",
        || async move { (get(endpoint, "/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    running.stop().await;
}

/// Commits an empty transaction per update: steadfast records the update's id and version
/// in it.
#[derive(Debug, Clone, Default)]
struct RecordsInTransaction;

impl steadfast::Handler for RecordsInTransaction {
    type Message = support::Update;
    const GROUP: &'static str = "observe-versions";

    async fn handle_message(
        &self,
        _update: support::Update,
        cx: &Context,
    ) -> Result<(), HandlerError> {
        match cx.transaction().await? {
            Some(tx) => tx.commit().await,
            None => Err(HandlerError::permanent("no transaction for an update")),
        }
    }
}

/// Produces 100 updates (versions 1-5 of 20 keys) to `topic`, waits until the worker
/// serving `address` handled them, then version 3 of each key again under a new id; returns
/// the scrape once every update was handled and every repeat dropped as stale.
async fn updates_then_older_repeats(
    bootstrap: &str,
    topic: &str,
    group: &str,
    address: SocketAddr,
) -> Scrape {
    let updates: Vec<(Vec<u8>, Vec<u8>)> = (1..=5)
        .flat_map(|version| (0..20).map(move |k| (k, version)))
        .map(|(k, version)| {
            support::record(&support::update(
                &format!("k{k}"),
                version,
                &format!("u{k}-{version}"),
            ))
        })
        .collect();
    produce_keyed(bootstrap, topic, &updates, 50).await;
    until(Duration::from_secs(60), "100 updates handled", || async {
        let counts = Counts::of(&Scrape::take(address).await, group, topic);
        (counts.handled >= 100.0).then_some(())
    })
    .await;
    let repeats: Vec<(Vec<u8>, Vec<u8>)> = (0..20)
        .map(|k| support::record(&support::update(&format!("k{k}"), 3, &format!("again-{k}"))))
        .collect();
    produce_keyed(bootstrap, topic, &repeats, 50).await;
    let scrape = until(Duration::from_secs(60), "20 repeats dropped", || async {
        let scrape = Scrape::take(address).await;
        let counts = Counts::of(&scrape, group, topic);
        (counts.stale + counts.handled >= 120.0).then_some(scrape)
    })
    .await;
    let counts = Counts::of(&scrape, group, topic);
    assert_eq!(
        (counts.handled, counts.stale),
        (100.0, 20.0),
        "every update handled, every older version dropped as stale"
    );
    scrape
}

/// Runs [`RecordsInTransaction`] with the stale check's versions at `versions` and the
/// transactions at [`POSTGRES_URL`], in one fresh schema: 100 updates (versions 1-5 of 20
/// keys), then version 3 of each key again under a new id. Returns the worker's
/// `version_advance` calls, after checking that every update was handled and every repeat
/// dropped as stale (so the versions the handler's transactions recorded are the ones the
/// stale check reads).
async fn version_advances_with_versions_at(versions: &str) -> f64 {
    let (_dir, _server, bootstrap) = server().await;
    let (topic, group) = topic_and_group(&bootstrap, "observe-versions", 2).await;
    let schema = fresh_schema();
    let running = spawn(
        worker(&bootstrap, &topic, &group)
            .commit_interval(Duration::from_millis(100))
            .store_schema(&schema)
            .stale_drop(versions)
            .transactions(POSTGRES_URL)
            .handler(RecordsInTransaction),
    );
    let scrape = updates_then_older_repeats(&bootstrap, &topic, &group, running.address).await;
    assert!(
        scrape.histogram_count(
            steadfast::observe::metrics::STORE_CALL,
            &[("call", "version_get")]
        ) >= 120.0,
        "the stale check read every version"
    );
    let advances = scrape.histogram_count(
        steadfast::observe::metrics::STORE_CALL,
        &[("call", "version_advance")],
    );
    running.stop().await;
    advances
}

/// The stale check's versions in the transactions' Postgres (one URL): a version the
/// handler's committed transaction recorded is not written again after it (no
/// `version_advance` call, a commit less per message), and is what the stale check reads.
/// The same Postgres under another URL is another store to the worker: there every handled
/// message's version is advanced after its transaction, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_a_handlers_transaction_recorded_are_not_advanced_again_in_the_same_store() {
    assert_eq!(
        version_advances_with_versions_at(POSTGRES_URL).await,
        0.0,
        "versions in the transactions' store: no advance after the transaction"
    );
    let elsewhere = POSTGRES_URL.replace("127.0.0.1", "localhost");
    assert!(
        version_advances_with_versions_at(&elsewhere).await >= 100.0,
        "versions in another store: one advance per handled update"
    );
}

/// Handles every update (nothing else).
#[derive(Debug, Clone, Default)]
struct Accepts;

impl steadfast::Handler for Accepts {
    type Message = support::Update;
    const GROUP: &'static str = "observe-version-reads";

    async fn handle_message(
        &self,
        _update: support::Update,
        _cx: &Context,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Runs [`Accepts`] with stale drop and the key lock in memory (and a breaker when
/// `breaker`): 100 updates (versions 1-5 of 20 keys), then version 3 of each key again.
/// Returns the worker's `version_get` calls, after checking that every update was handled
/// and every repeat dropped as stale.
async fn version_reads_with_the_key_lock(breaker: bool) -> f64 {
    let (_dir, _server, bootstrap) = server().await;
    let (topic, group) = topic_and_group(&bootstrap, "observe-version-reads", 2).await;
    let mut builder = worker(&bootstrap, &topic, &group)
        .commit_interval(Duration::from_millis(100))
        .stale_drop("memory")
        .key_lock("memory", Duration::from_secs(10));
    if breaker {
        builder = builder.breaker(steadfast::config::BreakerConfig::default());
    }
    let running = spawn(builder.handler(Accepts));
    let address = running.address;
    // The histogram is the process's, without a group label: another worker's reads count
    // in it too.
    let reads = |scrape: &Scrape| {
        scrape.histogram_count(
            steadfast::observe::metrics::STORE_CALL,
            &[("call", "version_get")],
        )
    };
    let before = reads(&Scrape::take(address).await);
    let scrape = updates_then_older_repeats(&bootstrap, &topic, &group, address).await;
    running.stop().await;
    reads(&scrape) - before
}

/// With the key lock on, the version is read once a message, under the lock (the lock's
/// check decides; no check before it): 120 reads for 120 messages. With a breaker between
/// the two, the check before the breaker stays (a stale message is dropped without waiting
/// for it), so a handled message is read twice and a stale one once: 220.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_key_lock_the_stale_check_reads_a_messages_version_once() {
    assert_eq!(
        version_reads_with_the_key_lock(false).await,
        120.0,
        "one version read a message, under the lock"
    );
    assert_eq!(
        version_reads_with_the_key_lock(true).await,
        220.0,
        "with a breaker: before it, and again under the lock for the handled ones"
    );
}
