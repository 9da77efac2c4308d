//! Records routed to the retry tiers and the dead-letter topic: what their copies carry and how
//! a tier record that was overtaken ends.
//!
//! Against the in-process server with the real rdkafka client and real Redis (each test under
//! a Redis key prefix of its own): a relaxed tier record overtaken by a newer version of its
//! key is dead-lettered as `overtaken` (with the stale check on its own, under the key lock's
//! own check, and in the guards' combined call), never dropped as stale; a dead-letter copy
//! names the first delivery and the times of the first and the last failure; a failed
//! attempt releases its dedup reservation, so the retry from the tier does not wait out the
//! lease.

use crate::support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use steadfast::policy::headers;
use steadfast::store::{DedupStore, Reservation, VersionStore};
use steadfast::{Context, Handler, HandlerError, Ordering, Retry, Worker, WorkerBuilder};
use support::*;

/// A versioned change of a key, with an id; its handler fails transiently on the first
/// `fail` attempts (all tiers counted).
#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "tier-records", key = key, version = version, id = id)]
struct Change {
    key: String,
    version: i64,
    id: String,
    #[serde(default)]
    fail: u32,
}

fn change(key: &str, version: i64, id: &str, fail: u32) -> Change {
    Change {
        key: key.to_owned(),
        version,
        id: id.to_owned(),
        fail,
    }
}

/// One handler call.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    version: i64,
    attempt: u32,
    topic: String,
    /// Wall clock (ms since the epoch) when the call started and when it ended, the clock
    /// the failure headers are stamped with.
    started_ms: i64,
    ended_ms: i64,
    ended: Instant,
    ok: bool,
}

/// Records every call; fails as the change says.
#[derive(Clone, Default)]
struct Tracker {
    calls: Arc<Mutex<Vec<Seen>>>,
}

impl Tracker {
    fn calls(&self) -> Vec<Seen> {
        self.calls.lock().clone()
    }
}

impl Handler for Tracker {
    type Message = Change;
    const GROUP: &'static str = "tier-records";

    fn handle_message(
        &self,
        c: Change,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let calls = self.calls.clone();
        let attempt = cx.attempt();
        let topic = cx.topic().to_owned();
        async move {
            let started_ms = wall_ms();
            // Long enough for a call's start and end to be milliseconds apart.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let ok = attempt > c.fail;
            calls.lock().push(Seen {
                key: c.key.clone(),
                version: c.version,
                attempt,
                topic,
                started_ms,
                ended_ms: wall_ms(),
                ended: Instant::now(),
                ok,
            });
            if ok {
                Ok(())
            } else {
                Err(HandlerError::transient(format!(
                    "{} v{} fails at attempt {attempt}",
                    c.key, c.version
                )))
            }
        }
    }
}

struct Setup {
    server: Server,
    bootstrap: String,
    topic: String,
    group: String,
    prefix: String,
    /// The group's one retry tier of the topic.
    tier: String,
    /// The dead-letter topic.
    dlq: String,
}

async fn setup(name: &str) -> Setup {
    init_tracing();
    let prefix = fresh_prefix();
    // Fail naming the missing service rather than with a worker waiting for it.
    redis_stores(&prefix).await;
    let server = server().await;
    let bootstrap = server.bootstrap.clone();
    let (topic, group) = topic_and_group(&bootstrap, name, 1).await;
    Setup {
        server,
        bootstrap,
        tier: format!("{topic}.{group}.retry.1"),
        dlq: format!("{topic}.dlq"),
        topic,
        group,
        prefix,
    }
}

impl Setup {
    /// Produces `changes` to partition 0 of the topic, in order.
    async fn send(&self, changes: &[Change]) {
        produce_raw(&self.bootstrap, &self.topic, &json_records(changes)).await;
    }

    /// Reads `count` records of partition 0 of `topic` (off the runtime's threads).
    async fn read(&self, topic: String, count: usize) -> Vec<Read> {
        let bootstrap = self.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            read_topic(&bootstrap, &topic, count, Duration::from_secs(30))
        })
        .await
        .expect("reader task")
    }

    /// Every record of partition 0 of `topic`, with its timestamp (off the runtime's threads).
    async fn read_with_timestamps(&self, topic: String) -> Vec<steadfast_testkit::Received> {
        let bootstrap = self.bootstrap.clone();
        tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, 1))
            .await
            .expect("reader task")
    }

    /// Waits until the group's commit of partition 0 of `topic` reaches `offset`.
    async fn committed_at(&self, topic: &str, offset: i64) {
        eventually(
            Duration::from_secs(20),
            &format!("the commit of {topic} to reach {offset}"),
            || committed(&self.bootstrap, &self.group, topic).0 == Some(offset),
        )
        .await;
    }
}

fn worker(s: &Setup) -> WorkerBuilder {
    Worker::builder()
        .brokers(s.bootstrap.clone())
        .topic(s.topic.clone())
        .group(s.group.clone())
        .commit_interval(Duration::from_millis(100))
        .store_key_prefix(s.prefix.clone())
}

// ---------------------------------------------------------------------------------------
// An overtaken tier record
// ---------------------------------------------------------------------------------------

/// Which guards judge the tier record.
#[derive(Debug, Clone, Copy)]
enum Guards {
    /// The stale policy's own check, no key lock.
    StaleOnly,
    /// A Redis key lock, its calls apart from the stale check's: the lock's check decides.
    LockApart,
    /// A Redis key lock and the stale check in one call each way (the default where they
    /// share one Redis).
    LockCombined,
}

/// Relaxed ordering, stale drop in Redis: K's version 1 fails once and goes to a 1 s tier,
/// version 2 passes it and is applied; the tier record, due after that, must be
/// dead-lettered as `overtaken`, not dropped as stale, and never applied.
async fn overtaken_case(guards: Guards) {
    const TIER: Duration = Duration::from_secs(1);
    let s = setup("overtaken").await;
    s.send(&[change("K", 1, "K-1", 1), change("K", 2, "K-2", 0)])
        .await;
    let tracker = Tracker::default();
    let mut builder = worker(&s)
        .ordering(Ordering::Relaxed)
        .retry(Retry::none())
        .retry_topics([TIER])
        .stale_drop(REDIS_URL);
    match guards {
        Guards::StaleOnly => {}
        Guards::LockApart => {
            builder = builder
                .key_lock(REDIS_URL, Duration::from_secs(5))
                .combine_store_calls(false);
        }
        Guards::LockCombined => {
            builder = builder
                .key_lock(REDIS_URL, Duration::from_secs(5))
                .combine_store_calls(true);
        }
    }
    let running = spawn(builder.handler(tracker.clone()));

    // Both records of the topic and the tier record finished, whatever their end.
    s.committed_at(&s.topic, 2).await;
    s.committed_at(&s.tier, 1).await;
    let stats = running.stop().await;
    let calls = tracker.calls();
    let dead_letters = log_end(&s.bootstrap, &s.dlq);
    let tier_records = log_end(&s.bootstrap, &s.tier);
    println!("{guards:?}: calls {calls:?}, stats {stats:?}");

    // What ran: v1 once on the topic (failing), v2 once (applied); the tier record never
    // reached the handler.
    let v1: Vec<&Seen> = calls.iter().filter(|c| c.version == 1).collect();
    assert!(
        v1.iter().all(|c| !c.ok),
        "{guards:?}: version 1 was applied after version 2 had been: {calls:?}"
    );
    assert_eq!(
        v1.len(),
        1,
        "{guards:?}: the overtaken tier record reached the handler: {calls:?}"
    );
    assert_eq!(
        (v1[0].topic.as_str(), v1[0].attempt),
        (s.topic.as_str(), 1),
        "{guards:?}: version 1's one call is its first attempt on the topic"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.version == 2)
            .map(|c| c.ok)
            .collect::<Vec<_>>(),
        vec![true],
        "{guards:?}: version 2 applied once: {calls:?}"
    );
    assert_eq!(
        tier_records, 1,
        "{guards:?}: version 1 went through the tier once"
    );

    // Its end: one dead letter, class `overtaken`, of version 1 as first delivered.
    assert_eq!(
        dead_letters, 1,
        "{guards:?}: exactly one dead letter, the overtaken tier record's (dropped as stale \
         instead?): {stats:?}"
    );
    let dead = s.read(s.dlq.clone(), 1).await;
    s.server.handle.shutdown().await;
    let d = &dead[0];
    println!("{guards:?}: dead letter headers {:?}", d.headers);
    assert_eq!(
        d.headers.get(headers::ERROR_CLASS).map(String::as_str),
        Some("overtaken"),
        "{guards:?}: the overtaken tier record is dead-lettered with class `overtaken`: {:?}",
        d.headers
    );
    let payload: Change =
        serde_json::from_slice(d.payload.as_deref().expect("a payload")).expect("decodes");
    assert_eq!(
        (payload.key.as_str(), payload.version),
        ("K", 1),
        "{guards:?}: the dead letter is version 1"
    );
    assert_eq!(d.headers[headers::ORIGINAL_TOPIC], s.topic);
    assert_eq!(d.headers[headers::ORIGINAL_OFFSET], "0");
    assert_eq!(
        d.headers[headers::ROUTED_FROM],
        headers::routed_from(&s.tier, 0, 0),
        "{guards:?}: dead-lettered from the tier record"
    );

    // Counted as a dead letter, not as a stale drop.
    assert_eq!(
        (
            stats.handled,
            stats.routed_to_tier,
            stats.dead_lettered,
            stats.dropped,
            stats.dropped_stale
        ),
        (1, 1, 1, 0, 0),
        "{guards:?}: v2 handled, v1 routed to the tier then dead-lettered, nothing dropped \
         as stale: {stats:?}"
    );

    // The key's applied version stays 2.
    let applied = redis_stores(&s.prefix)
        .await
        .version_store()
        .get(&format!("{}/{}/K", s.group, s.topic))
        .await
        .expect("version get");
    assert_eq!(applied, Some(2), "{guards:?}: the applied version stays 2");
}

/// "A record that waited in a tier is never dropped as stale because a later one overtook
/// it": in relaxed mode it is dead-lettered with class `overtaken` (stale check alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relaxed_tier_record_that_was_overtaken_is_dead_lettered_as_overtaken() {
    overtaken_case(Guards::StaleOnly).await;
}

/// The same promise with a Redis key lock whose check (under the lock) decides, made apart
/// from the stale check (`lock.rs`'s `judge` call).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relaxed_tier_record_that_was_overtaken_is_dead_lettered_as_overtaken_under_a_key_lock() {
    overtaken_case(Guards::LockApart).await;
}

/// The same promise with a Redis key lock and the stale check made in one call each way
/// (`guarded.rs`, the default where both share one Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relaxed_tier_record_that_was_overtaken_is_dead_lettered_as_overtaken_with_combined_guards(
) {
    overtaken_case(Guards::LockCombined).await;
}

// ---------------------------------------------------------------------------------------
// What a dead-letter copy carries
// ---------------------------------------------------------------------------------------

/// "Original" on a dead-letter copy means the first delivery, not the tier copy it was made
/// from: a record produced with a header of its own (`trace: abc`) and a timestamp a minute
/// old, at offset 2 of the topic, fails on every attempt (two in place, then two more from a
/// 1 s tier). Its dead letter keeps the header, names topic, partition, offset and timestamp
/// of the first delivery, stamps the first failure at the first call's end and the last at
/// the last call's, and counts the four calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_copy_carries_the_first_delivery_and_both_failure_times() {
    const TIER: Duration = Duration::from_secs(1);
    const IN_PLACE_DELAY: Duration = Duration::from_millis(200);
    let s = setup("dead-letter-copy").await;
    // Two records of other keys first: the failing one's offset (2) is not its tier copy's (0).
    s.send(&[change("a", 1, "a-1", 0), change("b", 1, "b-1", 0)])
        .await;
    let produced_at = wall_ms() - 60_000;
    let failing = serde_json::to_vec(&change("k", 1, "k-1", u32::MAX)).expect("encodes");
    let producer: FutureProducer = client(&s.bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    send_acknowledged(
        &producer,
        FutureRecord::to(&s.topic)
            .partition(0)
            .key("k")
            .payload(&failing)
            .timestamp(produced_at)
            .headers(OwnedHeaders::new().insert(Header {
                key: "trace",
                value: Some("abc"),
            })),
    )
    .await;
    drop(producer);

    let tracker = Tracker::default();
    let running = spawn(
        worker(&s)
            .retry(Retry::exponential(2, IN_PLACE_DELAY, IN_PLACE_DELAY))
            .retry_topics([TIER])
            .handler(tracker.clone()),
    );
    let dead = s.read(s.dlq.clone(), 1).await;
    let read_at_ms = wall_ms();
    s.committed_at(&s.topic, 3).await;
    let stats = running.stop().await;
    let source = s.read_with_timestamps(s.topic.clone()).await;
    let tier = s.read_with_timestamps(s.tier.clone()).await;
    let dead_letters = log_end(&s.bootstrap, &s.dlq);
    s.server.handle.shutdown().await;

    let calls: Vec<Seen> = tracker
        .calls()
        .into_iter()
        .filter(|c| c.key == "k")
        .collect();
    let d = &dead[0].headers;
    println!("calls {calls:?}, stats {stats:?}, dead letter headers {d:?}");
    assert_eq!(
        calls
            .iter()
            .map(|c| (c.topic.clone(), c.attempt, c.ok))
            .collect::<Vec<_>>(),
        vec![
            (s.topic.clone(), 1, false),
            (s.topic.clone(), 2, false),
            (s.tier.clone(), 3, false),
            (s.tier.clone(), 4, false),
        ],
        "two attempts in place on the topic, two from the tier"
    );
    assert_eq!(dead_letters, 1, "one dead letter");
    assert_eq!(
        (stats.handled, stats.routed_to_tier, stats.dead_lettered),
        (2, 1, 1),
        "{stats:?}"
    );
    assert_eq!(
        dead[0].payload.as_deref(),
        Some(&failing[..]),
        "the payload as produced"
    );
    assert_eq!(
        dead[0].key.as_deref(),
        Some(&b"k"[..]),
        "the key as produced"
    );

    // The record's own header is kept.
    assert_eq!(
        d.get("trace").map(String::as_str),
        Some("abc"),
        "the record's own header is kept on the dead letter: {d:?}"
    );

    // Provenance: the first delivery, not the tier copy the dead letter was made from.
    assert_eq!(
        d[headers::ORIGINAL_TOPIC],
        s.topic,
        "the topic, not the tier"
    );
    assert_eq!(d[headers::ORIGINAL_PARTITION], "0");
    assert_eq!(
        d[headers::ORIGINAL_OFFSET],
        "2",
        "the offset of the first delivery, not the tier copy's (0)"
    );
    assert_eq!(
        d[headers::ROUTED_FROM],
        headers::routed_from(&s.tier, 0, 0),
        "made from the tier copy"
    );
    let source_ts = source[2]
        .timestamp
        .expect("the source record has a timestamp");
    assert_eq!(
        source_ts, produced_at,
        "the broker kept the producer's timestamp"
    );
    let tier_ts = tier[0].timestamp.expect("the tier copy has a timestamp");
    assert_ne!(
        tier_ts, source_ts,
        "the tier copy has a timestamp of its own"
    );
    assert_eq!(
        headers::parse_time_ms(&d[headers::ORIGINAL_TIMESTAMP]),
        Some(source_ts),
        "the original timestamp is the source record's ({}), not the tier copy's ({}): {}",
        headers::format_time_ms(source_ts),
        headers::format_time_ms(tier_ts),
        d[headers::ORIGINAL_TIMESTAMP]
    );

    // The failure times: the first at the first call's end (before the in-place retry
    // started), the last at the last call's end; a tier's delay at least between them.
    let first = headers::parse_time_ms(&d[headers::FIRST_FAILURE]).expect("RFC 3339");
    let last = headers::parse_time_ms(&d[headers::LAST_FAILURE]).expect("RFC 3339");
    assert!(
        calls[0].ended_ms <= first && first < calls[1].started_ms,
        "the first-failure time ({first}) is not the first call's end ({}): it should be \
         before the second call started ({})",
        calls[0].ended_ms,
        calls[1].started_ms
    );
    assert!(
        calls[3].ended_ms <= last && last <= calls[3].ended_ms + 1_000 && last <= read_at_ms,
        "the last-failure time ({last}) is not the last call's end ({})",
        calls[3].ended_ms
    );
    let tier_ms = i64::try_from(TIER.as_millis()).expect("fits");
    assert!(
        last - first >= tier_ms - 20,
        "the first ({first}) and last ({last}) failure are less than the tier's delay apart"
    );
    assert!(
        calls[2].ended.duration_since(calls[1].ended) >= TIER - Duration::from_millis(20),
        "the tier record ran before it was due"
    );
    assert_eq!(
        d[headers::ATTEMPTS],
        calls.len().to_string(),
        "the attempts count every handler call"
    );
    assert_eq!(d[headers::ERROR_CLASS], "transient");
    assert_eq!(d[headers::GROUP], s.group);
    assert!(
        !d.contains_key(headers::RETRY_TIER) && !d.contains_key(headers::DUE_AT),
        "no tier state on a dead letter: {d:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Dedup reservations of failed attempts
// ---------------------------------------------------------------------------------------

/// A record (id `job-1`) fails once and goes to a short tier; its retry must run at once
/// when due (its first attempt released the id's reservation: with a 60 s lease, a
/// reservation left behind would hold the retry for a minute) and succeed; the same id
/// produced again afterwards is dropped as a duplicate, the handler not called.
async fn released_case(with_lock: bool) {
    const TIER: Duration = Duration::from_millis(500);
    let s = setup("dedup-release").await;
    let mut config = steadfast::WorkerConfig {
        dedup: Some(steadfast::config::DedupConfig {
            store: REDIS_URL.to_owned(),
            lease_ms: Some(60_000),
            ttl_ms: 3_600_000,
        }),
        ..Default::default()
    };
    config.stores.combine_calls = true;
    let mut builder = Worker::builder()
        .config(config)
        .brokers(s.bootstrap.clone())
        .topic(s.topic.clone())
        .group(s.group.clone())
        .commit_interval(Duration::from_millis(100))
        .store_key_prefix(s.prefix.clone())
        .retry(Retry::none())
        .retry_topics([TIER]);
    if with_lock {
        builder = builder.key_lock(REDIS_URL, Duration::from_secs(5));
    }
    let what = if with_lock {
        "dedup with the key lock (one call each way)"
    } else {
        "dedup"
    };
    s.send(&[change("k", 1, "job-1", 1)]).await;
    let tracker = Tracker::default();
    let running = spawn(builder.handler(tracker.clone()));

    eventually(
        Duration::from_secs(10),
        "the retry from the tier to succeed (a failed attempt's reservation left behind \
         holds it for the 60 s lease)",
        || tracker.calls().iter().any(|c| c.ok),
    )
    .await;
    let calls = tracker.calls();
    assert_eq!(
        calls
            .iter()
            .map(|c| (c.topic.clone(), c.attempt, c.ok))
            .collect::<Vec<_>>(),
        vec![(s.topic.clone(), 1, false), (s.tier.clone(), 2, true)],
        "{what}: the first attempt failed, the tier's succeeded"
    );
    let waited = calls[1].ended.duration_since(calls[0].ended);
    assert!(
        waited < TIER + Duration::from_secs(3),
        "{what}: the retry ran {waited:?} after the failure, its tier's delay is {TIER:?}: \
         it waited for the failed attempt's reservation"
    );

    // The same id again, after the success: a duplicate.
    s.send(&[change("k", 2, "job-1", 0)]).await;
    s.committed_at(&s.topic, 2).await;
    let stats = running.stop().await;
    let dedup = redis_stores(&s.prefix).await.dedup_store();
    let state = dedup
        .reserve(
            &format!("{}/job-1", s.group),
            "probe",
            Duration::from_secs(1),
        )
        .await
        .expect("reserve");
    s.server.handle.shutdown().await;
    println!("{what}: calls {:?}, stats {stats:?}", tracker.calls());
    assert_eq!(
        tracker.calls().len(),
        2,
        "{what}: the id produced again after its success reached the handler: {:?}",
        tracker.calls()
    );
    assert_eq!(
        (
            stats.handled,
            stats.routed_to_tier,
            stats.dead_lettered,
            stats.dropped,
            stats.dropped_stale
        ),
        (1, 1, 0, 1, 0),
        "{what}: handled once from the tier, the second record dropped as a duplicate: \
         {stats:?}"
    );
    assert_eq!(
        state,
        Reservation::Completed,
        "{what}: the id is recorded as completed"
    );
}

/// "Dedup is two-phase: reserve before the handler, complete after success, release on
/// failure": the failed attempt's release lets the tier's retry reserve the id at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_attempt_releases_its_dedup_reservation() {
    released_case(false).await;
}

/// The same promise where the key lock and dedup share one Redis and make their calls
/// together (`guarded.rs`): the failed attempt's exit releases the reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_attempt_releases_its_dedup_reservation_with_combined_guards() {
    released_case(true).await;
}
