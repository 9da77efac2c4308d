//! The dead-letter tooling end to end: a real embedded server over TCP, real rdkafka, a real
//! worker (the steadfast library in-process, dedup by id in Redis under a fresh key prefix)
//! and the real `steadfast` binary. A handler with a bug dead-letters 100 of 1,000
//! messages; `steadfast dlq replay` puts them back once the bug is fixed and each is applied
//! exactly once; a fresh replay is dropped as duplicates; a rerun replays nothing; a fresh
//! replay killed with SIGKILL half-way and resumed under the id it printed replays each
//! record once in total, by its committed position and by the scan for copies past it. A
//! second test checks `dlq list` filters, `show`, `--dry-run` and bad input.
//!
//! Needs Redis on 127.0.0.1:6379.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use steadfast::{Context, Handler, HandlerError, Retry, Worker, WorkerStats};
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, Env};

const STEADFAST: &str = env!("CARGO_BIN_EXE_steadfast");
const REDIS_URL: &str = "redis://127.0.0.1:6379";
const PARTITIONS: i32 = 3;
const MESSAGES: usize = 1_000;

// ---------------------------------------------------------------------------------------
// Environment: server, runtime, CLI, reading topics
// ---------------------------------------------------------------------------------------

impl Env {
    /// Runs `steadfast <args> -b <bootstrap>` to the end.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(STEADFAST)
            .args(args)
            .args(["-b", &self.bootstrap])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("steadfast runs")
    }

    /// Runs `steadfast <args>` and expects success; returns its standard output.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "steadfast {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Every record of `topic` from `starts` (per partition) to the current high watermarks.
    fn read_from(&self, topic: &str, starts: &[i64]) -> Vec<Copy> {
        let consumer: BaseConsumer = steadfast_testkit::client_config(&self.bootstrap)
            .set(
                "group.id",
                steadfast_testkit::unique_topic("dlq-test-reader"),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("consumer");
        let mut remaining = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for (p, start) in starts.iter().enumerate() {
            let p = i32::try_from(p).expect("few partitions");
            let high = steadfast_testkit::watermarks(&self.bootstrap, topic, p).1;
            if *start < high {
                remaining.insert(p, high);
                tpl.add_partition_offset(topic, p, Offset::Offset(*start))
                    .expect("offset");
            }
        }
        let mut out = Vec::new();
        if remaining.is_empty() {
            return out;
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !remaining.is_empty() {
            assert!(Instant::now() < deadline, "timed out reading {topic}");
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| {
                                    let v =
                                        h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                    (h.key.to_owned(), v)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Copy {
                        partition: m.partition(),
                        offset: m.offset(),
                        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        headers,
                    });
                    if remaining
                        .get(&m.partition())
                        .is_some_and(|h| m.offset() + 1 >= *h)
                    {
                        remaining.remove(&m.partition());
                    }
                }
            }
        }
        out
    }

    /// The offsets `group` committed on `topic`, per partition.
    fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        steadfast_testkit::committed_offsets(&self.bootstrap, group, topic, partitions)
    }
}

/// A record read back: its partition, payload and headers (values as text, `None` when
/// null).
#[derive(Debug, Clone)]
struct Copy {
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
    headers: Vec<(String, Option<String>)>,
}

impl Copy {
    /// The last value of `name` (`None` when missing or null).
    fn header(&self, name: &str) -> Option<&str> {
        self.raw_header(name).flatten()
    }
    /// The last header `name`: `Some(None)` when it is there with a null value.
    fn raw_header(&self, name: &str) -> Option<Option<&str>> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }
}

/// What is waited for, followed on failure by everything a child process wrote so far.
struct ReplaySaid<'a>(&'a str, &'a Mutex<String>);

impl std::fmt::Display for ReplaySaid<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; the replay wrote: {}", self.0, self.1.lock())
    }
}

fn require_redis() {
    if TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().expect("address"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!("this test needs Redis: start redis-server on 127.0.0.1:6379 (scripts/services.sh)");
    }
}

// ---------------------------------------------------------------------------------------
// The application: items with ids, a handler with a bug
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "dlq-items", key = key, id = id)]
struct Item {
    id: String,
    key: String,
}

fn item_id(i: usize) -> String {
    format!("item-{i:04}")
}

/// What the handler did: every applied id with its count, and the bug's switch.
struct App {
    buggy: AtomicBool,
    bad: HashSet<String>,
    applied: Mutex<HashMap<String, u32>>,
}

#[derive(Clone)]
struct Buggy(Arc<App>);

impl Handler for Buggy {
    type Message = Item;
    const GROUP: &'static str = "dlq-items";

    fn handle_message(
        &self,
        item: Item,
        _cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let app = self.0.clone();
        async move {
            if app.buggy.load(Ordering::SeqCst) && app.bad.contains(&item.id) {
                return Err(HandlerError::permanent(format!(
                    "bug: cannot apply {}",
                    item.id
                )));
            }
            *app.applied.lock().entry(item.id).or_default() += 1;
            Ok(())
        }
    }
}

/// A worker on the env's runtime until stopped.
struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<WorkerStats>,
}

fn spawn_worker(env: &Env, topic: &str, group: &str, prefix: &str, app: &Arc<App>) -> Running {
    let worker = Worker::builder()
        .brokers(env.bootstrap.as_str())
        .topic(topic)
        .group(group)
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::none())
        .concurrency(32)
        .dedup(REDIS_URL)
        .store_key_prefix(prefix)
        .handler(Buggy(app.clone()))
        .build()
        .expect("valid worker");
    Running::start(env, worker)
}

impl Running {
    /// Runs `worker` on the env's runtime until stopped.
    fn start<H: Handler>(env: &Env, worker: Worker<H>) -> Running {
        let token = CancellationToken::new();
        let t = token.clone();
        let handle = env
            .rt
            .spawn(async move { worker.run(t).await.expect("worker runs") });
        Running { token, handle }
    }

    fn stop(self, env: &Env) -> WorkerStats {
        self.token.cancel();
        env.rt.block_on(self.handle).expect("worker task")
    }
}

/// An idempotent producer to the env's server.
fn idempotent_producer(env: &Env) -> FutureProducer {
    steadfast_testkit::client_config(&env.bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// Sends `message` as JSON under `key` to `topic` and waits until it is delivered.
async fn send_json(producer: &FutureProducer, topic: &str, key: &str, message: &impl Serialize) {
    let payload = serde_json::to_vec(message).expect("encodes");
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
}

fn produce_items(env: &Env, topic: &str) {
    let producer = idempotent_producer(env);
    env.rt.block_on(async {
        let sends = (0..MESSAGES).map(|i| {
            let item = Item {
                id: item_id(i),
                key: format!("key-{}", i % 37),
            };
            let producer = &producer;
            async move { send_json(producer, topic, &item.key, &item).await }
        });
        futures::future::join_all(sends).await;
    });
}

/// Waits until `group` has committed `topic` up to its end, then stops the worker.
fn drain_and_stop(env: &Env, running: Running, topic: &str, group: &str) -> WorkerStats {
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| steadfast_testkit::watermarks(&env.bootstrap, topic, p).1)
        .collect();
    eventually(
        Duration::from_secs(60),
        "the worker to commit the whole topic",
        || {
            env.committed(group, topic, PARTITIONS)
                .iter()
                .zip(&ends)
                .all(|(c, e)| *c == Some(*e))
        },
    );
    running.stop(env)
}

/// `F` from a replay's summary line `replayed … (…; A already replayed before, F of them
/// found past the last commit)`.
fn found_past_commit(stdout: &str) -> u64 {
    stdout
        .split("already replayed before, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no found-past-commit count in {stdout:?}"))
}

/// `(replayed, already)` from a replay's summary line.
fn replay_counts(stdout: &str) -> (u64, u64) {
    if stdout.starts_with("nothing to replay") {
        let already = stdout
            .split("already replayed ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        return (0, already);
    }
    let replayed = stdout
        .strip_prefix("replayed ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no replay count in {stdout:?}"));
    let already = stdout
        .split("; ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no already-replayed count in {stdout:?}"));
    (replayed, already)
}

// ---------------------------------------------------------------------------------------
// The story
// ---------------------------------------------------------------------------------------

#[test]
fn dead_lettered_messages_are_replayed_once_after_the_fix() {
    require_redis();
    let env = Env::start();
    let topic = steadfast_testkit::unique_topic("dlq-items");
    let dlq = format!("{topic}.dlq");
    let group = format!("{topic}-group");
    let prefix = format!("sf-dlq-{}", uuid::Uuid::new_v4().simple());
    env.create_topic(&topic, PARTITIONS);
    produce_items(&env, &topic);

    // Every tenth item hits the bug.
    let bad: HashSet<String> = (0..MESSAGES).filter(|i| i % 10 == 3).map(item_id).collect();
    assert_eq!(bad.len(), 100);
    let app = Arc::new(App {
        buggy: AtomicBool::new(true),
        bad: bad.clone(),
        applied: Mutex::new(HashMap::new()),
    });

    // 1. The buggy handler: 900 applied, 100 dead-lettered.
    let running = spawn_worker(&env, &topic, &group, &prefix, &app);
    eventually(
        Duration::from_secs(120),
        "900 applied and 100 dead-lettered",
        || {
            app.applied.lock().len() == 900
                && (0..PARTITIONS)
                    .map(|p| steadfast_testkit::watermarks(&env.bootstrap, &dlq, p).1)
                    .sum::<i64>()
                    == 100
        },
    );
    let stats = drain_and_stop(&env, running, &topic, &group);
    assert_eq!(
        (stats.handled, stats.dead_lettered, stats.dropped),
        (900, 100, 0),
        "{stats:?}"
    );
    let listed = env.cli_ok(&["dlq", "list", "-t", &dlq, "--json"]);
    let mut dead: BTreeSet<String> = BTreeSet::new();
    for line in listed.lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(r["error_class"], "permanent", "{r}");
        assert_eq!(r["original"]["topic"], topic.as_str(), "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        let item: Item = serde_json::from_str(r["value"].as_str().expect("text value"))
            .expect("the original payload");
        assert!(r["error_message"]
            .as_str()
            .is_some_and(|m| m.contains(&item.id)));
        dead.insert(item.id);
    }
    assert_eq!(
        dead,
        bad.iter().cloned().collect(),
        "the DLQ holds exactly the 100"
    );

    // 2. Fixed: the replay puts exactly those 100 back; each is applied once.
    app.buggy.store(false, Ordering::SeqCst);
    let out = env.cli_ok(&[
        "dlq",
        "replay",
        "-t",
        &dlq,
        "--error-class",
        "permanent",
        "--by",
        "tester@ci",
    ]);
    assert_eq!(replay_counts(&out), (100, 0), "{out}");
    assert_eq!(env.end(&topic, PARTITIONS), 1_100);
    let running = spawn_worker(&env, &topic, &group, &prefix, &app);
    eventually(Duration::from_secs(60), "all 1,000 ids applied", || {
        app.applied.lock().len() == MESSAGES
    });
    let stats = drain_and_stop(&env, running, &topic, &group);
    assert_eq!(
        (stats.handled, stats.dead_lettered, stats.dropped),
        (100, 0, 0),
        "{stats:?}"
    );
    let applied = app.applied.lock().clone();
    assert_eq!(applied.len(), MESSAGES);
    assert!(
        applied.values().all(|n| *n == 1),
        "every id applied exactly once: {:?}",
        applied.iter().filter(|(_, n)| **n != 1).collect::<Vec<_>>()
    );
    // The copies start fresh and say where they came from.
    let copies = env.read_from(&topic, &[0; PARTITIONS as usize]);
    let replayed: Vec<&Copy> = copies
        .iter()
        .filter(|c| c.header("steadfast-replay-of").is_some())
        .collect();
    assert_eq!(replayed.len(), 100);
    for c in &replayed {
        assert_eq!(c.header("steadfast-attempts"), None);
        assert_eq!(c.header("steadfast-retry-tier"), None);
        assert_eq!(c.header("steadfast-replayed-by"), Some("tester@ci"));
        assert!(c.header("steadfast-replayed-at").is_some());
        assert!(c.header("steadfast-replay-id").is_some());
        assert_eq!(c.header("steadfast-original-topic"), Some(topic.as_str()));
        assert_eq!(
            c.header("steadfast-original-partition"),
            Some(c.partition.to_string().as_str()),
            "back on its original partition"
        );
        let item: Item = serde_json::from_slice(&c.payload).expect("payload unchanged");
        assert!(bad.contains(&item.id));
    }

    // 3. A fresh replay produces the 100 again; the worker drops them all as duplicates.
    let out = env.cli_ok(&[
        "dlq",
        "replay",
        "-t",
        &dlq,
        "--error-class",
        "permanent",
        "--fresh",
    ]);
    assert_eq!(replay_counts(&out), (100, 0), "{out}");
    assert_eq!(env.end(&topic, PARTITIONS), 1_200);
    let running = spawn_worker(&env, &topic, &group, &prefix, &app);
    let stats = drain_and_stop(&env, running, &topic, &group);
    assert_eq!(
        (
            stats.handled,
            stats.dead_lettered,
            stats.dropped,
            stats.dropped_stale
        ),
        (0, 0, 100, 0),
        "100 more dropped, as duplicates: {stats:?}"
    );
    assert_eq!(*app.applied.lock(), applied, "applied counts unchanged");

    // A rerun of the first replay (same selection, same id) replays nothing.
    let out = env.cli_ok(&["dlq", "replay", "-t", &dlq, "--error-class", "permanent"]);
    assert!(out.starts_with("nothing to replay"), "{out}");
    assert_eq!(replay_counts(&out), (0, 100), "{out}");
    assert_eq!(env.end(&topic, PARTITIONS), 1_200, "nothing produced");

    // 4. A slow fresh replay, frozen and killed half-way with copies both below its committed
    //    position and past it, is resumed under the id it printed before producing; the
    //    rerun replays each record once in total, skipping the committed ones by the
    //    position and the others by the scan of the target partitions.
    let starts: Vec<i64> = (0..PARTITIONS)
        .map(|p| steadfast_testkit::watermarks(&env.bootstrap, &topic, p).1)
        .collect();
    let mut child = Command::new(STEADFAST)
        .args(["dlq", "replay", "-t", &dlq, "--error-class", "permanent"])
        .args(["--fresh", "--rate", "10", "-b", &env.bootstrap])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("steadfast runs");
    // Its stderr is read to the end on a thread: the pipe stays open, and what the replay
    // said is at hand if it stops early.
    let said = Arc::new(Mutex::new(String::new()));
    let (first_tx, first_rx) = std::sync::mpsc::channel::<String>();
    let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let log = Arc::clone(&said);
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            log.lock().push_str(&format!("{line}\n"));
            let _ = first_tx.send(line);
        }
    });
    let first_line = first_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the replay says its id ({e}): {}", said.lock()));
    let id = first_line
        .strip_prefix("replay id ")
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no replay id in {first_line:?}"))
        .to_owned();
    let group = format!("steadfast-replay-{id}");
    assert!(first_line.contains(&group), "{first_line}");
    let copies_of = |env: &Env| -> Vec<String> {
        env.read_from(&topic, &starts)
            .iter()
            .filter(|c| c.header("steadfast-replay-id") == Some(id.as_str()))
            .filter_map(|c| c.header("steadfast-replay-of").map(str::to_owned))
            .collect()
    };
    // Every DLQ record is selected, so the committed offsets count the committed copies.
    let committed_of = |env: &Env| -> usize {
        let offsets = env.committed(&group, &dlq, PARTITIONS);
        usize::try_from(offsets.iter().flatten().sum::<i64>()).expect("offsets are positive")
    };
    let pid = child.id().to_string();
    let signal = |sig: &str| {
        let sent = Command::new("kill").args([sig, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    };
    let still_running = |child: &mut std::process::Child| match child.try_wait() {
        Ok(None) => {}
        Ok(Some(status)) => panic!("the replay ended early ({status}): {}", said.lock()),
        Err(e) => panic!("waiting on the replay: {e}"),
    };
    // Let it read the dead letters and start producing undisturbed.
    eventually(
        Duration::from_secs(90),
        ReplaySaid("20 copies from the replay", &said),
        || {
            still_running(&mut child);
            copies_of(&env).len() >= 20
        },
    );
    // Freeze the replay (SIGSTOP) and let its requests in flight land, so that what is
    // counted is what the kill leaves; go on until some copies are committed and some are
    // not yet (the replay commits about once a second at 10 records a second).
    let deadline = Instant::now() + Duration::from_secs(90);
    let (at_kill, committed_at_kill) = loop {
        still_running(&mut child);
        std::thread::sleep(Duration::from_millis(150));
        signal("-STOP");
        std::thread::sleep(Duration::from_millis(300));
        let copies = copies_of(&env).len();
        let committed = committed_of(&env);
        if copies >= 20 && committed > 0 && copies > committed {
            break (copies, committed);
        }
        assert!(
            copies < 100 && Instant::now() < deadline,
            "no moment with copies past the commit: {copies} copies, {committed} committed"
        );
        signal("-CONT");
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let after_kill = copies_of(&env).len();
    assert_eq!(
        (after_kill, committed_of(&env)),
        (at_kill, committed_at_kill),
        "nothing moved between the freeze and the kill"
    );
    assert!(
        (20..100).contains(&after_kill),
        "killed half-way: {after_kill} of 100 copies"
    );
    let out = env.cli_ok(&[
        "dlq",
        "replay",
        "-t",
        &dlq,
        "--error-class",
        "permanent",
        "--replay-id",
        &id,
    ]);
    println!("rerun after the kill: {out}");
    let (replayed, already) = replay_counts(&out);
    let found = found_past_commit(&out);
    assert_eq!(
        (replayed, already, already - found, found),
        (
            (100 - after_kill) as u64,
            after_kill as u64,
            committed_at_kill as u64,
            (after_kill - committed_at_kill) as u64
        ),
        "the rerun skips the {committed_at_kill} committed copies by the position and the \
         {} past it by the scan: {out}",
        after_kill - committed_at_kill
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for of in copies_of(&env) {
        *counts.entry(of).or_default() += 1;
    }
    let every_dlq_record: BTreeSet<String> = env
        .read_from(&dlq, &[0; PARTITIONS as usize])
        .iter()
        .map(|c| format!("{dlq}/{}/{}", c.partition, c.offset))
        .collect();
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        every_dlq_record,
        "every DLQ record replayed"
    );
    assert_eq!(counts.len(), 100, "every DLQ record replayed: {counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "each exactly once: {:?}",
        counts.iter().filter(|(_, n)| **n != 1).collect::<Vec<_>>()
    );
    let out = env.cli_ok(&[
        "dlq",
        "replay",
        "-t",
        &dlq,
        "--error-class",
        "permanent",
        "--replay-id",
        &id,
    ]);
    assert_eq!(replay_counts(&out), (0, 100), "{out}");
}

// ---------------------------------------------------------------------------------------
// list, show, dry run, bad input
// ---------------------------------------------------------------------------------------

/// Produces one dead-letter record with `headers` (and the headers `nulls` without a value)
/// to partition 0 of `topic`.
fn produce_dead_letter(
    env: &Env,
    topic: &str,
    key: impl AsRef<[u8]>,
    value: &[u8],
    headers: &[(&str, &str)],
    nulls: &[&str],
) {
    let producer: FutureProducer = steadfast_testkit::client_config(&env.bootstrap)
        .create()
        .expect("producer");
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    for k in nulls {
        h = h.insert::<str>(Header {
            key: k,
            value: None,
        });
    }
    env.rt
        .block_on(
            producer.send(
                FutureRecord::to(topic)
                    .partition(0)
                    .key(key.as_ref())
                    .payload(value)
                    .headers(h),
                Duration::from_secs(30),
            ),
        )
        .map_err(|(e, _): (KafkaError, _)| e)
        .expect("delivered");
}

/// The `partition/offset` column of a `dlq list` table.
fn listed(out: &str) -> Vec<String> {
    out.lines()
        .skip(1)
        .filter(|l| !l.ends_with("record(s)"))
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn list_filters_show_and_dry_run() {
    let env = Env::start();
    let orders = steadfast_testkit::unique_topic("orders");
    let dlq = format!("{orders}.dlq");
    env.create_topic(&orders, 2);
    env.create_topic(&dlq, 1);
    let june = "2025-06-01T00:00:00Z";
    let provenance = |class: &'static str,
                      partition: &'static str,
                      offset: &'static str,
                      failed: &'static str| {
        vec![
            ("steadfast-original-topic", orders.as_str()),
            ("steadfast-original-partition", partition),
            ("steadfast-original-offset", offset),
            ("steadfast-original-timestamp", "2025-05-31T23:59:59.500Z"),
            ("steadfast-group", "billing"),
            ("steadfast-error-class", class),
            ("steadfast-error-message", "no such account"),
            ("steadfast-attempts", "3"),
            ("steadfast-first-failure-at", "2025-05-31T23:59:59.900Z"),
            ("steadfast-last-failure-at", failed),
        ]
    };
    let mut first = provenance("permanent", "0", "10", june);
    first.insert(0, ("trace-id", "t-0"));
    produce_dead_letter(&env, &dlq, "k1", b"{\"amount\":1}", &first, &["no-value"]);
    produce_dead_letter(
        &env,
        &dlq,
        "k2",
        b"two",
        &provenance("transient", "1", "11", june),
        &[],
    );
    produce_dead_letter(
        &env,
        &dlq,
        "k1",
        &[0xff, 0xfe],
        &provenance("decode", "1", "12", june),
        &[],
    );
    produce_dead_letter(
        &env,
        &dlq,
        "k3",
        b"three",
        &provenance("permanent", "0", "13", "2025-01-01T00:00:00Z"),
        &[],
    );
    produce_dead_letter(
        &env,
        &dlq,
        "k4",
        b"homeless",
        &[("steadfast-error-class", "permanent")],
        &[],
    );

    let list = |extra: &[&str]| {
        let mut args = vec!["dlq", "list", "-t", dlq.as_str()];
        args.extend_from_slice(extra);
        listed(&env.cli_ok(&args))
    };
    assert_eq!(list(&[]), ["0/0", "0/1", "0/2", "0/3", "0/4"]);
    assert_eq!(list(&["--key", "k1"]), ["0/0", "0/2"]);
    assert_eq!(list(&["--error-class", "permanent"]), ["0/0", "0/3", "0/4"]);
    assert_eq!(list(&["--original-partition", "1"]), ["0/1", "0/2"]);
    assert_eq!(list(&["--until", "2025-03-01T00:00:00Z"]), ["0/3"]);
    assert_eq!(
        list(&[
            "--original-offset-from",
            "11",
            "--original-offset-until",
            "13"
        ]),
        ["0/1", "0/2"]
    );
    assert_eq!(list(&["--key", "k1", "--error-class", "decode"]), ["0/2"]);
    let table = env.cli_ok(&["dlq", "list", "-t", &dlq, "--key", "k2"]);
    let row: Vec<&str> = table.lines().nth(1).expect("a row").split('\t').collect();
    assert_eq!(
        row,
        [
            "0/1",
            "k2",
            "transient",
            &format!("{orders}/1/11"),
            "3",
            "2025-06-01T00:00:00Z",
            "no such account"
        ]
    );
    let json = env.cli_ok(&["dlq", "list", "-t", &dlq, "--json", "--key", "k2"]);
    let r: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(r["original"]["partition"], 1);
    assert_eq!(r["original"]["offset"], 11);
    assert_eq!(r["original"]["timestamp"], "2025-05-31T23:59:59.5Z");
    assert_eq!(r["attempts"], 3);
    assert_eq!(r["group"], "billing");
    assert_eq!(r["value"], "two");

    let show = env.cli_ok(&[
        "dlq",
        "show",
        "-t",
        &dlq,
        "--partition",
        "0",
        "--offset",
        "2",
    ]);
    for expected in [
        format!("record              {dlq}/0/2"),
        "key                 k1".to_owned(),
        "value               hex:fffe".to_owned(),
        format!("original topic      {orders}"),
        "original partition  1".to_owned(),
        "original offset     12".to_owned(),
        "error class         decode".to_owned(),
        "attempts            3".to_owned(),
        "first failure       2025-05-31T23:59:59.9Z".to_owned(),
    ] {
        assert!(
            show.lines().any(|l| l == expected),
            "{expected:?} in\n{show}"
        );
    }
    let show = env.cli_ok(&[
        "dlq",
        "show",
        "-t",
        &dlq,
        "--partition",
        "0",
        "--offset",
        "0",
    ]);
    assert!(
        show.lines().any(|l| l == "header trace-id     t-0"),
        "{show}"
    );
    assert!(
        show.lines().any(|l| l == "header no-value     (null)"),
        "{show}"
    );
    assert!(
        show.lines()
            .any(|l| l == "error message       no such account"),
        "{show}"
    );
    let missing = env.cli(&[
        "dlq",
        "show",
        "-t",
        &dlq,
        "--partition",
        "0",
        "--offset",
        "99",
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("holds offsets 0..5"));

    // A dry run says what it would replay and produces nothing.
    let dry = env.cli_ok(&[
        "dlq",
        "replay",
        "-t",
        &dlq,
        "--original-topic",
        &orders,
        "--dry-run",
    ]);
    assert!(
        dry.starts_with("dry run: would replay 4 record(s)"),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("{dlq}/0/2\t-> {orders}/1\tkey k1")),
        "{dry}"
    );
    assert_eq!(env.end(&orders, 2), 0, "a dry run produces nothing");

    // A record without an original topic refuses the replay before anything is produced.
    let refused = env.cli(&["dlq", "replay", "-t", &dlq, "--error-class", "permanent"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no `steadfast-original-topic` header"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{dlq}/0/4")), "{stderr}");
    assert_eq!(env.end(&orders, 2), 0);

    // Bad input is named.
    let bad_time = env.cli(&["dlq", "list", "-t", &dlq, "--from", "yesterday"]);
    assert!(!bad_time.status.success());
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("not an RFC 3339 time"));
    let nope = steadfast_testkit::unique_topic("nope");
    let unknown = env.cli(&["dlq", "list", "-t", &nope]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains(&format!("topic `{nope}` does not exist")),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    // The permanent failures of `orders` go back, each to its original partition.
    let out = env.cli_ok(&[
        "dlq",
        "replay",
        "-t",
        &dlq,
        "--error-class",
        "permanent",
        "--original-topic",
        &orders,
    ]);
    assert_eq!(replay_counts(&out), (2, 0), "{out}");
    let copies = env.read_from(&orders, &[0, 0]);
    let mut of: Vec<(i32, &str)> = copies
        .iter()
        .map(|c| {
            (
                c.partition,
                c.header("steadfast-replay-of").unwrap_or_default(),
            )
        })
        .collect();
    of.sort_unstable();
    assert_eq!(
        of,
        [
            (0, format!("{dlq}/0/0").as_str()),
            (0, format!("{dlq}/0/3").as_str())
        ]
    );
    assert!(copies
        .iter()
        .all(|c| c.header("steadfast-attempts").is_none()));
    assert_eq!(
        copies
            .iter()
            .filter(|c| c.header("trace-id") == Some("t-0"))
            .count(),
        1,
        "user headers kept"
    );
    let traced = copies
        .iter()
        .find(|c| c.header("trace-id") == Some("t-0"))
        .expect("the copy of 0/0");
    assert_eq!(
        traced.raw_header("no-value"),
        Some(None),
        "a null header stays null"
    );
}

#[test]
fn record_data_cannot_drive_the_terminal() {
    let env = Env::start();
    let orders = steadfast_testkit::unique_topic("orders");
    let dlq = format!("{orders}.dlq");
    env.create_topic(&orders, 1);
    env.create_topic(&dlq, 1);
    // Cursor up, erase line, carriage return, a forged row; a terminal title (OSC … BEL); a
    // right-to-left override.
    let message = "boom\x1b[1A\x1b[2K\r0/9\tk\tpermanent\tforged\x07";
    let title = "\x1b]0;owned\x07";
    produce_dead_letter(
        &env,
        &dlq,
        "k\x1b[31mred\u{202e}",
        title.as_bytes(),
        &[
            ("steadfast-original-topic", orders.as_str()),
            ("steadfast-original-partition", "0"),
            ("steadfast-error-class", "permanent"),
            ("steadfast-error-message", message),
            ("trace\rid", title),
        ],
        &[],
    );
    produce_dead_letter(
        &env,
        &dlq,
        [0xff, 0x1b, 0x07],
        b"v",
        &[("steadfast-original-topic", orders.as_str())],
        &[],
    );
    let list = env.cli_ok(&["dlq", "list", "-t", &dlq]);
    let show = env.cli_ok(&["dlq", "show", "-t", &dlq, "-p", "0", "-o", "0"]);
    let dry = env.cli_ok(&["dlq", "replay", "-t", &dlq, "--dry-run"]);
    let consumed = env.cli_ok(&[
        "consume",
        "--topic",
        &dlq,
        "--from-beginning",
        "--count",
        "2",
    ]);
    assert_eq!(consumed.lines().count(), 2, "{consumed:?}");
    assert!(consumed.contains("hex:ff1b07"), "{consumed}");
    for (what, out) in [
        ("list", &list),
        ("show", &show),
        ("replay --dry-run", &dry),
        ("consume", &consumed),
    ] {
        for control in ['\x1b', '\r', '\x07', '\u{202e}'] {
            assert!(
                !out.contains(control),
                "{what} prints {control:?} from a record:\n{out:?}"
            );
        }
    }
    assert_eq!(list.lines().count(), 4, "two rows, no forged one:\n{list}");
    assert!(list.contains(r"boom\x1b[1A\x1b[2K\r0/9\tk"), "{list}");
    assert!(show.contains(r"\x1b]0;owned\x07"), "{show}");
    assert!(show.contains(r"header trace\rid"), "{show}");
    assert!(show.contains(r"k\x1b[31mred\u{202e}"), "{show}");
    // A key that is not UTF-8 is hex in the dry run too, as in the listing.
    assert!(dry.contains("key hex:ff1b07"), "{dry}");
    assert!(list.contains("hex:ff1b07"), "{list}");
    // JSON stays exact.
    let json = env.cli_ok(&["dlq", "list", "-t", &dlq, "--json"]);
    let first: serde_json::Value =
        serde_json::from_str(json.lines().next().expect("a line")).expect("JSON");
    assert_eq!(first["error_message"], message);
}

// ---------------------------------------------------------------------------------------
// A replayed record older than the applied version
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "dlq-versions", key = key, version = version, id = id)]
struct Versioned {
    key: String,
    version: i64,
    id: String,
}

/// What the versioned handler did: every call, each key's applied version (the last one
/// written, as a table the handler upserts would hold), and the bug's switch.
#[derive(Default)]
struct VersionedApp {
    buggy: AtomicBool,
    calls: Mutex<Vec<(String, i64)>>,
    applied: Mutex<HashMap<String, i64>>,
}

/// Fails permanently on every version 1 while the bug is on; applies everything else.
#[derive(Clone)]
struct VersionedHandler(Arc<VersionedApp>);

impl Handler for VersionedHandler {
    type Message = Versioned;
    const GROUP: &'static str = "dlq-versions";

    fn handle_message(
        &self,
        v: Versioned,
        _cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let app = self.0.clone();
        async move {
            app.calls.lock().push((v.key.clone(), v.version));
            if app.buggy.load(Ordering::SeqCst) && v.version == 1 {
                return Err(HandlerError::permanent(format!(
                    "bug: cannot apply {} v1",
                    v.key
                )));
            }
            app.applied.lock().insert(v.key, v.version);
            Ok(())
        }
    }
}

fn produce_versions(env: &Env, topic: &str, versions: &[(&str, i64)]) {
    let producer = idempotent_producer(env);
    env.rt.block_on(async {
        for (key, version) in versions {
            let v = Versioned {
                key: (*key).to_owned(),
                version: *version,
                id: format!("{key}-{version}"),
            };
            send_json(&producer, topic, key, &v).await;
        }
    });
}

/// Promise (README, docs/retry-and-dlq.md): "DLQ replay ... re-publishes a filtered
/// selection, rate-limited, resumable, through the dedup and stale checks."
///
/// Key K's version 1 is dead-lettered by a handler bug, then K's version 2 is applied. The
/// bug is fixed and `steadfast dlq replay` puts v1 back on the topic: the worker (stale drop
/// and dedup in Redis) must drop it as stale, not hand it to the handler, so K's applied
/// version stays 2, in the application and in the version store; the drop is counted as
/// stale (`dropped_stale`) and the copy in `<topic>.stale` is the replayed record. A control
/// key L, whose version 1 was dead-lettered too but never overtaken, is applied from the
/// same replay: the replayed records do reach the handler when they are not stale.
///
/// How it was checked that this test catches a replayed record that skips the stale check:
/// a temporary run (reverted) of this test with the worker's stale drop taken out failed on
/// the handler-call assertion: the replayed K v1 reached the (fixed) handler, K was applied
/// at 1 again and `dropped_stale` stayed 0. The dedup check alone cannot drop it (v1's id
/// was released when its handler failed, not completed), so only the stale check can.
#[test]
fn a_replayed_record_older_than_the_applied_version_is_dropped_as_stale() {
    require_redis();
    let env = Env::start();
    let topic = steadfast_testkit::unique_topic("dlq-versions");
    let dlq = format!("{topic}.dlq");
    let stale = format!("{topic}.stale");
    let group = format!("{topic}-group");
    let prefix = format!("sf-dlq-{}", uuid::Uuid::new_v4().simple());
    env.create_topic(&topic, 1);
    let app = Arc::new(VersionedApp {
        buggy: AtomicBool::new(true),
        ..VersionedApp::default()
    });
    let worker = Worker::builder()
        .brokers(env.bootstrap.as_str())
        .topic(topic.as_str())
        .group(group.as_str())
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::none())
        .stale_drop(REDIS_URL)
        .stale_copies(true)
        .dedup(REDIS_URL)
        .store_key_prefix(prefix.as_str())
        .handler(VersionedHandler(app.clone()))
        .build()
        .expect("valid worker");
    let running = Running::start(&env, worker);

    // 1. K v1 and L v1 hit the bug and are dead-lettered.
    produce_versions(&env, &topic, &[("K", 1), ("L", 1)]);
    eventually(
        Duration::from_secs(60),
        "K v1 and L v1 dead-lettered",
        || env.end(&dlq, 1) == 2,
    );
    // 2. K v2 is applied.
    produce_versions(&env, &topic, &[("K", 2)]);
    eventually(Duration::from_secs(60), "K v2 applied", || {
        app.applied.lock().get("K") == Some(&2)
    });
    // 3. The bug is fixed and the DLQ replayed: both dead letters go back to the topic.
    app.buggy.store(false, Ordering::SeqCst);
    let out = env.cli_ok(&["dlq", "replay", "-t", &dlq, "--by", "tester@ci"]);
    assert_eq!(
        replay_counts(&out),
        (2, 0),
        "both dead letters replayed: {out}"
    );
    assert_eq!(env.end(&topic, 1), 5, "two copies produced to {topic}");
    eventually(
        Duration::from_secs(60),
        "the replayed L v1 applied (the control) and the topic committed to its end",
        || app.applied.lock().get("L") == Some(&1) && env.committed(&group, &topic, 1) == [Some(5)],
    );
    let stats = running.stop(&env);
    let calls = app.calls.lock().clone();
    let applied = app.applied.lock().clone();
    let stored_version = env.rt.block_on(async {
        use steadfast::store::VersionStore as _;
        steadfast::store::redis::RedisStores::connect(REDIS_URL, &prefix)
            .await
            .expect("redis")
            .version_store()
            .get(&format!("{group}/{topic}/K"))
            .await
            .expect("version read")
    });
    println!(
        "{stats:?}; calls {calls:?}; applied {applied:?}; stored K version {stored_version:?}"
    );

    // The replayed copy of K v1 is on the topic: the replay did put it back.
    let copies = env.read_from(&topic, &[0]);
    let replayed_k: Vec<&Copy> = copies
        .iter()
        .filter(|c| c.header("steadfast-replay-of").is_some())
        .filter(|c| {
            serde_json::from_slice::<Versioned>(&c.payload)
                .is_ok_and(|v| v.key == "K" && v.version == 1)
        })
        .collect();
    assert_eq!(
        replayed_k.len(),
        1,
        "the replay put K v1 back on {topic} once: {copies:?}"
    );
    // Dropped as stale, not applied.
    assert_eq!(
        calls.iter().filter(|c| **c == ("K".to_owned(), 1)).count(),
        1,
        "the replayed K v1 reached the handler again (only its first, failed call may): {calls:?}"
    );
    assert_eq!(
        applied.get("K"),
        Some(&2),
        "K's applied version went back from 2: {applied:?}"
    );
    assert_eq!(
        stored_version,
        Some(2),
        "the version store's K is no longer 2"
    );
    assert_eq!(
        (stats.dropped_stale, stats.dropped),
        (1, 1),
        "the replayed K v1 is counted as a stale drop (and nothing else is dropped): {stats:?}"
    );
    let stale_copies = env.read_from(&stale, &[0]);
    assert!(
        stale_copies.len() == 1
            && stale_copies[0].header("steadfast-replay-of").is_some()
            && serde_json::from_slice::<Versioned>(&stale_copies[0].payload)
                .is_ok_and(|v| v.key == "K" && v.version == 1),
        "the stale copy in {stale} is the replayed K v1: {stale_copies:?}"
    );
    // The control: the replayed L v1, never overtaken, is applied.
    assert_eq!(
        calls.iter().filter(|c| **c == ("L".to_owned(), 1)).count(),
        2,
        "L v1: its failed call, then the replayed copy's: {calls:?}"
    );
    assert_eq!(
        (stats.handled, stats.dead_lettered),
        (2, 2),
        "handled K v2 and the replayed L v1, dead-lettered K v1 and L v1: {stats:?}"
    );
}
