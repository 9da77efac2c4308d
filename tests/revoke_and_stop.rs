//! Revokes and stops: what a revoked partition and a stopping worker finish, abandon and commit.
//! A revoke commits each revoked partition's lowest unfinished offset (with the finished
//! offsets above it) before the rebalance goes on, so the next owner handles none of what the
//! last one finished; a handler still running at the drain deadline is abandoned, the
//! rebalance does not wait for it, and the key lock keeps the next owner's run of its key
//! from overlapping it; a stop abandons a hung handler at the drain deadline, commits below
//! it and leaves the group.

use crate::support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use parking_lot::Mutex;
use rdkafka::producer::{FutureProducer, FutureRecord};
use steadfast::{Context, Handler, HandlerError, Retry, Worker};
use support::*;
use tokio_util::sync::CancellationToken;

/// One handler run as these tests see it.
#[derive(Debug, Clone)]
struct Run {
    /// The worker that ran it (1: the first member, 2: the one that joins later).
    worker: usize,
    partition: i32,
    offset: i64,
    key: String,
    started: Instant,
    /// When it returned and whether it succeeded; `None` while it runs.
    ended: Option<(Instant, bool)>,
    /// The key lock's fencing token, when the lock is on.
    token: Option<u64>,
    /// Whether its context said the lease was lost when it returned.
    lease_lost: bool,
    /// The context's shutdown token (cancelled once a stopping worker abandons the run).
    shutdown: CancellationToken,
}

impl Run {
    fn finished_ok(&self) -> bool {
        matches!(self.ended, Some((_, true)))
    }
}

type Runs = Arc<Mutex<Vec<Run>>>;

/// The tests' handler: the shared [`Recorder`] (which counts calls of one key that overlap,
/// across workers) behind a log of every run's partition, offset, times and lock token. In
/// this worker the first run of each key of `slow` sleeps `slow_for`.
#[derive(Debug, Clone)]
struct Tracked {
    recorder: Recorder,
    worker: usize,
    runs: Runs,
    slow: Vec<String>,
    slow_for: Duration,
}

impl Tracked {
    fn new(recorder: &Recorder, worker: usize, runs: &Runs) -> Tracked {
        Tracked {
            recorder: recorder.for_worker(worker),
            worker,
            runs: runs.clone(),
            slow: Vec::new(),
            slow_for: Duration::ZERO,
        }
    }

    /// The first run of each of `keys` in this worker sleeps `sleep`.
    fn slow(mut self, keys: &[&str], sleep: Duration) -> Tracked {
        self.slow = keys.iter().map(|k| (*k).to_owned()).collect();
        self.slow_for = sleep;
        self
    }
}

impl Handler for Tracked {
    type Message = Event;
    const GROUP: &'static str = "revoke-and-stop";

    fn handle_message(
        &self,
        mut event: Event,
        cx: &Context,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
        let index = {
            let mut runs = self.runs.lock();
            let first_run = !runs
                .iter()
                .any(|r| r.worker == self.worker && r.key == event.key);
            if first_run && self.slow.contains(&event.key) {
                event.sleep_ms = u64::try_from(self.slow_for.as_millis()).unwrap_or(u64::MAX);
            }
            runs.push(Run {
                worker: self.worker,
                partition: cx.partition(),
                offset: cx.offset(),
                key: event.key.clone(),
                started: Instant::now(),
                ended: None,
                token: cx.lock_token(),
                lease_lost: false,
                shutdown: cx.shutdown().clone(),
            });
            runs.len() - 1
        };
        let runs = self.runs.clone();
        let cx = cx.clone();
        let recorder = self.recorder.clone();
        async move {
            let result = recorder.handle_message(event, &cx).await;
            let mut runs = runs.lock();
            runs[index].ended = Some((Instant::now(), result.is_ok()));
            runs[index].lease_lost = cx.lease_lost();
            result
        }
    }
}

/// Runs a test's body on a runtime of its own (four worker threads, as `#[tokio::test]`'s
/// elsewhere), and shuts it down without waiting for a thread stuck in a worker's stop: a
/// stop that never returns fails the test (see [`stop_within`]) instead of hanging it in the
/// runtime's drop. (Seen once in about 25 runs of the first test here: the first member's
/// stop, right after the joining member's, hung for good in librdkafka's
/// `rd_kafka_rebalance_protocol()`, called by rdkafka's rebalance handling while the
/// consumer's drop polled for its close after the consumer group had terminated; it waits
/// without a timeout for a reply that a terminated group never sends.)
fn run_test(body: impl std::future::Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(std::panic::AssertUnwindSafe(body).catch_unwind());
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// How long a worker's stop may take here: its drain (at most 10 s, the default drain
/// timeout, and nothing is running at these stops but where a test says so), its final
/// commit (at most 10 s) and its helpers (at most 5 s), with room to spare.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Stops `running` (`who`), failing when the stop takes longer than `limit`.
async fn stop_within(running: Running, limit: Duration, who: &str) -> steadfast::WorkerStats {
    let asked = Instant::now();
    tokio::time::timeout(limit, running.stop())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the stop of {who} did not return within {limit:?} (asked {:?} ago)",
                asked.elapsed()
            )
        })
}

/// A worker of `group` over `topic`, without in-place retries. Its members hear of a
/// rebalance at their next heartbeat: every 200 ms here, not librdkafka's 3 s.
fn worker(bootstrap: &str, topic: &str, group: &str) -> steadfast::WorkerBuilder {
    Worker::builder()
        .brokers(bootstrap.to_owned())
        .topic(topic.to_owned())
        .group(group.to_owned())
        .retry(Retry::none())
        .kafka_property("heartbeat.interval.ms", "200")
}

fn event(key: &str, seq: u64) -> Event {
    Event {
        key: key.to_owned(),
        seq,
        ..Event::default()
    }
}

/// The offsets `group` committed on partitions `0..partitions` of `topic` (read on a
/// blocking thread: the in-process server runs on the test's runtime).
async fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<i64>> {
    let (b, g, t) = (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        steadfast_testkit::committed_offsets(&b, &g, &t, partitions)
    })
    .await
    .expect("reading the committed offsets")
}

/// The log-end offsets of partitions `0..partitions` of `topic`.
async fn log_ends(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let (b, t) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|p| steadfast_testkit::watermarks(&b, &t, p).1)
            .collect()
    })
    .await
    .expect("reading the log ends")
}

/// Waits up to `limit` (for `what`) until `group` has committed partitions `0..partitions` of
/// `topic` to their log ends, as read first.
async fn committed_to_the_end(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    limit: Duration,
    what: &str,
) {
    let ends = log_ends(bootstrap, topic, partitions).await;
    eventually_async(limit, what, || async {
        let committed = committed_offsets(bootstrap, group, topic, partitions).await;
        committed.iter().zip(&ends).all(|(c, end)| *c == Some(*end))
    })
    .await;
}

/// Produces one record to each partition of a topic every `every` until stopped, so that a
/// member has records to handle as soon as it is assigned a partition.
struct Feed {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Feed {
    fn start(bootstrap: &str, topic: &str, partitions: i32, every: Duration) -> Feed {
        let producer: FutureProducer = client(bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        let stop = CancellationToken::new();
        let (topic, stopped) = (topic.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            for n in 0u64.. {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    _ = tick.tick() => {}
                }
                for p in 0..partitions {
                    let e = event(&format!("feed-p{p}-{n}"), 1);
                    let payload = serde_json::to_vec(&e).expect("encodes");
                    send_acknowledged(
                        &producer,
                        FutureRecord::to(&topic)
                            .partition(p)
                            .key(e.key.as_bytes())
                            .payload(&payload),
                    )
                    .await;
                }
            }
        });
        Feed { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the feed's task");
    }
}

/// A revoke commits what the revoked partitions finished. Periodic commits are an hour
/// apart, so only the revoke can commit: the offset committed for the partition the joining
/// member takes over is exactly the first offset the first member had not finished (less,
/// and the new owner would handle finished records again; more, and it would skip unfinished
/// ones), and the new owner handles none of the records finished before the revoke (the
/// commit lists those finished above its offset). No record is handled twice, on either
/// partition (the first member gets one back, eager rebalances revoke both).
#[test]
fn a_revoke_commits_what_the_revoked_partitions_finished() {
    run_test(async {
        const PARTITIONS: i32 = 2;
        const PER_PARTITION: u64 = 800;
        const KEYS: u64 = 4;
        init_tracing();
        let s = server().await;
        let (topic, group) = topic_and_group(&s.bootstrap, "revoke-commit", PARTITIONS).await;
        // Key k's records take 4(k + 1) ms, one at a time: a key's records run in order, so the
        // slowest key's 200 records take 3.2 s at least, and at any moment the faster keys have
        // finished records above the slowest key's next one (the revoke's commit must list them).
        for p in 0..PARTITIONS {
            let events: Vec<Event> = (0..PER_PARTITION)
                .map(|i| Event {
                    sleep_ms: 4 * (i % KEYS + 1),
                    ..event(&format!("p{p}-k{}", i % KEYS), i)
                })
                .collect();
            produce_events_to(&s.bootstrap, &topic, p, &events).await;
        }
        let recorder = Recorder::default();
        let runs = Runs::default();
        let member = |n: usize| {
            spawn(
                worker(&s.bootstrap, &topic, &group)
                    .concurrency(4)
                    .commit_interval(Duration::from_secs(3600))
                    .handler(Tracked::new(&recorder, n, &runs)),
            )
        };
        let first = member(1);
        eventually(
            Duration::from_secs(60),
            "the first member handling 100 records",
            || runs.lock().iter().filter(|r| r.finished_ok()).count() >= 100,
        )
        .await;
        assert_eq!(
            committed_offsets(&s.bootstrap, &group, &topic, PARTITIONS).await,
            vec![None; PARTITIONS as usize],
            "something committed before any revoke: the test cannot tell the revoke's commit apart"
        );
        let second = member(2);
        let total = PER_PARTITION as usize * PARTITIONS as usize;
        eventually(Duration::from_secs(60), "every record handled", || {
            let runs = runs.lock();
            let done: HashSet<(i32, i64)> = runs
                .iter()
                .filter(|r| r.finished_ok())
                .map(|r| (r.partition, r.offset))
                .collect();
            done.len() >= total
        })
        .await;
        // Still only the revoke's commits: both members' periodic commits are an hour away.
        let committed = committed_offsets(&s.bootstrap, &group, &topic, PARTITIONS).await;
        let runs = runs.lock().clone();
        let second_stats = stop_within(second, STOP_LIMIT, "the joining member").await;
        let first_stats = stop_within(first, STOP_LIMIT, "the first member").await;
        s.handle.shutdown().await;

        let taken: BTreeSet<i32> = runs
            .iter()
            .filter(|r| r.worker == 2)
            .map(|r| r.partition)
            .collect();
        assert_eq!(
            taken.len(),
            1,
            "the joining member handled records of {taken:?}, not of one partition"
        );
        let pb = *taken.first().expect("one partition");
        let pa = 1 - pb;
        let finished_by = |worker: usize, partition: i32| -> BTreeSet<i64> {
            runs.iter()
                .filter(|r| r.worker == worker && r.partition == partition && r.finished_ok())
                .map(|r| r.offset)
                .collect()
        };
        // The first member never had partition `pb` again after the revoke: everything it
        // finished there it finished before it.
        let finished_before = finished_by(1, pb);
        let handled_after = finished_by(2, pb);
        let first_unfinished = (0..)
            .find(|o| !finished_before.contains(o))
            .expect("an offset");
        let above = finished_before.range(first_unfinished..).count();
        println!(
            "the first member finished {} records of partition {pb} before the revoke (first \
         unfinished {first_unfinished}, {above} finished above it); the joining member handled \
         {}; committed {committed:?}; stats {first_stats:?} / {second_stats:?}",
            finished_before.len(),
            handled_after.len(),
        );
        assert!(
        !finished_before.is_empty() && !handled_after.is_empty(),
        "the revoke did not come mid-backlog ({} records of partition {pb} finished before it, \
         {} after): the test proves nothing",
        finished_before.len(),
        handled_after.len()
    );
        assert!(
            above > 0,
            "the first member had finished nothing above offset {first_unfinished} of partition \
         {pb} at the revoke: the test does not check the commit's list of finished offsets"
        );
        assert_eq!(
            committed[pb as usize],
            Some(first_unfinished),
            "the revoke committed partition {pb} at {:?}; the first member had finished every \
         offset below {first_unfinished} and not {first_unfinished}",
            committed[pb as usize]
        );
        let again: Vec<i64> = finished_before
            .intersection(&handled_after)
            .copied()
            .collect();
        assert!(
            again.is_empty(),
            "the new owner of partition {pb} handled {} records the first member had finished \
         before the revoke: {again:?}",
            again.len()
        );
        assert_eq!(
            second_stats.skipped_finished, above as u64,
            "the new owner skipped {} records as finished before the revoke's commit; the first \
         member had finished {above} above the committed offset",
            second_stats.skipped_finished
        );
        assert!(
            committed[pa as usize].is_some(),
            "the revoke committed nothing for partition {pa}, which was revoked too (eager \
         rebalance) and assigned back"
        );
        let mut handled: HashMap<(i32, i64), usize> = HashMap::new();
        for r in runs.iter().filter(|r| r.finished_ok()) {
            *handled.entry((r.partition, r.offset)).or_default() += 1;
        }
        let twice: Vec<_> = handled.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "records handled more than once across the revoke: {twice:?}"
        );
        assert_eq!(
            first_stats.handled + second_stats.handled,
            total as u64,
            "handled counts: {first_stats:?} / {second_stats:?}"
        );
    });
}

/// A handler still running at a revoke's drain deadline is abandoned: the rebalance goes on
/// without it (the joining member handles other records of the partition while it runs), the
/// committed offset stays at its record until the new owner finished it, and the key lock
/// holds the abandoned run's lease (renewed while it runs) so the new owner's run of the key
/// starts only after it ended, under a newer fencing token (docs/lock.md: one holder at a
/// time per key, the window of two consumers holding one partition). The key is then
/// handled by the new owner, and the partition committed past it.
#[test]
fn a_handler_past_the_drain_timeout_is_abandoned_and_the_key_lock_keeps_the_runs_apart() {
    run_test(async {
        const PARTITIONS: i32 = 2;
        const DRAIN: Duration = Duration::from_millis(500);
        // Three leases: a lease not renewed while the abandoned run goes on would run out.
        const LEASE: Duration = Duration::from_secs(2);
        const SLOW: Duration = Duration::from_secs(6);
        // The slow record's offset in each partition.
        const SLOW_AT: i64 = 3;
        init_tracing();
        let prefix = fresh_prefix();
        // Panics saying what to start when Redis does not answer.
        redis_stores(&prefix).await;
        let s = server().await;
        let (topic, group) = topic_and_group(&s.bootstrap, "revoke-lock", PARTITIONS).await;
        // A slow key in each partition: whichever partition the joining member gets, its slow
        // record is running in the first member at the revoke.
        let slow_keys: Vec<String> = (0..PARTITIONS).map(|p| format!("slow-p{p}")).collect();
        for p in 0..PARTITIONS {
            let mut events: Vec<Event> = (0..6).map(|i| event(&format!("p{p}-f{i}"), 1)).collect();
            events.insert(SLOW_AT as usize, event(&slow_keys[p as usize], 1));
            produce_events_to(&s.bootstrap, &topic, p, &events).await;
        }
        let recorder = Recorder::default();
        let runs = Runs::default();
        let member = |handler: Tracked| {
            spawn(
                worker(&s.bootstrap, &topic, &group)
                    .drain_timeout(DRAIN)
                    .commit_interval(Duration::from_millis(100))
                    .key_lock(REDIS_URL, LEASE)
                    .store_key_prefix(prefix.clone())
                    .handler(handler),
            )
        };
        let slow_refs: Vec<&str> = slow_keys.iter().map(String::as_str).collect();
        let first = member(Tracked::new(&recorder, 1, &runs).slow(&slow_refs, SLOW));
        eventually(
            Duration::from_secs(30),
            "the first member running both slow records, done with the 12 others",
            || {
                let runs = runs.lock();
                let slow_running = runs
                    .iter()
                    .filter(|r| slow_keys.contains(&r.key) && r.ended.is_none())
                    .count();
                slow_running == 2 && runs.iter().filter(|r| r.finished_ok()).count() >= 12
            },
        )
        .await;
        let feed = Feed::start(&s.bootstrap, &topic, PARTITIONS, Duration::from_millis(50));
        let joining = Instant::now();
        let second = member(Tracked::new(&recorder, 2, &runs));
        eventually(
            Duration::from_secs(30),
            "the joining member handling a record",
            || runs.lock().iter().any(|r| r.worker == 2 && r.finished_ok()),
        )
        .await;
        let (pb, b_first, a_slow_running) = {
            let runs = runs.lock();
            let b_first = runs
                .iter()
                .filter(|r| r.worker == 2)
                .min_by_key(|r| r.started)
                .expect("a run of the joining member")
                .clone();
            let pb = b_first.partition;
            let a_slow_running = runs
                .iter()
                .any(|r| r.worker == 1 && r.key == slow_keys[pb as usize] && r.ended.is_none());
            (pb, b_first, a_slow_running)
        };
        let slow_key = slow_keys[pb as usize].as_str();
        println!(
            "the joining member's first run (partition {pb}, offset {}) started {:?} after it \
         was started",
            b_first.offset,
            b_first.started.duration_since(joining)
        );
        assert!(
            a_slow_running,
            "the first member's slow run of {slow_key} had ended before the joining member ran \
         anything ({:?} after it joined): the rebalance waited for a handler past the {DRAIN:?} \
         drain deadline",
            b_first.started.duration_since(joining)
        );
        // Until the new owner finished the slow record, the committed offset of its partition
        // stays at it: the revoke committed the first member's finished prefix (below it), and
        // the abandoned run's end counts for nothing.
        eventually_async(
            Duration::from_secs(30),
            "the joining member handling the slow key",
            || async {
                let committed =
                    committed_offsets(&s.bootstrap, &group, &topic, PARTITIONS).await[pb as usize];
                let done = runs
                    .lock()
                    .iter()
                    .any(|r| r.worker == 2 && r.key == slow_key && r.finished_ok());
                if !done {
                    assert_eq!(
                        committed,
                        Some(SLOW_AT),
                        "partition {pb}'s committed offset while its record at {SLOW_AT} is \
                     unfinished"
                    );
                }
                done
            },
        )
        .await;
        let (a_slow, b_slow) = {
            let runs = runs.lock();
            let of = |worker: usize| {
                let mut of_key: Vec<Run> = runs
                    .iter()
                    .filter(|r| r.worker == worker && r.key == slow_key)
                    .cloned()
                    .collect();
                assert_eq!(
                    of_key.len(),
                    1,
                    "member {worker} ran {slow_key} {} times: {of_key:?}",
                    of_key.len()
                );
                of_key.remove(0)
            };
            (of(1), of(2))
        };
        let (a_ended, _) = a_slow.ended.expect("the abandoned run ended");
        println!(
            "{slow_key}: the first member ran it {:?} (token {:?}, lease lost {}), the joining \
         member started its run {:?} after that ended (token {:?})",
            a_ended.duration_since(a_slow.started),
            a_slow.token,
            a_slow.lease_lost,
            b_slow.started.saturating_duration_since(a_ended),
            b_slow.token
        );
        assert!(
            b_slow.started >= a_ended,
            "the joining member started {slow_key} {:?} before the first member's abandoned run \
         of it ended: two holders of the key lock at once",
            a_ended.duration_since(b_slow.started)
        );
        assert_eq!(recorder.key_overlaps(), 0, "two runs of one key overlapped");
        assert!(
            !a_slow.lease_lost,
            "the abandoned run lost its lease although Redis answered its renewals"
        );
        assert!(
        b_slow.token > a_slow.token && a_slow.token.is_some(),
        "the new owner's grant of {slow_key} has token {:?}, not above the abandoned run's {:?}",
        b_slow.token,
        a_slow.token
    );
        // Everything is handled in the end, and committed: past the slow records too.
        feed.stop().await;
        committed_to_the_end(
            &s.bootstrap,
            &group,
            &topic,
            PARTITIONS,
            Duration::from_secs(30),
            "every record handled and committed",
        )
        .await;
        let first_stats = stop_within(first, STOP_LIMIT, "the first member").await;
        let second_stats = stop_within(second, STOP_LIMIT, "the joining member").await;
        println!("stats {first_stats:?} / {second_stats:?}");
        assert_eq!(recorder.key_overlaps(), 0, "two runs of one key overlapped");
        s.handle.shutdown().await;
    });
}

/// A stop drains running handlers up to the drain timeout and no longer: a handler that hangs
/// is abandoned at the deadline (its context's shutdown token says so), the stop returns
/// about then, the final commit stops at the hung record (and lists the records finished
/// above it), and the worker leaves the group: a new member is assigned the partitions at
/// once, not after the stopped member's 30 s session ran out, and handles the hung record
/// and nothing else.
#[test]
fn a_stop_abandons_a_hung_handler_at_the_drain_deadline_and_leaves_the_group() {
    run_test(async {
        const PARTITIONS: i32 = 2;
        const DRAIN: Duration = Duration::from_secs(1);
        const HANG: Duration = Duration::from_secs(60);
        // The hung record's offset, in partition 0.
        const HUNG_AT: i64 = 3;
        const SESSION_MS: &str = "30000";
        init_tracing();
        let s = server().await;
        let (topic, group) = topic_and_group(&s.bootstrap, "stop-hung", PARTITIONS).await;
        let mut p0: Vec<Event> = (0..6).map(|i| event(&format!("p0-f{i}"), 1)).collect();
        p0.insert(HUNG_AT as usize, event("hung", 1));
        produce_events_to(&s.bootstrap, &topic, 0, &p0).await;
        let p1: Vec<Event> = (0..7).map(|i| event(&format!("p1-f{i}"), 1)).collect();
        produce_events_to(&s.bootstrap, &topic, 1, &p1).await;
        let fast = p0.len() + p1.len() - 1;
        let recorder = Recorder::default();
        let runs = Runs::default();
        // Long sessions: a member that did not leave the group would keep its partitions 30 s.
        let member = || {
            worker(&s.bootstrap, &topic, &group)
                .drain_timeout(DRAIN)
                .kafka_property("session.timeout.ms", SESSION_MS)
        };
        let first = spawn(
            member()
                .commit_interval(Duration::from_secs(3600))
                .handler(Tracked::new(&recorder, 1, &runs).slow(&["hung"], HANG)),
        );
        eventually(
            Duration::from_secs(30),
            "the hung record running, the others handled",
            || {
                let runs = runs.lock();
                runs.iter().any(|r| r.key == "hung" && r.ended.is_none())
                    && runs.iter().filter(|r| r.finished_ok()).count() >= fast
            },
        )
        .await;
        let stopping = Instant::now();
        let stats = stop_within(first, STOP_LIMIT, "the member with the hung handler").await;
        let took = stopping.elapsed();
        println!("stopped {took:?} after the stop was asked for; {stats:?}");
        assert!(
            took >= DRAIN,
            "the stop returned after {took:?}, before the {DRAIN:?} drain timeout, with a handler \
         running"
        );
        // The drain timeout, then the final commit (bounded at 10 s; against a broker that
        // answers it takes milliseconds) and leaving the group.
        assert!(
            took < DRAIN + Duration::from_secs(10),
            "the stop took {took:?} with a {DRAIN:?} drain timeout and a handler hung for {HANG:?}"
        );
        let hung = runs
            .lock()
            .iter()
            .find(|r| r.key == "hung")
            .expect("the hung run")
            .clone();
        assert!(
            hung.ended.is_none(),
            "the hung run ended before the stop returned: {hung:?}"
        );
        assert!(
            hung.shutdown.is_cancelled(),
            "the abandoned handler's context was not told of the shutdown"
        );
        assert_eq!(
            (stats.handled, stats.dead_lettered),
            (fast as u64, 0),
            "{stats:?}"
        );
        assert_eq!(
            committed_offsets(&s.bootstrap, &group, &topic, PARTITIONS).await,
            vec![Some(HUNG_AT), Some(p1.len() as i64)],
            "the final commit: partition 0 at its hung record, partition 1 at its end"
        );

        let joining = Instant::now();
        let second = spawn(
            member()
                .commit_interval(Duration::from_millis(100))
                .handler(Tracked::new(&recorder, 2, &runs)),
        );
        eventually(
            Duration::from_secs(20),
            "the new member handling the hung record (a stopped member that did not leave the \
         group holds its partitions until its 30 s session runs out)",
            || {
                runs.lock()
                    .iter()
                    .any(|r| r.worker == 2 && r.key == "hung" && r.finished_ok())
            },
        )
        .await;
        let waited = joining.elapsed();
        println!("the new member handled the hung record {waited:?} after it started");
        assert!(
            waited < Duration::from_secs(10),
            "the new member was assigned the partitions {waited:?} after it started: the stopped \
         member did not leave the group"
        );
        committed_to_the_end(
            &s.bootstrap,
            &group,
            &topic,
            PARTITIONS,
            Duration::from_secs(10),
            "the commit past the hung record",
        )
        .await;
        let second_stats = stop_within(second, STOP_LIMIT, "the new member").await;
        let by_second: Vec<(i32, i64)> = runs
            .lock()
            .iter()
            .filter(|r| r.worker == 2)
            .map(|r| (r.partition, r.offset))
            .collect();
        assert_eq!(
            by_second,
            vec![(0, HUNG_AT)],
            "the new member handles the hung record and nothing the stopped one finished"
        );
        assert_eq!(second_stats.handled, 1, "{second_stats:?}");
        s.handle.shutdown().await;
    });
}
