//! A seeded mix through a named dependency's breaker (`.dependency_breaker`), at the
//! breaker's defaults with wide concurrency and at its bounds' minimums with narrow: 300
//! records over 40 keys, each ok, a call to `payments` (down in one or two outages after its
//! first call), a call `payments` rejects as permanent, n transient failures of its own (in
//! place, through the one retry tier, or past it), or an undecodable payload. Promised: each
//! record that must apply is handled once, a dependency's on the source topic within its
//! in-place budget (outages wait, spending no attempt, routing nothing); the tier and the DLQ
//! (`steadfast-error-class` included) get exactly the planned records; the commit reaches the
//! end; calls made while the dependency is down stay within what min_calls and the half-open
//! probes allow, below what the handlers asked for. Replay with `DEPENDENCY_MIX_SEED=<seed>`.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use steadfast::config::BreakerConfig;
use steadfast::{Context, Handler, HandlerError, Retry};
use support::*;

const KEYS: usize = 40;
const RECORDS: usize = 300;
/// Attempts per delivery in place; the one retry tier gives as many again, then the DLQ.
const ATTEMPTS: u32 = 5;
/// The test runtime's threads: the dependency answers without yielding, so at most one call
/// per thread sits between its permit and its result when the breaker opens.
const THREADS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Ok,
    Payments,
    Rejected,
    Flaky(u32),
    Undecodable,
}

/// What becomes of a class: (applied, routed to the tier, the class it is dead-lettered with).
fn fate(class: Class) -> (bool, bool, Option<&'static str>) {
    match class {
        Class::Ok | Class::Payments => (true, false, None),
        Class::Rejected => (false, false, Some("permanent")),
        Class::Undecodable => (false, false, Some("decode")),
        Class::Flaky(n) => {
            let exhausted = n >= 2 * ATTEMPTS;
            (!exhausted, n >= ATTEMPTS, exhausted.then_some("transient"))
        }
    }
}

/// The dependency: down for calls made within its outages, measured from the first call.
struct Payments {
    outages: Vec<(Duration, Duration)>,
    first_call: OnceLock<Instant>,
    /// Per outage: calls the handlers asked for, and calls that reached the dependency.
    asked: Vec<AtomicUsize>,
    made: Vec<AtomicUsize>,
}

impl Payments {
    /// The outage under way now, if any.
    fn down(&self) -> Option<usize> {
        let at = self.first_call.get_or_init(Instant::now).elapsed();
        let mut outages = self.outages.iter();
        outages.position(|(from, to)| *from <= at && at < *to)
    }
}

#[derive(Default)]
struct Seen {
    /// Per record id: (attempt, topic) of each successful handling.
    handled: HashMap<String, Vec<(u32, String)>>,
    /// The first wave's records that reached the handler.
    arrived: HashSet<String>,
}

#[derive(Clone)]
struct Mix {
    plan: Arc<HashMap<String, Class>>,
    payments: Arc<Payments>,
    seen: Arc<Mutex<Seen>>,
    /// The first wave: records `r0` to `r{wave - 1}`, one per handler slot.
    wave: usize,
}

impl Handler for Mix {
    type Message = Update;
    const GROUP: &'static str = "dependency-mix";

    fn handle_message(
        &self,
        u: Update,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let (this, cx) = (self.clone(), cx.clone());
        async move {
            let class = this.plan[&u.id];
            match class {
                Class::Flaky(n) if cx.attempt() <= n => {
                    return Err(HandlerError::transient(format!("{} flaky", u.id)));
                }
                Class::Payments | Class::Rejected => {
                    this.first_wave_in(&u.id).await;
                    let p = &this.payments;
                    if let Some(i) = p.down() {
                        p.asked[i].fetch_add(1, Relaxed);
                    }
                    let answer = cx.dependency("payments").call(async {
                        if let Some(i) = p.down() {
                            p.made[i].fetch_add(1, Relaxed);
                            Err(HandlerError::transient("payments refused"))
                        } else if class == Class::Rejected {
                            Err(HandlerError::permanent("payments rejects it"))
                        } else {
                            Ok(())
                        }
                    });
                    answer.await?;
                }
                _ => {}
            }
            let done = (cx.attempt(), cx.topic().to_owned());
            this.seen.lock().handled.entry(u.id).or_default().push(done);
            Ok(())
        }
    }
}

/// A record's key and payload.
type Raw = (Vec<u8>, Vec<u8>);

impl Mix {
    /// A first-wave record waits (up to 10 s) until the whole wave is in the handler, so the
    /// dependency's first call, which starts the outage, finds every slot taken by a record
    /// that will wait for it (else how many are in depends on how fast the worker fetched).
    async fn first_wave_in(&self, id: &str) {
        if id[1..].parse::<usize>().is_ok_and(|i| i < self.wave) {
            self.seen.lock().arrived.insert(id.to_owned());
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.seen.lock().arrived.len() < self.wave && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// The records and each one's class (by id). The first record of each key comes first and
/// calls the dependency: the first wave spreads the failures that open the breaker over many
/// records, so none spends its in-place budget on them, and takes every handler slot.
fn plan(rng: &mut StdRng) -> (Vec<Raw>, HashMap<String, Class>) {
    let mut versions = [0i64; KEYS];
    let (mut records, mut classes) = (Vec::new(), HashMap::new());
    for i in 0..RECORDS {
        let k = if i < KEYS {
            i
        } else {
            rng.random_range(0..KEYS)
        };
        let class = match rng.random_range(0..100) {
            _ if i < KEYS => Class::Payments,
            0..=29 => Class::Ok,
            30..=64 => Class::Payments,
            65..=74 => Class::Rejected,
            75..=92 => Class::Flaky(rng.random_range(1..=2 * ATTEMPTS + 1)),
            _ => Class::Undecodable,
        };
        versions[k] += 1;
        let (id, key) = (format!("r{i}"), format!("k{k}"));
        records.push(match class {
            // Its id as the payload: a bare word, not JSON.
            Class::Undecodable => (key.into_bytes(), id.clone().into_bytes()),
            _ => record(&update(&key, versions[k], &id)),
        });
        classes.insert(id, class);
    }
    (records, classes)
}

/// One run: `outages` windows (start, end, in ms) after the first call to the dependency.
async fn run(seed: u64, concurrency: usize, breaker: BreakerConfig, outages: &[(u64, u64)]) {
    let (records, classes) = plan(&mut StdRng::seed_from_u64(seed));
    let s = server().await;
    let (topic, group) = topic_and_group(&s.bootstrap, "dependency-mix", 1).await;
    produce_raw(&s.bootstrap, &topic, &records).await;
    println!("concurrency {concurrency}, {breaker:?}, outages (ms) {outages:?}");
    let ms = Duration::from_millis;
    let payments = Arc::new(Payments {
        outages: outages.iter().map(|&(f, t)| (ms(f), ms(t))).collect(),
        first_call: OnceLock::new(),
        asked: outages.iter().map(|_| AtomicUsize::new(0)).collect(),
        made: outages.iter().map(|_| AtomicUsize::new(0)).collect(),
    });
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mix = Mix {
        plan: Arc::new(classes.clone()),
        payments: payments.clone(),
        seen: seen.clone(),
        wave: concurrency,
    };
    let running = spawn(
        worker(&s.bootstrap, &topic, &group)
            .concurrency(concurrency)
            .retry(Retry::exponential(ATTEMPTS, ms(10), ms(20)))
            .retry_topics([ms(200)])
            .dependency_breaker("payments", breaker.clone())
            .handler(mix),
    );

    let must_apply = classes.values().filter(|c| fate(**c).0).count();
    let routed = classes.values().filter(|c| fate(**c).1).count();
    let dead: HashMap<String, String> = classes
        .iter()
        .filter_map(|(id, c)| Some((id.clone(), fate(*c).2?.to_owned())))
        .collect();
    let deadline = Instant::now() + ms(30_000);
    while seen.lock().handled.len() < must_apply {
        if Instant::now() > deadline {
            let handled = &seen.lock().handled;
            let mut missing: Vec<_> = classes
                .iter()
                .filter(|(id, c)| fate(**c).0 && !handled.contains_key(*id))
                .collect();
            missing.sort_by_key(|(id, _)| id[1..].parse::<usize>().unwrap_or(0));
            panic!("timed out waiting for these records to apply: {missing:?}");
        }
        tokio::time::sleep(ms(50)).await;
    }
    let dlq = format!("{topic}.dlq");
    let dead_read = read_topic(&s.bootstrap, &dlq, dead.len(), ms(20_000));
    let end = log_end(&s.bootstrap, &topic);
    let at_end = || committed(&s.bootstrap, &group, &topic).0 == Some(end);
    eventually(ms(20_000), "the commit to reach the end", at_end).await;
    let stats = running.stop().await;

    // Every record that must apply, exactly once; the dependency's on the source topic within
    // its in-place budget, the flaky ones at attempt n + 1, through the tier past the budget.
    let seen = std::mem::take(&mut *seen.lock());
    for (id, class) in &classes {
        let runs = seen.handled.get(id).map_or(&[][..], Vec::as_slice);
        let (applies, via_tier, _) = fate(*class);
        let fine = match (runs, *class) {
            ([], _) => !applies,
            ([(attempt, on)], Class::Flaky(n)) => {
                applies && *attempt == n + 1 && (*on != topic) == via_tier
            }
            ([(attempt, on)], Class::Payments) => *attempt <= ATTEMPTS && *on == topic,
            ([(attempt, on)], Class::Ok) => *attempt == 1 && *on == topic,
            _ => false,
        };
        assert!(
            fine,
            "{id} ({class:?}) handled as (attempt, topic) {runs:?}"
        );
    }
    assert_eq!(
        (stats.routed_to_tier, stats.dead_lettered),
        (routed as u64, dead.len() as u64),
        "routed and dead-lettered exactly the planned flaky, rejected and undecodable records: {stats:?}"
    );
    let mut in_dlq: HashMap<String, String> = HashMap::new();
    for r in &dead_read {
        let payload = r.payload.clone().unwrap_or_default();
        let id = serde_json::from_slice::<Update>(&payload)
            .map_or_else(|_| String::from_utf8_lossy(&payload).into_owned(), |u| u.id);
        let class = r.headers.get("steadfast-error-class").cloned();
        let again = in_dlq.insert(id.clone(), class.unwrap_or_default());
        assert!(again.is_none(), "{id} dead-lettered twice");
    }
    let dlq_end = log_end(&s.bootstrap, &dlq) as usize;
    let planned = (dead.len(), &dead);
    assert_eq!(
        (dlq_end, &in_dlq),
        planned,
        "the DLQ holds the planned records, classed"
    );

    // The dependency spared. In outage i (D_i long) a call reaches it only (a) while the
    // breaker is closed: min_calls failures open it, plus a call per runtime thread past its
    // permit (from the first call the window holds no success; after an earlier outage, the
    // minimums' 1 ms window holds at most a success per handler slot, each needing a failure
    // more); a failed probe reopens it, so it cannot close mid-outage; or (b) as a probe:
    // half_open_probes per round, rounds open_ms apart, so at most D_i / open_ms + 2 rounds.
    // If the breaker let every call through, made == asked: "made <= bound < asked" fails.
    for (i, (from, to)) in outages.iter().enumerate() {
        let rounds = ((to - from) / breaker.open_ms + 2) as usize;
        let closed = breaker.min_calls as usize + THREADS + if i > 0 { concurrency } else { 0 };
        let bound = closed + breaker.half_open_probes as usize * rounds;
        let asked = payments.asked[i].load(Relaxed);
        let made = payments.made[i].load(Relaxed);
        println!("outage {i}: {made} calls made while down, {asked} asked (bound {bound})");
        assert!(made <= bound, "outage {i}: {made} calls reached the down dependency, more than the {bound} its breaker allows ({asked} asked)");
        assert!(i > 0 || bound < asked, "outage 0: {asked} calls asked while down, not above the {bound} the breaker may let through ({made} made): it spared nothing");
    }
    println!("{must_apply} applied, {routed} routed, {dlq_end} dead-lettered");
    s.handle.shutdown().await;
}

/// Defaults (50 %, 10 s, 20 calls, 3 probes) but a 1 s open period; 32 calls at once; one
/// outage (a second, the window full of successes, could legitimately spend some budgets).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_breakers_defaults_with_wide_concurrency() {
    let seed = support::seed("DEPENDENCY_MIX_SEED", "dependency mix (defaults)");
    let outage = StdRng::seed_from_u64(seed ^ 0x5eed).random_range(1_500..=2_500);
    let breaker = BreakerConfig {
        open_ms: 1_000,
        ..BreakerConfig::default()
    };
    run(seed, 32, breaker, &[(0, outage)]).await;
}

/// Minimums (1 call, 1 probe, 1 ms window), a 300 ms open period; 8 calls at once; one or two
/// outages: a record's second failing call in one (10 ms of backoff later) sees only failures
/// in the window and opens the breaker, so it spends at most one attempt per outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_bounds_minimums_with_narrow_concurrency() {
    let seed = support::seed("DEPENDENCY_MIX_SEED", "dependency mix (minimums)");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let first = rng.random_range(1_200..=2_200);
    let mut outages = vec![(0, first)];
    if rng.random_bool(0.5) {
        let from = first + rng.random_range(200..=800);
        outages.push((from, from + rng.random_range(600..=1_500)));
    }
    let breaker = BreakerConfig {
        failure_rate_percent: 50,
        window_ms: 1,
        min_calls: 1,
        open_ms: 300,
        half_open_probes: 1,
    };
    run(seed, 8, breaker, &outages).await;
}
