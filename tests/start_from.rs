//! `start_from` a time: a new group starts each partition at the first record at or after the
//! time (through the server's time index), and once it committed, its committed offsets win
//! over the time. Records carry explicit timestamps a second apart; the time falls between
//! two of them, drawn from a seed (printed; `START_SEED=S` replays one). `start_from` latest:
//! a new group skips what was there before it, and then goes on from its commits (its retry
//! tiers start at their first record all the same: `ledger_end_to_end`, which can kill a
//! worker before it committed anything).

use crate::support;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use steadfast::{Context, Handler, HandlerError, StartFrom, Worker, WorkerStats};
use support::*;

const PARTITIONS: i32 = 3;

/// Records the ids it handled.
#[derive(Clone, Default)]
struct Ids(Arc<Mutex<Vec<String>>>);

impl Handler for Ids {
    type Message = Update;
    const GROUP: &'static str = "start";

    fn handle_message(
        &self,
        u: Update,
        _cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self.0.lock().push(u.id);
        async { Ok(()) }
    }
}

/// Produces `updates` with the given timestamps (ms), each to its key's partition.
async fn produce_at(bootstrap: &str, topic: &str, updates: &[(Update, i64)]) {
    let producer: FutureProducer = steadfast_testkit::client_config(bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    for (u, at) in updates {
        let (key, payload) = record(u);
        pending.push(
            producer
                .send_result(
                    FutureRecord::to(topic)
                        .key(&key)
                        .payload(&payload)
                        .timestamp(*at),
                )
                .map_err(|(e, _)| e)
                .expect("queued"),
        );
    }
    acknowledged(pending).await;
}

/// Runs a worker of `group` starting from `start` until it handled `count` records in all and
/// every partition it committed is committed at its end (stopping commits the rest); returns
/// the ids it handled.
async fn handle(
    bootstrap: &str,
    topic: &str,
    group: &str,
    start: StartFrom,
    count: usize,
) -> (Vec<String>, WorkerStats) {
    let ids = Ids::default();
    let running = spawn(
        Worker::builder()
            .brokers(bootstrap)
            .topic(topic)
            .group(group)
            .commit_interval(Duration::from_millis(100))
            .start_from(start)
            .handler(ids.clone()),
    );
    eventually_async(
        Duration::from_secs(60),
        "every partition committed at its end",
        || {
            let (bootstrap, topic, group) =
                (bootstrap.to_owned(), topic.to_owned(), group.to_owned());
            let handled = ids.0.lock().len();
            async move {
                handled >= count
                    && tokio::task::spawn_blocking(move || {
                        let (committed, ends) =
                            committed_and_ends(&bootstrap, &group, &topic, PARTITIONS);
                        // A partition with nothing at or after the time starts at its end and
                        // has nothing to commit.
                        committed
                            .iter()
                            .zip(&ends)
                            .all(|(c, e)| c.is_none_or(|c| c == *e))
                    })
                    .await
                    .expect("reading offsets")
            }
        },
    )
    .await;
    let stats = running.stop().await;
    let handled = ids.0.lock().clone();
    (handled, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_group_starts_at_the_time_and_then_at_its_commits() {
    let seed = std::env::var("START_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_205);
    println!("seed {seed}: replay with START_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "start", PARTITIONS).await;

    // 300 records a second apart, an hour ago, over 30 keys (every partition gets some).
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_millis(),
    )
    .expect("ms fit");
    let base = now_ms - 3_600_000;
    let records: Vec<(Update, i64)> = (0..300)
        .map(|i| {
            let key = format!("k{}", rng.random_range(0..30));
            (update(&key, i, &format!("r{i}")), base + i * 1_000)
        })
        .collect();
    produce_at(&bootstrap, &topic, &records).await;
    // Between record `cut - 1` and record `cut`.
    let cut = rng.random_range(20..280);
    let at = base + cut * 1_000 - 500;
    let want: BTreeSet<String> = records[usize::try_from(cut).expect("index")..]
        .iter()
        .map(|(u, _)| u.id.clone())
        .collect();
    println!("start_from {} (before record r{cut})", StartFrom::Time(at));

    let (handled, stats) =
        handle(&bootstrap, &topic, &group, StartFrom::Time(at), want.len()).await;
    println!("first run: {stats:?}");
    let got: BTreeSet<String> = handled.iter().cloned().collect();
    assert_eq!(handled.len(), got.len(), "a record handled twice");
    assert_eq!(
        got, want,
        "exactly the records at or after the time, seed {seed}"
    );

    // Records stamped before the time, produced after the group committed: its commits win.
    let late: Vec<(Update, i64)> = (300..320)
        .map(|i| {
            let key = format!("k{}", rng.random_range(0..30));
            (update(&key, i, &format!("r{i}")), base - 600_000)
        })
        .collect();
    produce_at(&bootstrap, &topic, &late).await;
    let (handled, stats) =
        handle(&bootstrap, &topic, &group, StartFrom::Time(at), late.len()).await;
    println!("second run: {stats:?}");
    let got: BTreeSet<String> = handled.into_iter().collect();
    let want: BTreeSet<String> = late.iter().map(|(u, _)| u.id.clone()).collect();
    assert_eq!(
        got, want,
        "a group with commits goes on from them, seed {seed}"
    );

    server.shutdown().await;
}

/// `count` records over the keys `k0`..`k29`, ids `{prefix}{i}`, stamped now.
fn batch_of(prefix: &str, count: i64) -> Vec<(Update, i64)> {
    (0..count)
        .map(|i| {
            let u = update(&format!("k{}", i % 30), i, &format!("{prefix}{i}"));
            (u, wall_ms())
        })
        .collect()
}

fn ids_of(records: &[(Update, i64)]) -> BTreeSet<String> {
    records.iter().map(|(u, _)| u.id.clone()).collect()
}

/// Returns once `group`, started from latest, committed where it starts on every partition
/// of `topic` (in its first assignment): what is produced from then on is handled.
async fn started_at_the_end(bootstrap: &str, topic: &str, group: &str) {
    eventually_async(
        Duration::from_secs(60),
        "the group's start committed on every partition",
        || {
            let (bootstrap, topic, group) =
                (bootstrap.to_owned(), topic.to_owned(), group.to_owned());
            async move {
                tokio::task::spawn_blocking(move || {
                    steadfast_testkit::try_committed_offsets(&bootstrap, &group, &topic, PARTITIONS)
                        .is_ok_and(|c| c.iter().all(Option::is_some))
                })
                .await
                .expect("reading offsets")
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_group_from_latest_skips_the_backlog_and_then_goes_on_from_its_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "latest", PARTITIONS).await;
    let backlog = batch_of("old", 90);
    produce_at(&bootstrap, &topic, &backlog).await;

    let ids = Ids::default();
    let running = spawn(
        Worker::builder()
            .brokers(&bootstrap)
            .topic(&topic)
            .group(&group)
            .commit_interval(Duration::from_millis(100))
            .start_from(StartFrom::Latest)
            .handler(ids.clone()),
    );
    started_at_the_end(&bootstrap, &topic, &group).await;
    let fresh = batch_of("new", 60);
    produce_at(&bootstrap, &topic, &fresh).await;
    let want = ids_of(&fresh);
    eventually(Duration::from_secs(30), "every new record handled", || {
        let handled: BTreeSet<String> = ids.0.lock().iter().cloned().collect();
        handled.is_superset(&want)
    })
    .await;
    let stats = running.stop().await;
    println!("first run: {stats:?}");
    let handled = ids.0.lock().clone();
    let old: Vec<&String> = handled.iter().filter(|id| id.starts_with("old")).collect();
    assert!(
        old.is_empty(),
        "a new group from latest handled the backlog: {old:?}"
    );

    // Produced while no worker ran: a group with commits goes on from them, not from the end.
    let gap = batch_of("gap", 45);
    produce_at(&bootstrap, &topic, &gap).await;
    let (handled, stats) = handle(&bootstrap, &topic, &group, StartFrom::Latest, gap.len()).await;
    println!("second run: {stats:?}");
    let got: BTreeSet<String> = handled.into_iter().collect();
    assert_eq!(
        got,
        ids_of(&gap),
        "the second run handles exactly what came while it was stopped"
    );

    server.shutdown().await;
}
