//! Batch handlers through the whole stack (`TestWorker`) with the once-only path on the
//! suite's Postgres: a seeded mix of every outcome class, delivered together so that the
//! records share batches, must end exactly as an oracle over the plan says — at the default
//! batch settings and at the minimums — and each record's failure, panic or time-out must
//! stay its own. `BATCH_MIX_SEED=<n>` replays a seed.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use steadfast::handler::{Batch, BatchContext};
use steadfast::message::{DropReason, ErrorClass, RouteTarget};
use steadfast::testing::TestWorker;
use steadfast::{Envelope, HandlerError, Message, Outcome, Retry};

/// What a record makes the handler do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Act {
    /// Applied.
    Ok,
    /// Failed transiently (with `item.fail`) at its first `n` attempts.
    Fail { n: u32 },
    /// Failed permanently.
    Permanent,
    /// Panics the batch call it is in.
    Panic,
    /// Keeps its batch call past the time limit at its first `n` attempts.
    Slow { n: u32 },
}

/// A record of the mix.
#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "batch-mix", key = key, version = version, id = id)]
struct Op {
    key: String,
    version: i64,
    id: String,
    act: Act,
}

/// The handler's time limit in the tests; a slow record sleeps twice that. Generous: a
/// record that is not slow must never reach it, even on a loaded machine while the pool's
/// first connections are made (at 400 ms a loaded CI run saw first-round records time out).
const LIMIT: Duration = Duration::from_millis(1_000);

/// The suite's Postgres for the mixes' transactions, with commits that do not wait for the
/// write-ahead log's flush: under a loaded disk (a CI build writing beside the tests) a
/// flush once took over a second and the time limit cut a whole round of batches. What the
/// mixes check (each record's outcome, every effect once) does not rest on the flush.
fn unflushed_postgres() -> String {
    format!(
        "{}?options=-c%20synchronous_commit%3Doff",
        support::POSTGRES_URL
    )
}

/// Applies each record's effect row in its batch's transaction, failing, panicking or
/// sleeping as its act says; notes each call's size and its records' attempts.
#[derive(Clone, steadfast::Handler)]
#[handler(message = Op, group = "batch-mix", batch)]
struct Mixed {
    insert: Arc<str>,
    calls: Arc<Mutex<Vec<Vec<u32>>>>,
}

impl Mixed {
    async fn handle_batch(&self, batch: Batch<Op>, cx: &BatchContext) -> Result<(), HandlerError> {
        self.calls
            .lock()
            .push(batch.iter().map(|i| i.context().attempt()).collect());
        let mut slow = false;
        for item in &batch {
            let attempt = item.context().attempt();
            match item.message().act {
                Act::Fail { n } if attempt <= n => item.fail(HandlerError::transient(format!(
                    "{} fails at attempt {attempt}",
                    item.message().id
                ))),
                Act::Permanent => item.fail(HandlerError::permanent("invalid")),
                Act::Panic => panic!("{} panics", item.message().id),
                Act::Slow { n } if attempt <= n => slow = true,
                _ => {}
            }
        }
        if slow {
            tokio::time::sleep(LIMIT * 2).await;
        }
        let Some(tx) = cx.transaction().await? else {
            return Ok(());
        };
        for item in batch.iter().filter(|item| tx.applies(item)) {
            tx.execute(&*self.insert, &[&item.message().id]).await?;
        }
        tx.commit().await
    }
}

/// A record of the plan: its message (or an undecodable payload under its key) and the
/// outcome it must have.
#[derive(Debug, Clone)]
struct Planned {
    op: Op,
    undecodable: bool,
    expect: Expect,
}

/// The outcome a planned record must have.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Applied { attempt: u32 },
    Dropped(DropReason),
    DeadLettered(ErrorClass),
}

/// Rounds of records, each round over distinct keys (they are delivered together); every
/// outcome class in each round at some rate. Attempts in place: 3.
fn plan(seed: u64) -> Vec<Vec<Planned>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys: Vec<String> = (0..40).map(|k| format!("k{k}")).collect();
    let mut applied: HashMap<String, (i64, String)> = HashMap::new();
    let mut next_version: HashMap<String, i64> = HashMap::new();
    let mut rounds = Vec::new();
    let mut serial = 0;
    for _ in 0..20 {
        let mut round = Vec::new();
        let mut pool = keys.clone();
        let size = rng.random_range(1..=24);
        for _ in 0..size {
            let key = pool.swap_remove(rng.random_range(0..pool.len()));
            serial += 1;
            let id = format!("op{serial}");
            let draw = rng.random_range(0..100);
            let planned = match (draw, applied.get(&key)) {
                (0..=9, Some((version, old_id))) => Planned {
                    // The same record again.
                    op: op(&key, *version, old_id, Act::Ok),
                    undecodable: false,
                    expect: Expect::Dropped(DropReason::Duplicate),
                },
                (10..=17, Some((version, _))) => Planned {
                    op: op(&key, version - 1, &id, Act::Ok),
                    undecodable: false,
                    expect: Expect::Dropped(DropReason::Stale),
                },
                (18..=21, _) => Planned {
                    op: op(&key, 0, &id, Act::Ok),
                    undecodable: true,
                    expect: Expect::DeadLettered(ErrorClass::Decode),
                },
                _ => {
                    let act = match rng.random_range(0..100) {
                        0..=54 => Act::Ok,
                        55..=74 => Act::Fail {
                            n: rng.random_range(1..=3),
                        },
                        75..=82 => Act::Permanent,
                        83..=90 => Act::Panic,
                        _ => Act::Slow {
                            n: rng.random_range(1..=3),
                        },
                    };
                    let version = next_version.entry(key.clone()).or_insert(0);
                    *version += rng.random_range(1..=3);
                    let expect = match act {
                        Act::Ok => Expect::Applied { attempt: 1 },
                        Act::Fail { n } | Act::Slow { n } if n < 3 => {
                            Expect::Applied { attempt: n + 1 }
                        }
                        Act::Fail { .. } => Expect::DeadLettered(ErrorClass::Transient),
                        Act::Slow { .. } => Expect::DeadLettered(ErrorClass::Timeout),
                        Act::Permanent => Expect::DeadLettered(ErrorClass::Permanent),
                        Act::Panic => Expect::DeadLettered(ErrorClass::Panic),
                    };
                    if matches!(expect, Expect::Applied { .. }) {
                        applied.insert(key.clone(), (*version, id.clone()));
                    }
                    Planned {
                        op: op(&key, *version, &id, act),
                        undecodable: false,
                        expect,
                    }
                }
            };
            round.push(planned);
        }
        rounds.push(round);
    }
    rounds
}

fn op(key: &str, version: i64, id: &str, act: Act) -> Op {
    Op {
        key: key.to_owned(),
        version,
        id: id.to_owned(),
        act,
    }
}

/// What an outcome came to, as the plan states it.
fn observed(outcome: &Outcome, dead_letter_class: Option<ErrorClass>) -> Option<Expect> {
    match outcome {
        Outcome::Ack { attempt } => Some(Expect::Applied { attempt: *attempt }),
        Outcome::Drop(reason) => Some(Expect::Dropped(*reason)),
        Outcome::Routed {
            target: RouteTarget::DeadLetter,
            ..
        } => dead_letter_class.map(Expect::DeadLettered),
        _ => None,
    }
}

/// Runs the plan of `seed` with batches of up to `max_batch` waiting up to `linger`.
async fn run_mix(seed: u64, max_batch: usize, linger: Duration) {
    let client = postgres().await;
    let flush: String = connect(&unflushed_postgres())
        .await
        .query_one("SHOW synchronous_commit", &[])
        .await
        .expect("the setting")
        .get(0);
    assert_eq!(
        flush, "off",
        "the mixes' Postgres URL sets synchronous_commit"
    );
    let schema = format!("batch_mix_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.effects (id text NOT NULL)"
        ))
        .await
        .expect("effects table");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let worker = TestWorker::new(Mixed {
        insert: Arc::from(format!("INSERT INTO {schema}.effects (id) VALUES ($1)")),
        calls: calls.clone(),
    })
    .transactions(unflushed_postgres(), schema.clone())
    .retry(Retry::exponential(3, Duration::ZERO, Duration::ZERO))
    .handler_timeout(LIMIT)
    .batches(max_batch, linger);
    let rounds = plan(seed);
    let mut failures = Vec::new();
    let mut must_apply = HashSet::new();
    let mut cut_commits = Vec::new();
    for (r, round) in rounds.iter().enumerate() {
        let dead_before = worker.dead_letters().len();
        let outcomes = futures::future::join_all(round.iter().map(|p| {
            let payload = if p.undecodable {
                b"{not json".to_vec()
            } else {
                p.op.encode().expect("encodes")
            };
            worker.handle_envelope(Envelope::new(
                Op::TOPIC,
                p.op.key.clone().into_bytes(),
                payload,
            ))
        }))
        .await;
        let dead = worker.dead_letters();
        let classes: HashMap<String, (ErrorClass, String)> = dead[dead_before..]
            .iter()
            .filter_map(|d| {
                let key = String::from_utf8(d.key.clone()?.to_vec()).ok()?;
                let class = d
                    .headers
                    .get_str(steadfast::message::headers::ERROR_CLASS)?
                    .parse()
                    .ok()?;
                let message = d
                    .headers
                    .get_str(steadfast::message::headers::ERROR_MESSAGE)
                    .unwrap_or_default()
                    .to_owned();
                Some((key, (class, message)))
            })
            .collect();
        for (p, outcome) in round.iter().zip(&outcomes) {
            let dead = classes.get(&p.op.key);
            let got = observed(outcome, dead.map(|(class, _)| class.clone()));
            if matches!(p.expect, Expect::Applied { .. }) && matches!(got, Some(Expect::Dropped(_)))
            {
                // A batch cut by the time limit while its commit was on its way: the commit
                // landed, and the record, run again, found itself applied. Its effect must
                // be there once (checked below with the rest).
                cut_commits.push(p.op.id.clone());
            } else if got.as_ref() != Some(&p.expect) {
                failures.push(format!(
                    "round {r} {} {:?}: expected {:?}, got {outcome:?} ({got:?}; {:?})",
                    p.op.id,
                    p.op.act,
                    p.expect,
                    dead.map(|(_, message)| message)
                ));
            }
            if matches!(p.expect, Expect::Applied { .. }) {
                must_apply.insert(p.op.id.clone());
            }
        }
    }
    let rows: Vec<String> = client
        .query(&format!("SELECT id FROM {schema}.effects"), &[])
        .await
        .expect("effects")
        .iter()
        .map(|r| r.get(0))
        .collect();
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop the test schema");
    let calls = calls.lock().clone();
    let largest = calls.iter().map(Vec::len).max().unwrap_or(0);
    println!(
        "seed {seed}, max_batch {max_batch}, linger {linger:?}: {} records in {} batch calls, largest {largest}; {} effects; applied by a commit the time limit cut: {cut_commits:?}",
        rounds.iter().map(Vec::len).sum::<usize>(),
        calls.len(),
        rows.len()
    );
    assert!(
        failures.is_empty(),
        "seed {seed} (replay with BATCH_MIX_SEED={seed}): {} records ended otherwise than planned:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let distinct: HashSet<String> = rows.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        rows.len(),
        "seed {seed}: an effect applied twice"
    );
    assert_eq!(distinct, must_apply, "seed {seed}: the applied effects");
    if max_batch > 1 {
        assert!(largest > 1, "seed {seed}: no batch held two records");
    } else {
        assert_eq!(largest, 1, "max_batch 1 held more");
    }
    let shared_retries: Vec<&Vec<u32>> = calls
        .iter()
        .filter(|attempts| attempts.len() > 1 && attempts.iter().any(|a| *a > 1))
        .collect();
    assert!(
        shared_retries.is_empty(),
        "seed {seed}: retried records shared a batch: {shared_retries:?}"
    );
}

/// A connection to the suite's Postgres.
async fn postgres() -> tokio_postgres::Client {
    connect(support::POSTGRES_URL).await
}

/// A connection to the suite's Postgres at `url`.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("Postgres on 127.0.0.1:5432 (start it with scripts/services.sh)");
    tokio::spawn(connection);
    client
}

fn seed() -> u64 {
    support::seed("BATCH_MIX_SEED", "batch mix")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_mix_in_batches_ends_as_planned_at_the_default_batch_settings() {
    let defaults = steadfast::WorkerConfig::default();
    run_mix(
        seed(),
        defaults.max_batch,
        Duration::from_millis(defaults.batch_linger_ms),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_mix_in_batches_ends_as_planned_at_the_minimums() {
    let seed = seed();
    run_mix(seed, 1, Duration::ZERO).await;
    run_mix(seed, 2, Duration::ZERO).await;
}

/// Fails an applied record after the transaction began: the commit refuses, nothing of the
/// batch is applied, and every record is handled again (alone) and applied once.
#[derive(Clone, steadfast::Handler)]
#[handler(message = Op, group = "batch-late-failure", batch)]
struct FailsLate {
    insert: Arc<str>,
}

impl FailsLate {
    async fn handle_batch(&self, batch: Batch<Op>, cx: &BatchContext) -> Result<(), HandlerError> {
        let Some(tx) = cx.transaction().await? else {
            return Ok(());
        };
        for item in batch.iter().filter(|item| tx.applies(item)) {
            tx.execute(&*self.insert, &[&item.message().id]).await?;
            if item.message().act == Act::Permanent && item.context().attempt() == 1 {
                item.fail(HandlerError::transient("found wanting after its write"));
            }
        }
        tx.commit().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failed_after_its_write_rolls_the_batch_back_and_nothing_applies_twice() {
    let client = postgres().await;
    let schema = format!("batch_late_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.effects (id text NOT NULL)"
        ))
        .await
        .expect("effects table");
    let worker = TestWorker::new(FailsLate {
        insert: Arc::from(format!("INSERT INTO {schema}.effects (id) VALUES ($1)")),
    })
    .transactions(support::POSTGRES_URL, schema.clone())
    .retry(Retry::exponential(3, Duration::ZERO, Duration::ZERO))
    .batches(16, Duration::from_millis(50));
    let ops: Vec<Op> = (0..8)
        .map(|i| {
            let act = if i == 3 { Act::Permanent } else { Act::Ok };
            op(&format!("k{i}"), 1, &format!("late{i}"), act)
        })
        .collect();
    let outcomes = worker.handle_all(&ops).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Ack { attempt: 2 }),
        "every record handled again and applied at its second attempt: {outcomes:?}"
    );
    let rows: i64 = client
        .query_one(
            &format!("SELECT count(DISTINCT id) * 1000 + count(*) FROM {schema}.effects"),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 8_008, "8 effects, each once");
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop the test schema");
}
