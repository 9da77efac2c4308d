//! Retry tiers under strict ordering, against the in-process server with the real rdkafka
//! client and real Redis: the wedge once seen (keys parked for tier records filling the
//! in-flight bound) drains at the smallest bounds; a key whose record went to a tier keeps
//! its order (nothing is dropped as stale for being overtaken) also when another worker takes
//! the partition over while it waits; two groups on one topic never see each other's retries.

use crate::support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use steadfast::{Context, Handler, HandlerError, Retry, Worker, WorkerBuilder};
use support::*;

/// A versioned update of a key; `fail` transient failures before it succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "tiers", key = key, version = version, id = id)]
struct Txn {
    key: String,
    version: i64,
    id: String,
    #[serde(default)]
    fail: u32,
}

fn txn(key: &str, version: i64, fail: u32) -> Txn {
    Txn {
        key: key.to_owned(),
        version,
        id: format!("{key}-{version}"),
        fail,
    }
}

/// What the handlers of one test saw: applied versions per key in the order applied, and
/// every call's topic.
#[derive(Debug, Default)]
struct Ledger {
    applied: HashMap<String, Vec<i64>>,
    attempts: HashMap<String, u32>,
    topics: Vec<String>,
}

/// Applies updates; fails each one `fail` times first, unless `ignore_fail`.
#[derive(Clone)]
struct Applier {
    ledger: Arc<Mutex<Ledger>>,
    ignore_fail: bool,
}

impl Applier {
    fn new() -> Self {
        Applier {
            ledger: Arc::default(),
            ignore_fail: false,
        }
    }

    fn applied(&self, key: &str) -> Vec<i64> {
        self.ledger
            .lock()
            .applied
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn total(&self) -> usize {
        self.ledger.lock().applied.values().map(Vec::len).sum()
    }
}

impl Handler for Applier {
    type Message = Txn;
    const GROUP: &'static str = "tiers";

    fn handle_message(
        &self,
        t: Txn,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let ledger = self.ledger.clone();
        let topic = cx.topic().to_owned();
        let ignore_fail = self.ignore_fail;
        async move {
            let mut l = ledger.lock();
            l.topics.push(topic);
            let attempts = l.attempts.entry(t.id.clone()).or_default();
            *attempts += 1;
            if !ignore_fail && *attempts <= t.fail {
                return Err(HandlerError::transient(format!(
                    "{} fails at attempt {attempts}",
                    t.id
                )));
            }
            l.applied.entry(t.key.clone()).or_default().push(t.version);
            Ok(())
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    server: steadfast::server::ServerHandle,
    bootstrap: String,
    topic: String,
    group: String,
    prefix: String,
}

async fn setup(name: &str, partitions: i32) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, name, partitions).await;
    Setup {
        _dir: dir,
        server,
        bootstrap,
        topic,
        group,
        prefix: fresh_prefix(),
    }
}

/// A worker of `s` with stale drop in Redis, one in-place attempt and one tier of `tier`.
fn worker(s: &Setup, tier: Duration) -> WorkerBuilder {
    Worker::builder()
        .brokers(s.bootstrap.clone())
        .topic(s.topic.clone())
        .group(s.group.clone())
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::exponential(1, Duration::ZERO, Duration::ZERO))
        .retry_topics([tier])
        .stale_drop("redis://127.0.0.1:6379")
        .store_key_prefix(s.prefix.clone())
        .kafka_property("partition.assignment.strategy", "range")
}

async fn send(s: &Setup, txns: &[Txn]) {
    produce_raw(&s.bootstrap, &s.topic, &json_records(txns)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_parked_for_tier_records_filling_the_smallest_bounds_drain() {
    // Concurrency 1, the in-flight bound at its minimum (1), one record per key lane: every
    // key's first update fails once and goes to the tier, its later updates park behind it.
    let s = setup("wedge", 1).await;
    let keys: Vec<String> = (0..12).map(|k| format!("k{k}")).collect();
    let mut txns = Vec::new();
    for version in 1..=4 {
        for key in &keys {
            txns.push(txn(key, version, u32::from(version == 1)));
        }
    }
    send(&s, &txns).await;
    let applier = Applier::new();
    let running = spawn(
        worker(&s, Duration::from_millis(300))
            .concurrency(1)
            .max_in_flight(1)
            .max_per_key(1)
            .handler(applier.clone()),
    );
    eventually(Duration::from_secs(60), "every update applied", || {
        applier.total() == txns.len()
    })
    .await;
    for key in &keys {
        assert_eq!(applier.applied(key), vec![1, 2, 3, 4], "{key} in order");
    }
    let stats = running.stop().await;
    assert_eq!(stats.routed_to_tier, keys.len() as u64, "{stats:?}");
    assert_eq!(
        stats.dropped_stale, 0,
        "nothing dropped as stale: {stats:?}"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_that_fails_once_and_its_eight_successors_apply_in_order_at_concurrency_one() {
    // The reproduction once seen: v4 fails once (to the tier), v5..v12 follow; before, none
    // ran until the park limit and then v4 was dropped as stale.
    let s = setup("nine", 1).await;
    let mut txns = vec![txn("k", 4, 1)];
    txns.extend((5..=12).map(|v| txn("k", v, 0)));
    send(&s, &txns).await;
    let applier = Applier::new();
    let running = spawn(
        worker(&s, Duration::from_secs(1))
            .concurrency(1)
            .handler(applier.clone()),
    );
    eventually(Duration::from_secs(30), "all nine applied", || {
        applier.applied("k").len() == 9
    })
    .await;
    assert_eq!(applier.applied("k"), (4..=12).collect::<Vec<i64>>());
    let stats = running.stop().await;
    assert_eq!(
        (stats.routed_to_tier, stats.dropped_stale),
        (1, 0),
        "{stats:?}"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_owner_keeps_a_parked_keys_order_and_applies_its_tier_record() {
    // Worker A routes v1 to a long tier and holds v2, v3 parked; it stops before the tier
    // record is due. Worker B takes the partitions over: it must learn from the tier that k
    // waits, run the tier's v1 first, then v2 and v3 (with stale drop on, running v2 first
    // would have lost v1).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let s = setup("handover", 1).await;
    send(
        &s,
        &[
            txn("k", 1, 1),
            txn("k", 2, 0),
            txn("k", 3, 0),
            txn("x", 1, 0),
        ],
    )
    .await;
    let a = Applier::new();
    let running = spawn(
        worker(&s, Duration::from_secs(4))
            .drain_timeout(Duration::from_secs(1))
            .handler(a.clone()),
    );
    eventually(Duration::from_secs(30), "x applied while k waits", || {
        a.applied("x") == vec![1]
    })
    .await;
    eventually(Duration::from_secs(10), "k's copy in the tier", || {
        log_end(&s.bootstrap, &format!("{}.{}.retry.1", s.topic, s.group)) == 1
    })
    .await;
    let stats = running.stop().await;
    assert!(
        a.applied("k").is_empty(),
        "k waited for its tier record: {stats:?}"
    );

    // B's handler lets v1 succeed at its retry.
    let b = Applier {
        ignore_fail: true,
        ..Applier::new()
    };
    let running = spawn(worker(&s, Duration::from_secs(4)).handler(b.clone()));
    eventually(Duration::from_secs(30), "k's three updates", || {
        b.applied("k").len() == 3
    })
    .await;
    assert_eq!(b.applied("k"), vec![1, 2, 3], "the tier record first");
    assert!(b.applied("x").is_empty(), "x was committed by A");
    let stats = running.stop().await;
    assert_eq!(stats.dropped_stale, 0, "{stats:?}");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_groups_on_one_topic_each_handle_only_their_own_retries() {
    let s = setup("groups", 1).await;
    // Group A's handler fails v1 once, so v1 goes through A's tier; group B's never fails.
    send(&s, &[txn("k", 1, 1), txn("k", 2, 0)]).await;
    let a = Applier::new();
    let b = Applier {
        ignore_fail: true,
        ..Applier::new()
    };
    let group_b = format!("{}-b", s.group);
    let run_a = spawn(worker(&s, Duration::from_millis(300)).handler(a.clone()));
    let run_b = spawn(
        worker(&s, Duration::from_millis(300))
            .group(group_b.clone())
            .handler(b.clone()),
    );
    eventually(Duration::from_secs(30), "both groups applied both", || {
        a.applied("k").len() == 2 && b.applied("k").len() == 2
    })
    .await;
    assert_eq!(a.applied("k"), vec![1, 2]);
    assert_eq!(b.applied("k"), vec![1, 2]);
    let tier_a = format!("{}.{}.retry.1", s.topic, s.group);
    let tier_b = format!("{}.{group_b}.retry.1", s.topic);
    assert_eq!(log_end(&s.bootstrap, &tier_a), 1, "A's retry in A's tier");
    assert_eq!(log_end(&s.bootstrap, &tier_b), 0, "B routed nothing");
    let b_topics = b.ledger.lock().topics.clone();
    assert!(
        b_topics.iter().all(|t| *t == s.topic),
        "B ran only records of the topic: {b_topics:?}"
    );
    let a_topics = a.ledger.lock().topics.clone();
    assert_eq!(
        a_topics.iter().filter(|t| **t == tier_a).count(),
        1,
        "A ran its own retry once: {a_topics:?}"
    );
    let (stats_a, stats_b) = (run_a.stop().await, run_b.stop().await);
    assert_eq!((stats_a.routed_to_tier, stats_b.routed_to_tier), (1, 0));
    s.server.shutdown().await;
}

/// Strict order's promise that other keys never wait for a parked key: a key whose record
/// sits in a tier and whose later records fill its lane (`max_per_key`, at its smallest
/// useful value) does not hold back the other keys of its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_keys_flow_while_a_parked_key_fills_its_lane() {
    let s = setup("full-lane", 1).await;
    let mut txns = vec![txn("k", 1, 1)];
    txns.extend((2..=8).map(|v| txn("k", v, 0)));
    let others: Vec<String> = (0..20).map(|i| format!("x{i}")).collect();
    txns.extend(others.iter().map(|key| txn(key, 1, 0)));
    send(&s, &txns).await;
    let applier = Applier::new();
    let tier = Duration::from_secs(4);
    let running = spawn(worker(&s, tier).max_per_key(2).handler(applier.clone()));
    eventually(Duration::from_secs(30), "the other keys applied", || {
        others.iter().all(|key| applier.applied(key) == [1])
    })
    .await;
    assert!(
        applier.applied("k").is_empty(),
        "the other keys waited until k's tier record ran: k applied {:?} first",
        applier.applied("k")
    );
    eventually(Duration::from_secs(30), "k applied", || {
        applier.applied("k").len() == 8
    })
    .await;
    assert_eq!(
        applier.applied("k"),
        (1..=8).collect::<Vec<i64>>(),
        "k in order"
    );
    let stats = running.stop().await;
    assert_eq!(
        (stats.routed_to_tier, stats.dropped_stale),
        (1, 0),
        "{stats:?}"
    );
    s.server.shutdown().await;
}
