//! The worker's semantics contract against the in-process server with the real rdkafka
//! client: per-key order, bounds, exactly-once handling without failures, in-place retry,
//! dead-lettering with provenance headers, retry tiers, strict and relaxed ordering, and a
//! paused partition that is revoked and assigned again.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use steadfast::policy::headers;
use steadfast::{Ordering, Retry, Worker, WorkerStats};
use support::*;
use tokio_util::sync::CancellationToken;

struct Setup {
    _dir: tempfile::TempDir,
    server: steadfast::server::ServerHandle,
    bootstrap: String,
    topic: String,
    group: String,
}

async fn setup(prefix: &str) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let topic = steadfast_testkit::unique_topic(prefix);
    create_topic(&bootstrap, &topic, 1).await;
    Setup {
        _dir: dir,
        server,
        bootstrap,
        group: format!("{topic}-group"),
        topic,
    }
}

fn worker(s: &Setup) -> steadfast::WorkerBuilder {
    Worker::builder()
        .brokers(s.bootstrap.clone())
        .topic(s.topic.clone())
        .group(s.group.clone())
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::exponential(1, Duration::ZERO, Duration::ZERO))
}

fn spawn(
    builder: steadfast::WorkerBuilder<Recorder>,
) -> (CancellationToken, tokio::task::JoinHandle<WorkerStats>) {
    let token = CancellationToken::new();
    let w = builder.build().expect("valid worker");
    let t = token.clone();
    let handle = tokio::spawn(async move { w.run(t).await.expect("worker runs") });
    (token, handle)
}

async fn stop(
    token: CancellationToken,
    handle: tokio::task::JoinHandle<WorkerStats>,
) -> WorkerStats {
    token.cancel();
    handle.await.expect("worker task")
}

/// Each key's calls in `calls` come in sequence order, none twice.
fn assert_key_order(calls: &[Call]) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for c in calls {
        let prev = last.insert(&c.key, c.seq).unwrap_or(0);
        assert_eq!(c.seq, prev + 1, "key {} handled out of order", c.key);
    }
}

/// `event` as a record: its key, and the event as JSON.
fn record_of(e: &Event) -> (Vec<u8>, Vec<u8>) {
    (
        e.key.as_bytes().to_vec(),
        serde_json::to_vec(e).expect("encodes"),
    )
}

/// Runs a worker of `group` over `topic` (with `configure`'s settings) until it has handled
/// `total` records, stops it, and checks that each was handled once, in key order; the calls.
async fn handle_all(
    bootstrap: &str,
    (topic, group): (&str, &str),
    configure: impl FnOnce(steadfast::WorkerBuilder) -> steadfast::WorkerBuilder,
    total: usize,
) -> Vec<Call> {
    let recorder = Recorder::default();
    let builder = configure(
        Worker::builder()
            .brokers(bootstrap.to_owned())
            .topic(topic.to_owned())
            .group(group.to_owned()),
    );
    let (token, handle) = spawn(builder.handler(recorder.clone()));
    recorder
        .wait_for(Duration::from_secs(60), "every record", |c| {
            c.len() >= total
        })
        .await;
    let stats = stop(token, handle).await;
    let calls = recorder.calls();
    assert_eq!(calls.len(), total, "every record handled once");
    assert_eq!(stats.handled, total as u64);
    assert_key_order(&calls);
    calls
}

fn event(key: &str, seq: u64) -> Event {
    Event {
        key: key.to_owned(),
        seq,
        ..Event::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_keys_are_handled_once_each_in_key_order_within_the_bounds() {
    let s = setup("order").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    let events: Vec<Event> = (0..20_000)
        .map(|_| {
            let key = format!("k{}", rng.random_range(0..2_000));
            let seq = next_seq.entry(key.clone()).or_default();
            *seq += 1;
            Event {
                sleep_ms: rng.random_range(1..=5),
                ..event(&key, *seq)
            }
        })
        .collect();
    produce(&s.bootstrap, &s.topic, &events).await;
    let recorder = Recorder::default();
    let (token, handle) = spawn(
        worker(&s)
            .concurrency(64)
            .max_per_key(8)
            .handler(recorder.clone()),
    );
    recorder
        .wait_for(Duration::from_secs(120), "20,000 messages", |c| {
            c.len() >= 20_000
        })
        .await;
    let end = log_end(&s.bootstrap, &s.topic);
    eventually(
        Duration::from_secs(10),
        "the commit to reach the log end",
        || committed(&s.bootstrap, &s.group, &s.topic).0 == Some(end),
    )
    .await;
    let stats = stop(token, handle).await;

    let calls = recorder.calls();
    assert_eq!(calls.len(), 20_000, "every message handled exactly once");
    assert_eq!(stats.handled, 20_000);
    assert_key_order(&calls);
    assert!(
        recorder.max_running() <= 64,
        "concurrency bound exceeded: {}",
        recorder.max_running()
    );
    assert!(
        recorder.max_running() > 8,
        "keys ran in parallel: {}",
        recorder.max_running()
    );
    assert_eq!(
        recorder.key_overlaps(),
        0,
        "two calls of one key overlapped"
    );
    assert_eq!(committed(&s.bootstrap, &s.group, &s.topic).0, Some(20_000));
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_failure_is_retried_in_place_and_handled_once_at_attempt_three() {
    let s = setup("transient").await;
    produce(
        &s.bootstrap,
        &s.topic,
        &[Event {
            fail_times: 2,
            ..event("k", 1)
        }],
    )
    .await;
    let recorder = Recorder::default();
    let (token, handle) = spawn(
        worker(&s)
            .retry(Retry::exponential(
                3,
                Duration::from_millis(10),
                Duration::from_millis(50),
            ))
            .handler(recorder.clone()),
    );
    recorder
        .wait_for(Duration::from_secs(30), "a success", |c| {
            c.iter().any(|c| c.ok)
        })
        .await;
    eventually(Duration::from_secs(10), "the commit", || {
        committed(&s.bootstrap, &s.group, &s.topic).0 == Some(1)
    })
    .await;
    let stats = stop(token, handle).await;
    let calls = recorder.calls();
    assert_eq!(
        calls.iter().map(|c| (c.attempt, c.ok)).collect::<Vec<_>>(),
        vec![(1, false), (2, false), (3, true)]
    );
    assert_eq!(
        (stats.handled, stats.dead_lettered, stats.routed_to_tier),
        (1, 0, 0)
    );
    assert_eq!(
        log_end(&s.bootstrap, &format!("{}.dlq", s.topic)),
        0,
        "nothing dead-lettered"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_undecodable_and_panicking_messages_are_dead_lettered_once_with_provenance() {
    let s = setup("dlq").await;
    let permanent = serde_json::to_vec(&Event {
        permanent: true,
        ..event("perm", 1)
    })
    .expect("json");
    let panicking = serde_json::to_vec(&Event {
        panic: true,
        ..event("boom", 1)
    })
    .expect("json");
    let garbage = b"{not json".to_vec();
    let records = vec![
        (b"perm".to_vec(), permanent.clone()),
        (b"bad".to_vec(), garbage.clone()),
        (b"boom".to_vec(), panicking.clone()),
        (
            b"fine".to_vec(),
            serde_json::to_vec(&event("fine", 1)).expect("json"),
        ),
    ];
    produce_raw(&s.bootstrap, &s.topic, &records).await;
    let recorder = Recorder::default();
    let (token, handle) = spawn(
        worker(&s)
            .retry(Retry::exponential(
                3,
                Duration::from_millis(10),
                Duration::from_millis(10),
            ))
            .handler(recorder.clone()),
    );
    let dlq = format!("{}.dlq", s.topic);
    let dead = read_topic(&s.bootstrap, &dlq, 3, Duration::from_secs(30));
    eventually(Duration::from_secs(10), "the commit", || {
        committed(&s.bootstrap, &s.group, &s.topic).0 == Some(4)
    })
    .await;
    let stats = stop(token, handle).await;
    assert_eq!(
        log_end(&s.bootstrap, &dlq),
        3,
        "each dead-lettered exactly once"
    );
    assert_eq!((stats.handled, stats.dead_lettered), (1, 3));

    let by_key: HashMap<Vec<u8>, &Read> = dead
        .iter()
        .map(|r| (r.key.clone().expect("key kept"), r))
        .collect();
    for ((key, payload), (offset, class)) in
        records
            .iter()
            .take(3)
            .zip([(0, "permanent"), (1, "decode"), (2, "panic")])
    {
        let r = by_key
            .get(key)
            .unwrap_or_else(|| panic!("{} not dead-lettered", String::from_utf8_lossy(key)));
        assert_eq!(r.payload.as_ref(), Some(payload), "payload byte-identical");
        let h = &r.headers;
        assert_eq!(h[headers::ORIGINAL_TOPIC], s.topic);
        assert_eq!(h[headers::ORIGINAL_PARTITION], "0");
        assert_eq!(h[headers::ORIGINAL_OFFSET], offset.to_string());
        assert_eq!(h[headers::GROUP], s.group);
        assert_eq!(h[headers::ERROR_CLASS], class);
        assert!(!h[headers::ERROR_MESSAGE].is_empty());
        assert_eq!(
            h[headers::ATTEMPTS],
            "1",
            "permanent failures are not retried in place"
        );
        for name in [
            headers::ORIGINAL_TIMESTAMP,
            headers::FIRST_FAILURE,
            headers::LAST_FAILURE,
        ] {
            assert!(
                headers::parse_time_ms(&h[name]).is_some(),
                "{name} is RFC 3339: {}",
                h[name]
            );
        }
        assert!(!h.contains_key(headers::RETRY_TIER) && !h.contains_key(headers::DUE_AT));
    }
    // The panic was caught: the worker lived on and handled the next message.
    assert!(recorder.successes().iter().any(|c| c.key == "fine"));
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_tier_waits_for_its_delay_and_the_last_tier_leads_to_the_dlq() {
    let s = setup("tiers").await;
    produce(
        &s.bootstrap,
        &s.topic,
        &[Event {
            fail_times: 99,
            ..event("k", 1)
        }],
    )
    .await;
    let recorder = Recorder::default();
    let (token, handle) = spawn(
        worker(&s)
            .retry_topics([Duration::from_secs(2)])
            .handler(recorder.clone()),
    );
    let dlq = format!("{}.dlq", s.topic);
    let dead = read_topic(&s.bootstrap, &dlq, 1, Duration::from_secs(30));
    let stats = stop(token, handle).await;
    let calls = recorder.calls();
    assert_eq!(
        calls.len(),
        2,
        "one attempt on the topic, one in the tier: {calls:?}"
    );
    assert_eq!(calls[1].topic, format!("{}.{}.retry.1", s.topic, s.group));
    let waited = calls[1].started.duration_since(calls[0].ended);
    assert!(
        waited >= Duration::from_millis(1_990),
        "the tier's message ran after {waited:?}, before it was due"
    );
    assert_eq!(dead[0].headers[headers::ATTEMPTS], "2");
    assert_eq!(
        dead[0].headers[headers::ORIGINAL_TOPIC],
        s.topic,
        "the first delivery, not the tier"
    );
    assert_eq!(dead[0].headers[headers::ORIGINAL_OFFSET], "0");
    assert_eq!((stats.routed_to_tier, stats.dead_lettered), (1, 1));
    s.server.shutdown().await;
}

async fn ordering_case(ordering: Ordering) -> Vec<Call> {
    let s = setup("strict").await;
    let mut events = vec![
        Event {
            fail_times: 1,
            ..event("K", 1)
        },
        event("K", 2),
    ];
    events.extend((1..=20).map(|i| event(&format!("other{i}"), 1)));
    produce(&s.bootstrap, &s.topic, &events).await;
    let recorder = Recorder::default();
    let (token, handle) = spawn(
        worker(&s)
            .ordering(ordering)
            .retry_topics([Duration::from_millis(1_500)])
            .handler(recorder.clone()),
    );
    recorder
        .wait_for(Duration::from_secs(30), "every message handled", |c| {
            c.iter().filter(|c| c.ok).count() >= 22
        })
        .await;
    stop(token, handle).await;
    s.server.shutdown().await;
    recorder.calls()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_ordering_parks_later_messages_of_a_key_while_it_sits_in_a_retry_tier() {
    let calls = ordering_case(Ordering::Strict).await;
    let a_retry = calls
        .iter()
        .position(|c| c.key == "K" && c.seq == 1 && c.ok)
        .expect("A handled from the tier");
    let b = calls
        .iter()
        .position(|c| c.key == "K" && c.seq == 2)
        .expect("B handled");
    assert!(b > a_retry, "B ran before A resolved: {calls:?}");
    assert!(calls[b].started >= calls[a_retry].ended);
    let others_before_a: usize = calls[..a_retry]
        .iter()
        .filter(|c| c.key.starts_with("other"))
        .count();
    assert_eq!(
        others_before_a, 20,
        "other keys kept flowing while A waited in the tier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relaxed_ordering_lets_later_messages_of_a_key_pass() {
    let calls = ordering_case(Ordering::Relaxed).await;
    let a_retry = calls
        .iter()
        .position(|c| c.key == "K" && c.seq == 1 && c.ok)
        .expect("A handled from the tier");
    let b = calls
        .iter()
        .position(|c| c.key == "K" && c.seq == 2)
        .expect("B handled");
    assert!(b < a_retry, "B waited for A in relaxed mode: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_paused_for_a_tier_then_revoked_and_reassigned_is_consumed_again() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let s = setup("repause").await;
    produce(
        &s.bootstrap,
        &s.topic,
        &[Event {
            fail_times: 1,
            ..event("K", 1)
        }],
    )
    .await;
    let recorder = Recorder::default();
    let (token, handle) = spawn(
        worker(&s)
            .retry_topics([Duration::from_secs(3)])
            .kafka_property("partition.assignment.strategy", "range")
            .kafka_property("session.timeout.ms", "6000")
            .handler(recorder.clone()),
    );
    // The first attempt fails; the copy sits in the tier's partition, which is paused.
    recorder
        .wait_for(Duration::from_secs(20), "the first attempt", |c| {
            !c.is_empty()
        })
        .await;
    eventually(Duration::from_secs(10), "the copy in the tier", || {
        log_end(&s.bootstrap, &format!("{}.{}.retry.1", s.topic, s.group)) == 1
    })
    .await;
    // Another member joins (eager protocol: every partition is revoked and assigned again).
    let other_topic = steadfast_testkit::unique_topic("other");
    create_topic(&s.bootstrap, &other_topic, 1).await;
    let other: rdkafka::consumer::BaseConsumer = client(&s.bootstrap)
        .set("group.id", &s.group)
        .set("partition.assignment.strategy", "range")
        .create()
        .expect("consumer");
    rdkafka::consumer::Consumer::subscribe(&other, &[other_topic.as_str()]).expect("subscribe");
    // Poll the new member until the group has given it its own partition: the rebalance
    // (and with it the worker's revoke and reassignment) has happened.
    let joined_by = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let _ = other.poll(Duration::from_millis(100));
        let assigned = rdkafka::consumer::Consumer::assignment(&other).map_or(0, |a| a.count());
        if assigned > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < joined_by,
            "the second member never got its partition"
        );
    }
    recorder
        .wait_for(
            Duration::from_secs(30),
            "the tier's message after the reassignment",
            |c| c.iter().any(|c| c.ok),
        )
        .await;
    produce(&s.bootstrap, &s.topic, &[event("L", 1)]).await;
    recorder
        .wait_for(
            Duration::from_secs(30),
            "a new message after the reassignment",
            |c| c.iter().any(|c| c.key == "L"),
        )
        .await;
    drop(other);
    let stats = stop(token, handle).await;
    assert!(
        stats.partitions_assigned >= 4,
        "the topic and its tier were assigned twice: {stats:?}"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_joining_and_leaving_mid_stream_never_runs_a_key_twice_at_once() {
    join_and_leave_mid_stream(None).await;
}

/// The same with the cooperative protocol: partitions are assigned and revoked one by one
/// (`incremental_assign`/`incremental_unassign` in the worker's rebalance callback).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_cooperative_rebalances_a_worker_joining_and_leaving_never_runs_a_key_twice_at_once() {
    join_and_leave_mid_stream(Some("cooperative-sticky")).await;
}

/// A second worker joins a group mid-stream and leaves again, the assignment strategy
/// `strategy` (the worker's default when `None`): every message handled, no key on two
/// workers at once, each key's first handlings in order.
async fn join_and_leave_mid_stream(strategy: Option<&'static str>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let topic = steadfast_testkit::unique_topic("rebalance");
    create_topic(&bootstrap, &topic, 4).await;
    let events: Vec<(Vec<u8>, Vec<u8>)> = (0..6_000u64)
        .map(|i| {
            let e = Event {
                sleep_ms: 2,
                ..event(&format!("k{}", i % 300), i / 300 + 1)
            };
            (
                e.key.clone().into_bytes(),
                serde_json::to_vec(&e).expect("json"),
            )
        })
        .collect();
    produce_to(&bootstrap, &topic, &events, None).await;
    let recorder = Recorder::default();
    let builder = |worker: usize| {
        let builder = Worker::builder()
            .brokers(bootstrap.clone())
            .topic(topic.clone())
            .group(format!("{topic}-group"))
            .concurrency(2)
            .commit_interval(Duration::from_millis(100))
            .drain_timeout(Duration::from_secs(5))
            .handler(recorder.for_worker(worker));
        match strategy {
            Some(strategy) => builder.kafka_property("partition.assignment.strategy", strategy),
            None => builder,
        }
    };
    let (first, first_run) = spawn(builder(1));
    recorder
        .wait_for(
            Duration::from_secs(60),
            "500 handled by the first worker",
            |c| c.len() >= 500,
        )
        .await;
    let (second, second_run) = spawn(builder(2));
    recorder
        .wait_for(
            Duration::from_secs(60),
            "300 handled by the second worker",
            |c| c.iter().filter(|c| c.worker == 2).count() >= 300,
        )
        .await;
    let second_stats = stop(second, second_run).await;
    recorder
        .wait_for(Duration::from_secs(90), "every message handled", |calls| {
            let done: std::collections::HashSet<(&str, u64)> = calls
                .iter()
                .filter(|c| c.ok)
                .map(|c| (c.key.as_str(), c.seq))
                .collect();
            done.len() >= 6_000
        })
        .await;
    let first_stats = stop(first, first_run).await;
    let calls = recorder.successes();
    let duplicates = calls.len() - 6_000;
    println!(
        "first worker handled {}, second {}; handled twice (in flight at a revoke): {duplicates}",
        first_stats.handled, second_stats.handled
    );
    assert!(second_stats.handled > 0, "the second worker took part");
    assert_eq!(
        recorder.key_overlaps(),
        0,
        "a key was handled by two workers at the same moment"
    );
    // Per key, the first handling of each message follows the key's order.
    let mut last: HashMap<&str, u64> = HashMap::new();
    for c in &calls {
        let prev = last.entry(&c.key).or_default();
        assert!(
            c.seq <= *prev + 1,
            "key {} skipped from {} to {}",
            c.key,
            prev,
            c.seq
        );
        *prev = (*prev).max(c.seq);
    }
    server.shutdown().await;
}

/// A worker's in-flight window holds records of every partition with a backlog, taken in
/// turn: read from librdkafka's one queue, it filled with the backlog of whichever partition
/// a fetch returned first, and the keys of the others waited until that one was drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_in_flight_window_takes_the_backlogs_of_every_partition_in_turn() {
    const PARTITIONS: i32 = 4;
    const KEYS: u64 = 30;
    const PER_PARTITION: u64 = 300;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "in-turn", PARTITIONS).await;
    for p in 0..PARTITIONS {
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..PER_PARTITION)
            .map(|i| {
                record_of(&Event {
                    sleep_ms: 1,
                    ..event(&format!("p{p}-k{}", i % KEYS), i / KEYS + 1)
                })
            })
            .collect();
        produce_to(&bootstrap, &topic, &records, Some(p)).await;
    }
    let total = PER_PARTITION as usize * PARTITIONS as usize;
    let calls = handle_all(
        &bootstrap,
        (&topic, &group),
        |w| w.concurrency(8).max_in_flight(16),
        total,
    )
    .await;
    server.shutdown().await;

    // The first tenth of the calls to end: each partition's share is about a quarter of
    // it; from one partition at a time it would be all of one.
    let first = &calls[..total / 10];
    for p in 0..PARTITIONS {
        let of_p = first
            .iter()
            .filter(|c| c.key.starts_with(&format!("p{p}-")))
            .count();
        assert!(
            of_p >= first.len() / 8,
            "partition {p} had {of_p} of the first {} calls: {:?}",
            first.len(),
            first.iter().map(|c| c.key.as_str()).collect::<Vec<_>>()
        );
    }
}

/// Past 64 partitions (source and tiers together) the worker reads from librdkafka's one
/// queue instead of a queue a partition; every record is still handled once, in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_over_more_partitions_than_it_splits_reads_them_from_one_queue() {
    const PARTITIONS: i32 = 65;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "one-queue", PARTITIONS).await;
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..2_000)
        .map(|i| {
            let key = format!("k{}", i % 300);
            let seq = next_seq.entry(key.clone()).or_default();
            *seq += 1;
            record_of(&event(&key, *seq))
        })
        .collect();
    let placed = produce_keyed(&bootstrap, &topic, &records, 100).await;
    let used: std::collections::HashSet<i32> = placed.iter().map(|(p, _)| *p).collect();
    assert!(used.len() > 64, "records on {} partitions only", used.len());
    handle_all(&bootstrap, (&topic, &group), |w| w.concurrency(32), 2_000).await;
    server.shutdown().await;
}
