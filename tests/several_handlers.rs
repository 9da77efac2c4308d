//! Several handlers in one worker (rdkafka against the embedded server): one handler stalled
//! (its dependency down, its breaker open, its keys parked behind their retry copies) does
//! not hold up the other, which runs at its full concurrency; two handlers over a seeded mix
//! of every outcome class (one at the defaults, one at the bounds' minimums) each settle their
//! own records as alone; `[handlers.<name>]` tables set
//! each one's topic, group and policies; `/readyz` and the metrics name the handler; a topic
//! pattern picks up a topic created after the start, with tiers and a dead-letter topic named
//! after it, and never consumes a topic steadfast derived; the builder refuses a table that
//! names no handler and two handlers in one group.

use crate::support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng as _;
use steadfast::{Context, Handler, HandlerError, Retry, Worker, WorkerConfig};
use support::*;

use crate::observe::Scrape;
use tokio_util::sync::CancellationToken;

/// A handler whose dependency is down: every call fails transiently after 2 ms.
#[derive(Debug, Clone, Default)]
struct Stalled {
    /// (key, seq) of every call.
    calls: Arc<Mutex<Vec<(String, u64)>>>,
}

impl Handler for Stalled {
    type Message = Event;
    const GROUP: &'static str = "several-stalled";

    async fn handle_message(&self, event: Event, _cx: &Context) -> Result<(), HandlerError> {
        self.calls.lock().push((event.key.clone(), event.seq));
        tokio::time::sleep(Duration::from_millis(2)).await;
        Err(HandlerError::transient("the dependency is down"))
    }
}

#[derive(Debug, Default)]
struct SteadyState {
    /// (topic, key, seq) of every successful call, and when it ended.
    handled: Vec<(String, String, u64, Instant)>,
    running: usize,
    /// The most calls at once since the last reset.
    max_running: usize,
}

/// A healthy handler: 5 ms per record; fails permanently a record marked `permanent`.
#[derive(Debug, Clone, Default)]
struct Steady {
    state: Arc<Mutex<SteadyState>>,
}

impl Steady {
    fn handled(&self) -> usize {
        self.state.lock().handled.len()
    }

    /// The most calls at once since the last call of this, and resets it.
    fn take_max_running(&self) -> usize {
        std::mem::take(&mut self.state.lock().max_running)
    }
}

impl Handler for Steady {
    type Message = Event;
    const GROUP: &'static str = "several-steady";

    async fn handle_message(&self, event: Event, cx: &Context) -> Result<(), HandlerError> {
        {
            let mut s = self.state.lock();
            s.running += 1;
            s.max_running = s.max_running.max(s.running);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut s = self.state.lock();
        s.running -= 1;
        if event.permanent {
            return Err(HandlerError::permanent("marked to fail"));
        }
        s.handled
            .push((cx.topic().to_owned(), event.key, event.seq, Instant::now()));
        Ok(())
    }
}

/// `count` events over `keys` keys (`<label>-k<i>`), seq counting per key.
fn events(label: &str, keys: usize, count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let event = Event {
                key: format!("{label}-k{}", i % keys),
                seq: (i / keys) as u64,
                ..Event::default()
            };
            (
                event.key.as_bytes().to_vec(),
                serde_json::to_vec(&event).expect("encodes"),
            )
        })
        .collect()
}

/// The body of `/readyz` on the endpoint at `address`.
async fn readyz(address: SocketAddr) -> serde_json::Value {
    let (_, body) = crate::observe::get(address, "/readyz").await;
    serde_json::from_str(&body).expect("/readyz answers JSON")
}

/// Records per second between the first and the last end time of `handled[from..]`.
fn rate(handled: &[(String, String, u64, Instant)], from: usize) -> f64 {
    let ends: Vec<Instant> = handled[from..].iter().map(|h| h.3).collect();
    let (Some(first), Some(last)) = (ends.iter().min(), ends.iter().max()) else {
        return 0.0;
    };
    ends.len() as f64 / last.duration_since(*first).as_secs_f64().max(1e-3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_handler_does_not_hold_up_the_other_one() {
    const STEADY_PHASE: usize = 2_000;
    const STALLED_KEYS: usize = 40;
    let (_dir, _server, bootstrap) = crate::observe::server().await;
    let (a, ga) = topic_and_group(&bootstrap, "several-a", 4).await;
    let (b, gb) = topic_and_group(&bootstrap, "several-b", 4).await;
    // Both handlers' settings from one file: shared keys at the top, each one's own in its
    // table.
    let file = format!(
        r#"
brokers = "{bootstrap}"
commit_interval_ms = 100
[retry]
attempts = 1
[handlers.several-stalled]
topic = "{a}"
group = "{ga}"
retry_tiers_ms = [600000]
[handlers.several-stalled.breaker]
failure_rate_percent = 50
window_ms = 1000
min_calls = 5
open_ms = 500
half_open_probes = 1
[handlers.several-steady]
topic = "{b}"
group = "{gb}"
concurrency = 8
"#
    );
    let config = WorkerConfig::from_toml(&file).expect("valid settings");
    let (stalled, steady) = (Stalled::default(), Steady::default());
    let running = crate::observe::spawn(
        Worker::builder()
            .config(config)
            .handler(stalled.clone())
            .handler(steady.clone()),
    );
    let address = running.address;

    // Phase 1: the steady handler alone (the stalled one has nothing to do).
    produce_keyed(&bootstrap, &b, &events("one", 200, STEADY_PHASE), 100).await;
    eventually(Duration::from_secs(60), "phase 1 handled", || {
        steady.handled() >= STEADY_PHASE
    })
    .await;
    let alone = rate(&steady.state.lock().handled, 0);
    let max_alone = steady.take_max_running();

    // The stalled handler gets records: the first of each key fails into the 600 s tier and
    // parks its key; its failures open its breaker.
    produce_keyed(&bootstrap, &a, &events("stuck", STALLED_KEYS, 200), 100).await;
    let stalled_entry = format!("{ga}/{a}");
    let steady_entry = format!("{gb}/{b}");
    crate::observe::until(
        Duration::from_secs(60),
        "the stalled handler's breaker open and its keys parked",
        || async {
            let readiness = readyz(address).await;
            let parked = Scrape::take(address)
                .await
                .value("steadfast_parked_keys", &[("group", &ga)]);
            let open = readiness["handlers"][&stalled_entry]["reasons"]
                .as_array()
                .is_some_and(|r| {
                    r.iter().any(|r| {
                        r.as_str()
                            .is_some_and(|r| r.contains("circuit breaker open"))
                    })
                });
            (open && parked > 0.0).then_some(())
        },
    )
    .await;

    // Phase 2: the steady handler again, beside the stalled one, which keeps failing on new
    // keys (so its breaker keeps opening) while the steady one runs.
    let before = steady.handled();
    let feeding = CancellationToken::new();
    let feeder = {
        let (bootstrap, a, feeding) = (bootstrap.clone(), a.clone(), feeding.clone());
        tokio::spawn(async move {
            let producer: rdkafka::producer::FutureProducer =
                client(&bootstrap).create().expect("a producer");
            for i in 0.. {
                if feeding.is_cancelled() {
                    break;
                }
                let [(key, payload)]: [(Vec<u8>, Vec<u8>); 1] = events(&format!("fresh{i}"), 1, 1)
                    .try_into()
                    .expect("one event");
                send_acknowledged(
                    &producer,
                    rdkafka::producer::FutureRecord::to(&a)
                        .key(&key)
                        .payload(&payload),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    produce_keyed(&bootstrap, &b, &events("two", 200, STEADY_PHASE), 100).await;
    let mut readings = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while steady.handled() < before + STEADY_PHASE {
        assert!(Instant::now() < deadline, "phase 2 handled in time");
        readings.push(readyz(address).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    feeding.cancel();
    feeder.await.expect("the feeder");
    let beside = rate(&steady.state.lock().handled, before);
    let max_beside = steady.take_max_running();
    let scrape = Scrape::take(address).await;
    let parked = scrape.value("steadfast_parked_keys", &[("group", &ga)]);
    let steady_ready = scrape.value("steadfast_ready", &[("group", &gb)]);
    println!(
        "steady handler: {alone:.0} records/s alone, {beside:.0} records/s beside the stalled one (ratio {:.2}); most calls at once {max_alone} / {max_beside} of 8; the stalled one: {} calls, {parked} keys parked",
        beside / alone,
        stalled.calls.lock().len()
    );

    assert_eq!(
        max_beside, 8,
        "beside the stalled handler the steady one still ran at its full concurrency"
    );
    let calls = stalled.calls.lock().clone();
    assert!(
        calls.iter().all(|(_, seq)| *seq == 0),
        "the stalled handler's keys stayed parked: only the first record of a key was ever called ({} calls)",
        calls.len()
    );
    assert!(parked > 0.0, "keys parked at the end of phase 2");
    let breaker_open = |readiness: &serde_json::Value| {
        readiness["reasons"].as_array().is_some_and(|r| {
            r.iter().any(|r| {
                r.as_str()
                    .is_some_and(|r| r.contains("circuit breaker open"))
            })
        })
    };
    assert!(
        readings.iter().any(|r| breaker_open(r) && r["ready"] == false),
        "the stalled handler's open breaker was seen during phase 2 (the worker not ready then): {readings:?}"
    );
    for readiness in &readings {
        assert_eq!(
            readiness["handlers"][&steady_entry]["ready"], true,
            "the steady handler is ready throughout: {readiness}"
        );
        let reasons: Vec<&str> = readiness["reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        assert!(
            reasons
                .iter()
                .all(|r| r.starts_with(&format!("{stalled_entry}: "))),
            "every reason names the stalled handler's group and topic: {reasons:?}"
        );
    }
    assert_eq!(steady_ready, 1.0, "the steady handler's ready gauge");

    let stats = running.stop().await;
    assert_eq!(
        stats.handled as usize,
        2 * STEADY_PHASE,
        "the stats of both handlers added up: {stats:?}"
    );
    assert!(stats.routed_to_tier as usize >= 1, "{stats:?}");
    let handled: BTreeSet<(String, u64)> = steady
        .state
        .lock()
        .handled
        .iter()
        .map(|(_, k, s, _)| (k.clone(), *s))
        .collect();
    assert_eq!(
        handled.len(),
        2 * STEADY_PHASE,
        "each steady record handled once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_pattern_picks_up_a_topic_created_after_the_start() {
    let (_dir, _server, bootstrap) = crate::observe::server().await;
    let prefix = steadfast_testkit::unique_topic("tenants");
    let group = format!("{prefix}-group");
    let (first, later, other) = (
        format!("{prefix}.eu"),
        format!("{prefix}.us"),
        format!("{prefix}-other"),
    );
    create_topic(&bootstrap, &first, 2).await;
    create_topic(&bootstrap, &other, 1).await;
    produce_keyed(&bootstrap, &first, &events("eu", 10, 50), 50).await;
    produce_keyed(&bootstrap, &other, &events("other", 5, 10), 50).await;

    let steady = Steady::default();
    // Everything under `<prefix>.`: the tiers and dead-letter topics the worker creates for
    // each source match the expression too, and must not become sources themselves.
    let worker = Worker::builder()
        .brokers(&bootstrap)
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::none())
        .retry_topics([Duration::from_millis(200)])
        .handler(steady.clone())
        .group(&group)
        .topic_pattern(
            format!("{}\\..+", regex::escape(&prefix)),
            Duration::from_millis(300),
        );
    let started = Instant::now();
    let running = crate::observe::spawn(worker);
    eventually(
        Duration::from_secs(60),
        "the first topic's records handled",
        || steady.handled() >= 50,
    )
    .await;

    let first_done = started.elapsed();
    create_topic(&bootstrap, &later, 3).await;
    let created = Instant::now();
    let mut records = events("us", 10, 50);
    let doomed = Event {
        key: "us-doomed".to_owned(),
        permanent: true,
        ..Event::default()
    };
    records.push((
        doomed.key.as_bytes().to_vec(),
        serde_json::to_vec(&doomed).expect("encodes"),
    ));
    produce_keyed(&bootstrap, &later, &records, 50).await;
    eventually(
        Duration::from_secs(60),
        "the later topic's records handled",
        || steady.handled() >= 100,
    )
    .await;
    println!(
        "the first topic handled {} ms after the start; the later one {} ms after it was created",
        first_done.as_millis(),
        created.elapsed().as_millis()
    );
    let dead_letters = format!("{later}.dlq");
    eventually(
        Duration::from_secs(30),
        "the failed record dead-lettered",
        || {
            (0..3)
                .map(|p| steadfast_testkit::watermarks(&bootstrap, &dead_letters, p).1)
                .sum::<i64>()
                == 1
        },
    )
    .await;
    let dead = read_all(&bootstrap, &dead_letters, 3);
    assert_eq!(
        dead.iter()
            .map(|r| r.key.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        vec![b"us-doomed".to_vec()],
        "the later topic's failed record is in its own dead-letter topic"
    );

    let readiness = readyz(running.address).await;
    let entries: BTreeSet<String> = readiness["handlers"]
        .as_object()
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default();
    let pattern_entry = format!("{group}/{}\\..+", regex::escape(&prefix));
    let expected: BTreeSet<String> = [
        pattern_entry,
        format!("{group}/{first}"),
        format!("{group}/{later}"),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        entries, expected,
        "one entry for the search and one per matching source topic, none for the derived topics: {readiness}"
    );
    let stats = running.stop().await;

    let handled = steady.state.lock().handled.clone();
    let mut per_topic: HashMap<String, BTreeSet<(String, u64)>> = HashMap::new();
    for (topic, key, seq, _) in &handled {
        assert!(
            per_topic
                .entry(topic.clone())
                .or_default()
                .insert((key.clone(), *seq)),
            "{topic} {key} {seq} handled twice"
        );
    }
    assert_eq!(per_topic.get(&first).map(BTreeSet::len), Some(50));
    assert_eq!(per_topic.get(&later).map(BTreeSet::len), Some(50));
    assert_eq!(
        per_topic.len(),
        2,
        "only the matching topics were consumed (not {other}, nor a derived topic): {:?}",
        per_topic.keys().collect::<Vec<_>>()
    );
    assert_eq!((stats.handled, stats.dead_lettered), (100, 1), "{stats:?}");
    assert!(
        committed(&bootstrap, &group, &later).0 >= Some(0),
        "the handler's group committed the later topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_in_one_handler_stops_the_others_cleanly() {
    let (_dir, _server, bootstrap) = crate::observe::server().await;
    let (a, ga) = topic_and_group(&bootstrap, "several-err", 2).await;
    let missing = steadfast_testkit::unique_topic("several-missing");
    let steady = Steady::default();
    let worker = Worker::builder()
        .brokers(&bootstrap)
        .commit_interval(Duration::from_millis(100))
        .handler(steady.clone())
        .topic(&a)
        .group(&ga)
        // The second handler reaches the broker with the first one's brokers, and finds its
        // topic missing.
        .handler(Stalled::default())
        .topic(&missing)
        .build()
        .expect("valid");
    produce_keyed(&bootstrap, &a, &events("err", 10, 100), 50).await;
    let task = tokio::spawn(worker.run(CancellationToken::new()));
    let result = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the worker (the first handler too) stopped on its own, without a shutdown")
        .expect("task");
    let err = result.expect_err("the second handler's error is the worker's");
    assert!(
        matches!(&err, steadfast::WorkerError::MissingTopic(t) if *t == missing),
        "{err}"
    );
    // Had the first handler gone on running, the worker's task would not have ended.
}

#[tokio::test]
async fn the_builder_refuses_a_table_of_no_handler_and_a_shared_group() {
    let config = WorkerConfig::from_toml("[handlers.several-stead]\nconcurrency = 2\n")
        .expect("valid on its own: the handlers are known only to the builder");
    let err = Worker::builder()
        .config(config)
        .handler(Stalled::default())
        .handler(Steady::default())
        .build()
        .expect_err("a misspelt handler name");
    let text = err.to_string();
    assert!(
        text.contains("[handlers.several-stead] names no handler")
            && text.contains("several-stalled, several-steady"),
        "{text}"
    );
    let two = || Worker::builder().handler(Stalled::default());
    for (builder, what, words) in [
        (
            two()
                .group("one-group")
                .handler(Steady::default())
                .group("one-group"),
            "two handlers in one group",
            "`one-group`",
        ),
        (
            two().handler(Steady::default()).concurrency(0),
            "the second handler's settings are checked too",
            "concurrency",
        ),
        (
            two().handler(Steady::default()).observe("127.0.0.1:9464"),
            "an endpoint address given after the first handler",
            "observe.listen",
        ),
    ] {
        let err = builder.build().expect_err(what);
        assert!(err.to_string().contains(words), "{what}: {err}");
    }
    // Settings carry over to the next handler, except the ones naming topics and groups.
    let worker = Worker::builder()
        .brokers("h:9092")
        .concurrency(3)
        .handler(Stalled::default())
        .topic("a")
        .group("ga")
        .handler(Steady::default())
        .build()
        .expect("valid");
    let shown = format!("{worker:?}");
    for part in [
        "brokers: \"h:9092\", group: None, topic: None, topic_pattern: None",
        "concurrency: 3,",
        "others: [Handler { name: \"several-stalled\", group: \"ga\"",
    ] {
        assert!(shown.contains(part), "`{part}` in {shown}");
    }
}

/// What a record of the seeded mix is made to do, and so where it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fate {
    /// Handled at the first attempt.
    Succeeds,
    /// Fails transiently once, then is handled (drawn only where a second attempt exists).
    Recovers,
    /// Fails transiently at every attempt: dead-lettered once the attempts and tiers are spent.
    KeepsFailing,
    /// Fails permanently: dead-lettered at once.
    Permanent,
    /// Panics: dead-lettered at once.
    Panics,
    /// A payload that does not decode: dead-lettered at once.
    Undecodable,
}

impl Fate {
    fn handled(self) -> bool {
        matches!(self, Fate::Succeeds | Fate::Recovers)
    }
}

/// One handler's side of the seeded mix: its settings (the defaults, or every bound at its
/// minimum), its records and their fates.
#[derive(Debug)]
struct MixSide {
    label: &'static str,
    minimums: bool,
    tiers: Vec<u64>,
    /// (key, seq, fate), in produce order.
    records: Vec<(String, u64, Fate)>,
}

impl MixSide {
    /// Its settings and records (4-12 keys), every fate at some rate.
    fn draw(rng: &mut impl rand::Rng, label: &'static str, minimums: bool) -> MixSide {
        let tiers = if rng.random_bool(0.5) {
            vec![rng.random_range(20..=100)]
        } else {
            Vec::new()
        };
        // At the minimums there is one attempt in place: a second one exists only in a tier.
        let second_attempt = !minimums || !tiers.is_empty();
        let keys = rng.random_range(4..=12);
        // At the minimums records run one at a time, and a key's records wait out its tier.
        let count = if minimums {
            rng.random_range(30..=60)
        } else {
            rng.random_range(60..=120)
        };
        let mut next_seq: HashMap<String, u64> = HashMap::new();
        let records = (0..count)
            .map(|_| {
                let key = format!("{label}-k{}", rng.random_range(0..keys));
                let seq = next_seq.entry(key.clone()).or_default();
                *seq += 1;
                let fate = match rng.random_range(0..100) {
                    0..=44 => Fate::Succeeds,
                    45..=59 if second_attempt => Fate::Recovers,
                    45..=59 => Fate::Succeeds,
                    60..=69 => Fate::KeepsFailing,
                    70..=79 => Fate::Permanent,
                    80..=89 => Fate::Panics,
                    _ => Fate::Undecodable,
                };
                (key, *seq, fate)
            })
            .collect();
        MixSide {
            label,
            minimums,
            tiers,
            records,
        }
    }

    /// The records as produced: an undecodable one is text, the others an `Event` that
    /// makes the recorder do what its fate says.
    fn produced(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.records
            .iter()
            .map(|(key, seq, fate)| {
                let payload = match fate {
                    Fate::Undecodable => format!("undecodable {key} {seq}").into_bytes(),
                    _ => serde_json::to_vec(&Event {
                        key: key.clone(),
                        seq: *seq,
                        fail_times: match fate {
                            Fate::Recovers => 1,
                            Fate::KeepsFailing => u32::MAX,
                            _ => 0,
                        },
                        permanent: *fate == Fate::Permanent,
                        panic: *fate == Fate::Panics,
                        sleep_ms: 0,
                    })
                    .expect("encodes"),
                };
                (key.as_bytes().to_vec(), payload)
            })
            .collect()
    }

    fn expected_handled(&self) -> BTreeSet<(String, u64)> {
        self.records
            .iter()
            .filter(|(_, _, fate)| fate.handled())
            .map(|(key, seq, _)| (key.clone(), *seq))
            .collect()
    }

    fn expected_dead_lettered(&self) -> BTreeSet<(String, u64)> {
        self.records
            .iter()
            .filter(|(_, _, fate)| !fate.handled())
            .map(|(key, seq, _)| (key.clone(), *seq))
            .collect()
    }

    /// Sets this side's settings on `builder`'s last handler. A later handler starts from
    /// the earlier one's settings, so the defaults are set as explicitly as the minimums.
    fn configure<H: Handler>(
        &self,
        builder: steadfast::WorkerBuilder<H>,
        topic: &str,
        group: &str,
    ) -> steadfast::WorkerBuilder<H> {
        let builder = builder
            .topic(topic)
            .group(group)
            .retry_topics(self.tiers.iter().map(|&ms| Duration::from_millis(ms)));
        if self.minimums {
            builder
                .concurrency(1)
                .max_in_flight(1)
                .max_per_key(1)
                .retry(Retry::exponential(
                    1,
                    Duration::from_millis(1),
                    Duration::from_millis(1),
                ))
        } else {
            let defaults = WorkerConfig::default();
            builder
                .concurrency(defaults.concurrency)
                .max_in_flight(defaults.max_in_flight.unwrap_or(4 * defaults.concurrency))
                .max_per_key(defaults.max_per_key)
                .retry(Retry::default())
        }
    }
}

/// The (key, seq) of a dead-lettered record, from its payload as produced.
fn dead_lettered_as(payload: &[u8]) -> (String, u64) {
    if let Ok(event) = serde_json::from_slice::<Event>(payload) {
        return (event.key, event.seq);
    }
    let text = String::from_utf8_lossy(payload);
    let mut words = text.split(' ').skip(1);
    match (words.next(), words.next().and_then(|s| s.parse().ok())) {
        (Some(key), Some(seq)) => (key.to_owned(), seq),
        _ => panic!("a dead-lettered record this test did not produce: {text:?}"),
    }
}

/// Two handlers in one worker, each over a seeded random mix of every outcome class
/// (handled, recovering after a transient failure, failing at every attempt, permanent,
/// panicking, undecodable), one at the default settings and the other with every bound at
/// its minimum (concurrency, in-flight records and records per key 1, one attempt in
/// place), each with or without a retry tier: each settles its own records exactly as it
/// would alone — every record handled once or dead-lettered once to its own dead-letter
/// topic, per-key order kept, no two calls of a key at once, nothing of one handler's
/// records seen by the other. `SEVERAL_MIX_SEED=<n>` replays a seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handlers_in_one_worker_settle_a_seeded_mix_of_outcomes_each_on_its_own() {
    use rand::SeedableRng as _;
    let seed = crate::support::seed("SEVERAL_MIX_SEED", "several handlers mix");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let first_at_minimums = rng.random_bool(0.5);
    let sides = [
        MixSide::draw(&mut rng, "mix-a", first_at_minimums),
        MixSide::draw(&mut rng, "mix-b", !first_at_minimums),
    ];
    let (_dir, _server, bootstrap) = crate::observe::server().await;
    let (a, ga) = topic_and_group(&bootstrap, "several-mix-a", 2).await;
    let (b, gb) = topic_and_group(&bootstrap, "several-mix-b", 2).await;
    let topics = [a.clone(), b.clone()];
    let recorders = [Recorder::default(), Recorder::default()];
    let builder = Worker::builder()
        .brokers(&bootstrap)
        .commit_interval(Duration::from_millis(100))
        .handler(recorders[0].clone());
    let builder = sides[0].configure(builder, &a, &ga);
    let builder = sides[1].configure(builder.handler(recorders[1].clone()), &b, &gb);
    let running = spawn(builder);
    let started = Instant::now();
    for (side, topic) in sides.iter().zip(&topics) {
        produce_keyed(&bootstrap, topic, &side.produced(), 20).await;
    }

    let summary: Vec<String> = sides
        .iter()
        .map(|s| {
            let mut counts: HashMap<Fate, usize> = HashMap::new();
            for (_, _, fate) in &s.records {
                *counts.entry(*fate).or_default() += 1;
            }
            format!(
                "{} ({}, tiers {:?}): {} records, {:?}",
                s.label,
                if s.minimums { "minimums" } else { "defaults" },
                s.tiers,
                s.records.len(),
                counts
            )
        })
        .collect();
    println!("seed {seed}: {}", summary.join("; "));

    for ((side, topic), recorder) in sides.iter().zip(&topics).zip(&recorders) {
        let expected = side.expected_handled();
        let dead = side.expected_dead_lettered();
        let dlq = format!("{topic}.dlq");
        recorder
            .wait_for(
                Duration::from_secs(60),
                &format!("seed {seed}: {}'s records handled", side.label),
                |calls| calls.iter().filter(|c| c.ok).count() >= expected.len(),
            )
            .await;
        let (bs, dl) = (bootstrap.clone(), dlq.clone());
        eventually_async(
            Duration::from_secs(60),
            &format!("seed {seed}: {}'s dead-lettered records", side.label),
            || {
                let (bs, dl) = (bs.clone(), dl.clone());
                let want = dead.len() as i64;
                async move {
                    tokio::task::spawn_blocking(move || {
                        (0..2)
                            .map(|p| steadfast_testkit::watermarks(&bs, &dl, p).1)
                            .sum::<i64>()
                            >= want
                    })
                    .await
                    .expect("watermarks")
                }
            },
        )
        .await;
        println!(
            "seed {seed}: {} settled {:.1} s after the start",
            side.label,
            started.elapsed().as_secs_f64()
        );
    }
    running.stop().await;

    for ((side, topic), recorder) in sides.iter().zip(&topics).zip(&recorders) {
        let label = side.label;
        let calls = recorder.calls();
        let handled: Vec<(String, u64)> = calls
            .iter()
            .filter(|c| c.ok)
            .map(|c| (c.key.clone(), c.seq))
            .collect();
        let distinct: BTreeSet<(String, u64)> = handled.iter().cloned().collect();
        assert_eq!(
            distinct.len(),
            handled.len(),
            "seed {seed}: {label} handled a record twice"
        );
        assert_eq!(
            distinct,
            side.expected_handled(),
            "seed {seed}: {label}'s handled records"
        );
        // Calls end in the order the recorder logs them; a key's calls never overlap.
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (key, seq) in &handled {
            let before = last.insert(key, *seq).unwrap_or(0);
            assert!(
                *seq > before,
                "seed {seed}: {label} handled {key}/{seq} after {key}/{before}"
            );
        }
        assert_eq!(
            recorder.key_overlaps(),
            0,
            "seed {seed}: {label} ran two calls of a key at once"
        );
        assert!(
            calls.iter().all(|c| c.key.starts_with(label)),
            "seed {seed}: {label}'s handler saw another handler's record"
        );
        if side.minimums {
            assert_eq!(
                recorder.max_running(),
                1,
                "seed {seed}: {label} at concurrency 1"
            );
        }
        let dlq = format!("{topic}.dlq");
        let dead_lettered: Vec<(String, u64)> = {
            let (bs, dl) = (bootstrap.clone(), dlq.clone());
            tokio::task::spawn_blocking(move || read_all(&bs, &dl, 2))
                .await
                .expect("read")
                .iter()
                .map(|r| dead_lettered_as(r.payload.as_deref().unwrap_or_default()))
                .collect()
        };
        let distinct: BTreeSet<(String, u64)> = dead_lettered.iter().cloned().collect();
        assert_eq!(
            distinct.len(),
            dead_lettered.len(),
            "seed {seed}: {label} dead-lettered a record twice"
        );
        assert_eq!(
            distinct,
            side.expected_dead_lettered(),
            "seed {seed}: {label}'s dead-letter topic {dlq}"
        );
    }
}
