//! Stale drop, key lock and dedup in one Redis, their calls made together (one script before
//! the handler, one after: `stores.combine_calls`, the default) and one by one: a seeded
//! workload over every outcome class — new versions, transient failures retried in place,
//! permanent failures dead-lettered, redeliveries of the applied version, late updates older
//! than the applied version, an id seen again under a newer version — with a second member joining and leaving mid-run,
//! must end exactly as an oracle run over the plan says, in both modes, at the default
//! settings and at the bounds' minimums.
//!
//! `GUARDS_SEED=S` replays a seed (the default one is fixed; the seed is printed).

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use steadfast::{Context, Handler, HandlerError, Retry, Worker, WorkerBuilder};
use support::*;

const PARTITIONS: i32 = 4;
const KEYS: usize = 40;
const RECORDS: usize = 1_200;

/// What the handler does with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Succeed,
    /// Fails its first attempt (transient), succeeds at the second.
    FailOnce,
    /// Fails permanently: dead-lettered.
    Permanent,
}

/// One record of the plan.
#[derive(Debug, Clone)]
struct Planned {
    update: Update,
    fate: Fate,
}

/// The plan of `seed`: records of `KEYS` keys, each key's in production order.
fn plan(seed: u64) -> Vec<Planned> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sent: HashMap<usize, Vec<Planned>> = HashMap::new();
    let mut next_version: HashMap<usize, i64> = HashMap::new();
    let mut records = Vec::with_capacity(RECORDS);
    for n in 0..RECORDS {
        let key = rng.random_range(0..KEYS);
        let earlier = sent.entry(key).or_default();
        let roll = rng.random_range(0..100);
        let planned = if !earlier.is_empty() && roll < 12 {
            // A redelivery: an earlier record of the key again, as it was.
            earlier[rng.random_range(0..earlier.len())].clone()
        } else if !earlier.is_empty() && roll < 18 {
            // An id seen before under a newer version.
            let before = &earlier[rng.random_range(0..earlier.len())];
            let version = next_version.entry(key).or_default();
            *version += 1;
            Planned {
                update: update(&format!("k{key}"), *version, &before.update.id),
                fate: before.fate,
            }
        } else if !earlier.is_empty() && roll < 26 {
            // A late update: a new id with a version not newer than the key's newest.
            let newest = next_version.get(&key).copied().unwrap_or(1).max(1);
            Planned {
                update: update(
                    &format!("k{key}"),
                    rng.random_range(1..=newest),
                    &format!("e{n}"),
                ),
                fate: Fate::Succeed,
            }
        } else {
            let version = next_version.entry(key).or_default();
            // Versions may skip, so that a later record can be older than an applied one
            // only by being sent again.
            *version += rng.random_range(1..=3);
            let fate = match roll {
                0..=69 => Fate::Succeed,
                70..=89 => Fate::FailOnce,
                _ => Fate::Permanent,
            };
            Planned {
                update: update(&format!("k{key}"), *version, &format!("e{n}")),
                fate,
            }
        };
        earlier.push(planned.clone());
        records.push(planned);
    }
    records
}

/// What the plan must come to: the records handled successfully (each once, in this order
/// per key), and the ids dead-lettered with their error class (with how many times).
#[derive(Debug, Default, PartialEq, Eq)]
struct Ending {
    handled: BTreeMap<String, Vec<(i64, String)>>,
    dead: BTreeMap<(String, String), usize>,
}

/// The oracle: per key in order, a record of a key whose stored version the store refuses
/// to read (`refused`) is dead-lettered with class `store`; a version not newer than the
/// applied one is dropped; an id completed before is dropped as a duplicate (and its version
/// recorded); a permanent failure is dead-lettered; the rest are handled.
fn expected(records: &[Planned], refused: &[String]) -> Ending {
    let mut ending = Ending::default();
    let mut applied: HashMap<&str, i64> = HashMap::new();
    let mut completed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for r in records {
        let u = &r.update;
        if refused.contains(&u.key) {
            *ending
                .dead
                .entry((u.id.clone(), "store".into()))
                .or_default() += 1;
            continue;
        }
        if applied.get(u.key.as_str()).is_some_and(|a| *a >= u.version) {
            continue;
        }
        if completed.contains(u.id.as_str()) {
            applied.insert(&u.key, u.version);
            continue;
        }
        match r.fate {
            Fate::Permanent => {
                *ending
                    .dead
                    .entry((u.id.clone(), "permanent".into()))
                    .or_default() += 1
            }
            Fate::Succeed | Fate::FailOnce => {
                ending
                    .handled
                    .entry(u.key.clone())
                    .or_default()
                    .push((u.version, u.id.clone()));
                applied.insert(&u.key, u.version);
                completed.insert(&u.id);
            }
        }
    }
    ending
}

/// Fails and succeeds as planned; records every successful call, and calls of one key that
/// overlapped.
#[derive(Clone)]
struct Planner {
    fates: Arc<HashMap<(String, i64), Fate>>,
    attempts: Arc<Mutex<HashMap<(String, i64), u32>>>,
    handled: Arc<Mutex<Vec<(String, i64, String)>>>,
    running: Arc<Mutex<HashMap<String, usize>>>,
    overlaps: Arc<Mutex<usize>>,
    /// Calls of this member (each member's clone gets its own count).
    here: Arc<std::sync::atomic::AtomicUsize>,
}

impl Handler for Planner {
    type Message = Update;
    const GROUP: &'static str = "combined";

    fn handle_message(
        &self,
        u: Update,
        _cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let this = self.clone();
        this.here.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            {
                let mut running = this.running.lock();
                let n = running.entry(u.key.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    *this.overlaps.lock() += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            let fate = this.fates[&(u.id.clone(), u.version)];
            let attempt = {
                let mut attempts = this.attempts.lock();
                let n = attempts.entry((u.id.clone(), u.version)).or_default();
                *n += 1;
                *n
            };
            *this.running.lock().entry(u.key.clone()).or_default() -= 1;
            match fate {
                Fate::Permanent => Err(HandlerError::permanent("planned to fail")),
                Fate::FailOnce if attempt == 1 => Err(HandlerError::transient("planned once")),
                _ => {
                    this.handled.lock().push((u.key, u.version, u.id));
                    Ok(())
                }
            }
        }
    }
}

/// The settings of one pass.
#[derive(Debug, Clone, Copy)]
struct Pass {
    combine: bool,
    /// The bounds at their minimums (concurrency, in-flight and per-key 1, the shortest
    /// lock lease) instead of the defaults.
    minimums: bool,
    /// `stores.dead_letter_after_refusals`.
    refusals: Option<u32>,
}

fn builder(s: &Pass, bootstrap: &str, topic: &str, group: &str, prefix: &str) -> WorkerBuilder {
    let mut b = Worker::builder()
        .brokers(bootstrap)
        .topic(topic)
        .group(group)
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::exponential(3, Duration::ZERO, Duration::ZERO))
        .store_key_prefix(prefix)
        .stale_drop(REDIS)
        .dedup(REDIS)
        .combine_store_calls(s.combine)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500");
    if let Some(n) = s.refusals {
        b = b.dead_letter_after_store_refusals(n);
    }
    b = if s.minimums {
        b.key_lock(REDIS, Duration::from_millis(100))
            .concurrency(1)
            .max_in_flight(1)
            .max_per_key(1)
    } else {
        b.key_lock(REDIS, Duration::from_secs(10))
    };
    b
}

const REDIS: &str = "redis://127.0.0.1:6379";

/// Runs `records` through a worker of `pass` (a second member joins at a third of the
/// records and leaves at two thirds) and returns how it ended, and the store calls counted
/// on `/metrics` by call name (the process's totals so far).
async fn run(
    pass: Pass,
    records: &[Planned],
    refused: &[String],
) -> (Ending, HashMap<String, f64>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "combined", PARTITIONS).await;
    let dlq = format!("{topic}.dlq");
    create_topic(&bootstrap, &dlq, PARTITIONS).await;
    let prefix = fresh_prefix();
    poison(&prefix, &group, &topic, refused).await;
    let planner = Planner {
        fates: Arc::new(
            records
                .iter()
                .map(|r| ((r.update.id.clone(), r.update.version), r.fate))
                .collect(),
        ),
        attempts: Arc::default(),
        handled: Arc::default(),
        running: Arc::default(),
        overlaps: Arc::default(),
        here: Arc::default(),
    };
    let port = free_port();
    let first = spawn(
        builder(&pass, &bootstrap, &topic, &group, &prefix)
            .observe(format!("127.0.0.1:{port}"))
            .handler(planner.clone()),
    );
    let raw: Vec<(Vec<u8>, Vec<u8>)> = records.iter().map(|r| record(&r.update)).collect();
    let third = raw.len() / 3;
    produce_to(&bootstrap, &topic, &raw[..third], None).await;
    let settled = |p: &Planner| p.attempts.lock().len();
    eventually(Duration::from_secs(60), "a third handled", || {
        settled(&planner) >= third / 2
    })
    .await;
    let joiner = Planner {
        here: Arc::default(),
        ..planner.clone()
    };
    let second = spawn(builder(&pass, &bootstrap, &topic, &group, &prefix).handler(joiner.clone()));
    // The second third over about two and a half seconds, so the joiner is assigned partitions
    // while records still come.
    for chunk in raw[third..2 * third].chunks(40) {
        produce_to(&bootstrap, &topic, chunk, None).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eventually(Duration::from_secs(60), "two thirds handled", || {
        settled(&planner) >= third
    })
    .await;
    let joined = joiner.here.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        joined > 0,
        "the member that joined handled nothing: no handover was tried"
    );
    let second_stats = second.stop().await;
    produce_to(&bootstrap, &topic, &raw[2 * third..], None).await;
    let end = raw.len() as i64;
    eventually_async(Duration::from_secs(90), "everything committed", || {
        let (bootstrap, topic, group) = (bootstrap.clone(), topic.clone(), group.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let (committed, ends) = committed_and_ends(&bootstrap, &group, &topic, PARTITIONS);
                committed
                    .iter()
                    .zip(&ends)
                    .all(|(c, e)| c.unwrap_or(0) == *e)
                    && ends.iter().sum::<i64>() == end
            })
            .await
            .expect("reading offsets")
        }
    })
    .await;
    let metrics = http_get(port, "/metrics");
    let first_stats = first.stop().await;
    println!("{pass:?}: {first_stats:?}; member that left: {second_stats:?}");
    assert_eq!(
        *planner.overlaps.lock(),
        0,
        "two calls of one key overlapped"
    );

    let mut ending = Ending::default();
    for (key, version, id) in planner.handled.lock().iter() {
        ending
            .handled
            .entry(key.clone())
            .or_default()
            .push((*version, id.clone()));
    }
    let dead = tokio::task::spawn_blocking(move || read_all(&bootstrap, &dlq, PARTITIONS))
        .await
        .expect("reading the dead-letter topic");
    for r in dead {
        let u: Update = serde_json::from_slice(r.payload.as_deref().expect("a payload"))
            .expect("a dead letter carries its update");
        let class = r
            .headers
            .iter()
            .find(|(name, _)| name == steadfast::message::headers::ERROR_CLASS)
            .and_then(|(_, v)| v.clone())
            .map(|v| String::from_utf8(v).expect("text"))
            .unwrap_or_default();
        *ending.dead.entry((u.id, class)).or_default() += 1;
    }
    server.shutdown().await;
    (ending, store_calls(&metrics))
}

/// Stores a version that is not a number for each of `keys` (as `group` reads `topic`): the
/// store then refuses every stale check of those keys (not an outage).
async fn poison(prefix: &str, group: &str, topic: &str, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    let client = redis::Client::open(REDIS).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (scripts/services.sh)");
    for key in keys {
        redis::cmd("SET")
            .arg(format!("{prefix}:version:{group}/{topic}/{key}"))
            .arg("not-a-version")
            .exec_async(&mut conn)
            .await
            .expect("SET");
    }
}

/// `steadfast_store_call_duration_seconds_count` by `call`, from a `/metrics` text.
fn store_calls(metrics: &str) -> HashMap<String, f64> {
    let mut calls = HashMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("steadfast_store_call_duration_seconds_count{") else {
            continue;
        };
        let Some(call) = rest
            .split("call=\"")
            .nth(1)
            .and_then(|c| c.split('"').next())
        else {
            continue;
        };
        let count: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        *calls.entry(call.to_owned()).or_default() += count;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn combined_and_separate_guard_calls_end_a_seeded_mix_as_the_oracle_says() {
    let seed = std::env::var("GUARDS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_205);
    println!("seed {seed}: replay with GUARDS_SEED={seed}");
    let records = plan(seed);
    let want = expected(&records, &[]);
    let handled: usize = want.handled.values().map(Vec::len).sum();
    println!(
        "{} records over {KEYS} keys: {handled} to handle, {} ids to dead-letter",
        records.len(),
        want.dead.len()
    );
    assert!(
        handled > RECORDS / 3 && !want.dead.is_empty(),
        "the plan has every class"
    );

    // The metrics recorder is the process's: each pass's counts are the change over it.
    let mut before: HashMap<String, f64> = HashMap::new();
    for pass in [
        Pass {
            combine: false,
            minimums: false,
            refusals: None,
        },
        Pass {
            combine: true,
            minimums: false,
            refusals: None,
        },
        Pass {
            combine: true,
            minimums: true,
            refusals: None,
        },
    ] {
        let (ending, totals) = run(pass, &records, &[]).await;
        let calls: HashMap<String, f64> = totals
            .iter()
            .map(|(call, n)| (call.clone(), n - before.get(call).copied().unwrap_or(0.0)))
            .collect();
        before = totals;
        for (key, got) in &ending.handled {
            assert_eq!(
                Some(got),
                want.handled.get(key),
                "{pass:?}, seed {seed}: key {key} handled other than planned (each once, in order)"
            );
        }
        assert_eq!(ending, want, "{pass:?}, seed {seed}");
        let enters = calls.get("guards_enter").copied().unwrap_or(0.0);
        let acquires = calls.get("lock_acquire").copied().unwrap_or(0.0);
        if pass.combine {
            assert!(enters > 0.0 && acquires == 0.0, "{pass:?}: calls {calls:?}");
        } else {
            assert!(enters == 0.0 && acquires > 0.0, "{pass:?}: calls {calls:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_stale_check_dead_letters_only_its_keys_records_in_both_modes() {
    let seed = std::env::var("GUARDS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_206);
    println!("seed {seed}: replay with GUARDS_SEED={seed}");
    let records = plan(seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut refused: Vec<String> = Vec::new();
    while refused.len() < 5 {
        let key = format!("k{}", rng.random_range(0..KEYS));
        if !refused.contains(&key) {
            refused.push(key);
        }
    }
    let want = expected(&records, &refused);
    let stored: usize = want
        .dead
        .iter()
        .filter(|((_, c), _)| c == "store")
        .map(|(_, n)| n)
        .sum();
    println!("keys whose stale check is refused: {refused:?}; {stored} records to dead-letter as `store`");
    assert!(stored > 0 && !want.handled.is_empty(), "the plan has both");
    for pass in [
        Pass {
            combine: false,
            minimums: false,
            refusals: Some(2),
        },
        Pass {
            combine: true,
            minimums: false,
            refusals: Some(2),
        },
    ] {
        let (ending, _) = run(pass, &records, &refused).await;
        assert_eq!(ending, want, "{pass:?}, seed {seed}");
    }
}
