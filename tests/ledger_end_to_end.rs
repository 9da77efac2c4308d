//! The ledger example (`examples/ledger.rs`) end to end, as separate worker processes
//! against the in-process server, Postgres and Redis: 50,000 transactions over 500 accounts,
//! mostly in version order, some adjacent pairs out of order, about 10% produced twice,
//! poison pills, transient failures retried in place and some through the first retry tier.
//! Two workers start; the busiest is SIGKILLed and a replacement started, twice, at points
//! chosen by progress (rows in `effects`, not time), and a third joins mid-run. At the end
//! every worker drains on SIGTERM and exits 0. A smaller run does the same with the key
//! locks in Postgres instead of Redis.
//!
//! What must hold: every transaction that must apply is in `effects` exactly once, and no
//! other (no stale version, no duplicate, no poison pill); per account the versions were
//! applied in increasing order; `balances` holds the sum of the applied amounts and the
//! largest applied version; every poison pill is in the dead-letter topic, once (or again
//! only across a SIGKILL that made its record come back: see [`check_dead_letters`]), and
//! nothing else is; the retry tier saw only the transactions meant for it; the group
//! committed every partition to its end.
//!
//! The worker is the example binary, `target/<profile>/examples/ledger`, which `cargo test`
//! without target filters builds (examples are built to check that they compile).
//! `cargo test --test suite ledger_end_to_end` alone neither builds nor rebuilds it (and
//! `--example ledger` builds the example as a test harness instead): run
//! `cargo build --example ledger` first. `LEDGER_E2E_SEED` changes the plan's seed,
//! `LEDGER_E2E_LOGS=<dir>` keeps the workers' logs, `RUST_LOG` sets their filter.
//!
//! A smaller test starts the group from latest and SIGKILLs a worker that committed nothing
//! once it routed a transaction to a retry tier: the next worker applies it (a tier's
//! partitions start at their first record whatever the source starts from).

use crate::support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use support::*;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Records produced by the main run (Redis locks), duplicates included.
const MESSAGES: usize = 50_000;
/// Its accounts (record keys); each gets `MESSAGES / ACCOUNTS` records.
const ACCOUNTS: usize = 500;
/// Partitions of the transactions topic (the worker gives its tiers and DLQ as many).
const PARTITIONS: i32 = 8;
/// How long the workers get to apply everything, from the first worker's start.
const DEADLINE: Duration = Duration::from_secs(240);
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS: &str = "redis://127.0.0.1:6379";
const START_POSTGRES: &str = "start PostgreSQL on 127.0.0.1:5432 (scripts/services.sh)";
const START_REDIS: &str = "start redis-server on 127.0.0.1:6379 (scripts/services.sh)";

/// The example's message, as it reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Txn {
    txn: String,
    account: String,
    amount: i64,
    version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fail: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    poison: Option<bool>,
}

/// What is produced, in order, and what must come of it.
#[derive(Debug, Default)]
struct Plan {
    /// Every record in production order, duplicates included.
    records: Vec<Txn>,
    /// The transactions that must apply, by txn.
    must_apply: HashMap<String, Txn>,
    /// Older versions produced after a newer one of their account: must not apply.
    stale: HashSet<String>,
    /// Poison pills: never applied, dead-lettered.
    poison: HashSet<String>,
    /// `fail: 4`: three in-place attempts fail, so they go through retry tier 1.
    tiered: HashSet<String>,
    /// Transactions produced twice.
    duplicated: usize,
    /// `fail: 1` or `fail: 2`: retried in place.
    retried_in_place: usize,
    /// Expected balance and version per account.
    balances: BTreeMap<String, (i64, i64)>,
}

impl Plan {
    /// Per account: versions 1..=n in order, except that every tenth account has one
    /// adjacent pair swapped (the older version arrives second and is stale); every fifth
    /// account has one poison pill (a version of its own, never the last); every 25th
    /// account's last version fails four times (so it goes through retry tier 1, and being
    /// the last of its key, nothing of the key waits behind it); about 3% of the others fail
    /// once or twice. One record in eleven of each account is a second copy of one of its
    /// transactions (never a poison pill or a tiered one), placed up to five records of the
    /// account after the first. Accounts are interleaved at random.
    fn new(seed: u64, messages: usize, accounts: usize) -> Plan {
        assert_eq!(messages % accounts, 0);
        let per_account = messages / accounts;
        assert!(
            per_account >= 22,
            "room for a swap, a poison pill and duplicates"
        );
        let duplicates = per_account / 11;
        let distinct = per_account - duplicates;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut plan = Plan::default();
        let mut queues: Vec<std::collections::VecDeque<Txn>> = Vec::with_capacity(accounts);
        for a in 0..accounts {
            let account = format!("acct-{a:03}");
            let mut seq: Vec<Txn> = (1..=distinct)
                .map(|v| {
                    let magnitude = rng.random_range(1..=1_000_i64);
                    Txn {
                        txn: format!("t-{a}-{v}"),
                        account: account.clone(),
                        amount: if rng.random_bool(0.2) {
                            -magnitude
                        } else {
                            magnitude
                        },
                        version: i64::try_from(v).expect("a version"),
                        fail: rng.random_bool(0.03).then(|| rng.random_range(1..=2_u32)),
                        poison: None,
                    }
                })
                .collect();
            if a % 10 == 3 {
                let k = rng.random_range(1..distinct - 10);
                seq.swap(k - 1, k);
                let older = &mut seq[k];
                older.fail = None;
                plan.stale.insert(older.txn.clone());
            }
            if a % 5 == 1 {
                let p = rng.random_range(0..distinct - 1);
                seq[p].poison = Some(true);
                seq[p].fail = None;
                plan.poison.insert(seq[p].txn.clone());
            }
            if a % 25 == 7 {
                let last = seq.last_mut().expect("records");
                last.fail = Some(4);
                plan.tiered.insert(last.txn.clone());
            }
            // Where each record goes within its account: the originals at 10 i, a duplicate
            // of record i at 10 (i + d) + 5, before the last record when that one is tiered.
            let mut placed: Vec<(usize, Txn)> = seq
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, t)| (10 * i, t))
                .collect();
            let eligible: Vec<usize> = (0..distinct)
                .filter(|&i| seq[i].poison.is_none() && !plan.tiered.contains(&seq[i].txn))
                .collect();
            // Ordered, so that the seed alone decides the plan.
            let mut chosen = std::collections::BTreeSet::new();
            while chosen.len() < duplicates {
                chosen.insert(eligible[rng.random_range(0..eligible.len())]);
            }
            let cap = if plan.tiered.contains(&seq[distinct - 1].txn) {
                distinct - 2
            } else {
                distinct - 1
            };
            for i in chosen {
                let at = (i + rng.random_range(0..=5)).min(cap.max(i));
                placed.push((10 * at + 5, seq[i].clone()));
            }
            placed.sort_by_key(|(at, _)| *at);
            plan.duplicated += duplicates;

            let mut balance = 0;
            let mut version = 0;
            for t in &seq {
                if t.poison.is_some() || plan.stale.contains(&t.txn) {
                    continue;
                }
                if matches!(t.fail, Some(1 | 2)) {
                    plan.retried_in_place += 1;
                }
                balance += t.amount;
                version = version.max(t.version);
                plan.must_apply.insert(t.txn.clone(), t.clone());
            }
            plan.balances.insert(account, (balance, version));
            queues.push(placed.into_iter().map(|(_, t)| t).collect());
        }
        let mut live: Vec<usize> = (0..accounts).collect();
        while !live.is_empty() {
            let i = rng.random_range(0..live.len());
            match queues[live[i]].pop_front() {
                Some(t) => plan.records.push(t),
                None => {
                    live.swap_remove(i);
                }
            }
        }
        assert_eq!(plan.records.len(), messages);
        plan
    }
}

/// One worker process.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Reaped (killed or exited).
    gone: bool,
}

/// The worker processes of the run, their logs, and when each SIGKILL was sent.
struct Fleet {
    /// The run's tag in printed lines.
    tag: &'static str,
    binary: PathBuf,
    args: Vec<String>,
    logs: PathBuf,
    procs: Vec<Proc>,
    kills: Vec<SystemTime>,
    /// Environment variables of every worker (`STEADFAST_*` settings).
    env: Vec<(&'static str, String)>,
}

impl Fleet {
    /// Starts the next worker, `w<n>`; returns its name.
    fn spawn(&mut self) -> String {
        let name = format!("w{}", self.procs.len() + 1);
        let log = self.logs.join(format!("{name}.log"));
        let stderr = File::create(&log).expect("log file");
        let filter = std::env::var("RUST_LOG")
            .unwrap_or_else(|_| "info,steadfast::policy::stale=warn".to_owned());
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", filter)
            // A killed worker's partitions move on after 6 s instead of librdkafka's 45 s.
            .env("STEADFAST_KAFKA_SESSION_TIMEOUT_MS", "6000")
            .env("STEADFAST_KAFKA_HEARTBEAT_INTERVAL_MS", "1000")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the ledger worker starts");
        let pid = child.id();
        println!("[{}] started worker {name} (pid {pid})", self.tag);
        self.procs.push(Proc {
            name: name.clone(),
            child,
            log,
            gone: false,
        });
        name
    }

    fn proc(&mut self, pid: u32) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.child.id() == pid && !p.gone)
            .expect("a live worker")
    }

    /// SIGKILL (what `Child::kill` sends), then reap.
    fn kill(&mut self, pid: u32) {
        self.kills.push(SystemTime::now());
        let p = self.proc(pid);
        p.child.kill().expect("SIGKILL sent");
        p.child.wait().expect("the killed worker is reaped");
        p.gone = true;
    }

    fn live(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|p| !p.gone)
            .map(|p| p.child.id())
            .collect()
    }

    /// Panics, with the end of its log, when a worker the test did not stop has exited.
    fn assert_none_exited(&mut self) {
        for p in self.procs.iter_mut().filter(|p| !p.gone) {
            if let Some(status) = p.child.try_wait().expect("worker status") {
                p.gone = true;
                panic!(
                    "[{}] worker {} exited on its own with {status}; the end of its log:\n{}",
                    self.tag,
                    p.name,
                    log_tail(&p.log)
                );
            }
        }
    }

    fn name_of(&self, pid: u32) -> String {
        self.procs
            .iter()
            .find(|p| p.child.id() == pid)
            .map_or_else(|| format!("pid {pid}"), |p| p.name.clone())
    }

    /// SIGTERM to every live worker; each must drain and exit 0.
    async fn terminate_all(&mut self, limit: Duration) {
        for pid in self.live() {
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -TERM {pid} failed");
        }
        let deadline = Instant::now() + limit;
        for p in self.procs.iter_mut().filter(|p| !p.gone) {
            let status = loop {
                if let Some(status) = p.child.try_wait().expect("worker status") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "worker {} did not exit within {limit:?} of SIGTERM",
                    p.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            p.gone = true;
            assert!(
                status.success(),
                "worker {} exited with {status} after SIGTERM, not 0; the end of its log:\n{}",
                p.name,
                log_tail(&p.log)
            );
            println!("[{}] worker {} drained and exited 0", self.tag, p.name);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().filter(|p| !p.gone) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!(
                    "---- worker {} (pid {}): last lines of {} ----\n{}",
                    p.name,
                    p.child.id(),
                    p.log.display(),
                    log_tail(&p.log)
                );
            }
        }
    }
}

/// The ledger example's flags for `topic` and `group`, its tables in `schema` of the test
/// database.
pub(crate) fn ledger_args(bootstrap: &str, topic: &str, group: &str, schema: &str) -> Vec<String> {
    [
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--postgres",
        POSTGRES,
        "--schema",
        schema,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The last 40 lines of a worker's log.
fn log_tail(log: &Path) -> String {
    let lines: Vec<String> = File::open(log)
        .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
        .unwrap_or_default();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn postgres() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{START_POSTGRES}: {e}"));
    tokio::spawn(connection);
    client
}

/// Rows of `effects` per worker pid, and the distinct txns among them.
async fn progress(db: &tokio_postgres::Client, schema: &str) -> (HashMap<u32, i64>, i64) {
    let rows = db
        .query(
            &format!("SELECT worker_pid, count(*) FROM {schema}.effects GROUP BY worker_pid"),
            &[],
        )
        .await
        .expect("effects per worker");
    let per_pid = rows
        .iter()
        .map(|r| {
            (
                u32::try_from(r.get::<_, i32>(0)).expect("a pid"),
                r.get::<_, i64>(1),
            )
        })
        .collect();
    let distinct = db
        .query_one(
            &format!("SELECT count(DISTINCT txn) FROM {schema}.effects"),
            &[],
        )
        .await
        .expect("distinct txns")
        .get(0);
    (per_pid, distinct)
}

/// Polls `progress` until `done(distinct txns applied)` holds, printing progress now and
/// then; panics at `deadline`. Returns the rows per worker pid at the last poll and at the
/// one before it, and the distinct txns applied.
async fn wait_for(
    fleet: &mut Fleet,
    db: &tokio_postgres::Client,
    schema: &str,
    deadline: Instant,
    started: Instant,
    what: &str,
    done: impl Fn(i64) -> bool,
) -> (HashMap<u32, i64>, HashMap<u32, i64>, i64) {
    let tag = fleet.tag;
    let mut last_print = Instant::now();
    let mut previous = HashMap::new();
    loop {
        fleet.assert_none_exited();
        let (per_pid, distinct) = progress(db, schema).await;
        if done(distinct) {
            return (per_pid, previous, distinct);
        }
        previous = per_pid.clone();
        if last_print.elapsed() >= Duration::from_secs(10) {
            println!(
                "[{tag}] {:>5.1} s: {distinct} applied, waiting for {what}",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "[{tag}] timed out waiting for {what}: {distinct} txns applied; rows per worker pid: {per_pid:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The live worker that applied the most between two snapshots (ties: the most in all):
/// the one a kill hurts.
fn busiest(fleet: &Fleet, before: &HashMap<u32, i64>, now: &HashMap<u32, i64>) -> u32 {
    fleet
        .live()
        .into_iter()
        .max_by_key(|pid| {
            let total = *now.get(pid).unwrap_or(&0);
            (total - before.get(pid).unwrap_or(&0), total)
        })
        .expect("a live worker")
}

fn header(r: &steadfast_testkit::Received, name: &str) -> Option<String> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn txn_of(r: &steadfast_testkit::Received) -> Txn {
    serde_json::from_slice(r.payload.as_deref().expect("a payload")).expect("a ledger txn")
}

/// Every poison pill is in the DLQ and nothing else is. A dead letter is published (and
/// acknowledged) before its record's offset is finished, and committed up to a second
/// later: a SIGKILL in between brings the record back, and the new owner dead-letters it
/// again (unless a newer version of its account was applied meanwhile, which makes it stale).
/// Kafka offers no atomic "publish and commit" here, so a second copy is allowed exactly
/// when a SIGKILL was sent between the two copies' failures; any other repeat fails.
fn check_dead_letters(
    tag: &str,
    plan: &Plan,
    dlq: &[steadfast_testkit::Received],
    kills: &[SystemTime],
) {
    let mut copies: HashMap<String, Vec<OffsetDateTime>> = HashMap::new();
    for r in dlq {
        let t = txn_of(r);
        assert!(
            plan.poison.contains(&t.txn),
            "{} (not a poison pill) was dead-lettered: {:?}",
            t.txn,
            header(r, "steadfast-error-message")
        );
        assert_eq!(
            header(r, "steadfast-error-class").as_deref(),
            Some("permanent"),
            "dead letter of {}",
            t.txn
        );
        let failed_at = header(r, "steadfast-last-failure-at").expect("a failure time");
        let failed_at = OffsetDateTime::parse(&failed_at, &Rfc3339).expect("RFC 3339");
        copies.entry(t.txn).or_default().push(failed_at);
    }
    let missing: Vec<&String> = plan
        .poison
        .iter()
        .filter(|t| !copies.contains_key(*t))
        .collect();
    assert!(
        missing.is_empty(),
        "poison pills not dead-lettered: {missing:?}"
    );
    let kills: Vec<OffsetDateTime> = kills.iter().map(|&k| OffsetDateTime::from(k)).collect();
    let mut repeated = 0;
    for (txn, times) in &mut copies {
        times.sort();
        for pair in times.windows(2) {
            repeated += 1;
            assert!(
                kills.iter().any(|k| pair[0] <= *k && *k <= pair[1]),
                "{txn} was dead-lettered again at {} without a SIGKILL since its copy of {}",
                pair[1],
                pair[0]
            );
        }
    }
    println!(
        "[{tag}] dead letters: {} poison pills, {} records, {repeated} repeated across a SIGKILL",
        plan.poison.len(),
        dlq.len()
    );
}

/// Deletes the run's Redis keys (`ledger:<schema>:...`).
async fn delete_redis_keys(prefix: &str) {
    let client = redis::Client::open(REDIS).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{START_REDIS}: {e}"));
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("DEL");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// With `--batch`: the rows of one batch were written by one database transaction, so they
/// share their `xmin` (`started_at` is not unique: two batch calls can start in the same
/// microsecond). Batches held more than one transaction, and every transaction applied at a
/// later attempt (it failed in place first) was applied alone: a record that fails in a batch
/// is retried by itself.
async fn check_batches(tag: &str, db: &tokio_postgres::Client, schema: &str) {
    let row = db
        .query_one(
            &format!(
                "SELECT max(n), avg(n)::float8, count(*) FROM
                     (SELECT count(*) AS n FROM {schema}.effects GROUP BY xmin::text) b"
            ),
            &[],
        )
        .await
        .expect("batch sizes");
    let (largest, mean, batches): (i64, f64, i64) = (row.get(0), row.get(1), row.get(2));
    println!("[{tag}] {batches} batches applied; mean {mean:.1} transactions, largest {largest}");
    assert!(
        largest > 1,
        "[{tag}] no batch held more than one transaction"
    );
    let shared: Vec<(String, i32, i64)> = db
        .query(
            &format!(
                "SELECT e.txn, e.attempt, b.n
                 FROM (SELECT txn, attempt, xmin::text AS batch FROM {schema}.effects) e
                 JOIN (SELECT xmin::text AS batch, count(*) AS n FROM {schema}.effects
                       GROUP BY xmin::text) b USING (batch)
                 WHERE e.attempt > 1 AND b.n > 1"
            ),
            &[],
        )
        .await
        .expect("retried transactions")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        shared.is_empty(),
        "[{tag}] transactions retried in place were applied in a batch with others (txn, attempt, batch size): {shared:?}"
    );
}

/// Where the workers keep their key locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locks {
    Redis,
    Postgres,
}

/// One run: how much is produced, where the locks live, and what happens to the workers.
#[derive(Debug)]
struct Scenario {
    messages: usize,
    accounts: usize,
    locks: Locks,
    /// Progress points (fractions of the transactions that must apply) at which the live
    /// worker busiest at that moment is SIGKILLed and a replacement started at once.
    kills: &'static [f64],
    /// The progress point at which one more worker joins.
    join_at: Option<f64>,
    /// `--batch N`: the batch handler, up to N transactions per database transaction.
    batch: Option<u32>,
}

/// The main run: 50,000 records, Redis locks, two workers, two SIGKILLs with restarts, a
/// third worker joining. About 130 s here, of which about 90 s is the two killed members'
/// session timeouts (librdkafka's default 45 s: the example does not set it), during which
/// the partitions the killed worker held wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_with_redis_locks_applies_50_000_transactions_once_through_kills_and_a_join() {
    run(Scenario {
        messages: MESSAGES,
        accounts: ACCOUNTS,
        locks: Locks::Redis,
        kills: &[0.1, 0.4],
        join_at: Some(0.6),
        batch: None,
    })
    .await;
}

/// The same with the key locks in Postgres (no `--redis`), smaller: 10,000 records over 100
/// accounts, one SIGKILL with a restart (about 70 s, 45 of them the killed member's session
/// timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_with_postgres_locks_applies_every_transaction_once_through_a_kill() {
    run(Scenario {
        messages: 10_000,
        accounts: 100,
        locks: Locks::Postgres,
        kills: &[0.3],
        join_at: None,
        batch: None,
    })
    .await;
}

/// The batch handler (`--batch 64`, four batches at once per worker): 20,000 records over
/// 400 accounts, Redis locks, two SIGKILLs (each lands while batches are open: a worker
/// always has some) with restarts and a worker joining. Poison pills and transactions that
/// fail at their first attempts sit in batches with others: they fail alone, and the rest of
/// their batch is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_in_batches_applies_every_transaction_once_through_kills_and_a_join() {
    run(Scenario {
        messages: 20_000,
        accounts: 400,
        locks: Locks::Redis,
        kills: &[0.15, 0.5],
        join_at: Some(0.7),
        batch: Some(64),
    })
    .await;
}

/// One run at a time: each worker process pools up to 16 Postgres connections, and two runs'
/// workers together come near Postgres's default limit of 100 connections.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(scenario: Scenario) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let binary = example_binary("ledger");
    if scenario.locks == Locks::Redis {
        assert!(
            std::net::TcpStream::connect_timeout(
                &"127.0.0.1:6379".parse().expect("address"),
                Duration::from_secs(2)
            )
            .is_ok(),
            "{START_REDIS}"
        );
    }
    let db = postgres().await;
    let seed = std::env::var("LEDGER_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_251_202_u64);
    let plan = Plan::new(seed, scenario.messages, scenario.accounts);
    let expected = i64::try_from(plan.must_apply.len()).expect("a count");
    let tag = match (scenario.locks, scenario.batch) {
        (_, Some(_)) => "batch",
        (Locks::Redis, None) => "redis",
        (Locks::Postgres, None) => "pg",
    };
    println!(
        "[{tag}] plan (seed {seed}): {} records over {} accounts; {} must apply; {} produced \
         twice; {} stale; {} poison; {} retried in place; {} through retry tier 1",
        plan.records.len(),
        scenario.accounts,
        expected,
        plan.duplicated,
        plan.stale.len(),
        plan.poison.len(),
        plan.retried_in_place,
        plan.tiered.len()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(&dir.path().join("data")).await;
    let bootstrap = server.bootstrap_servers();
    let topic = steadfast_testkit::unique_topic("ledger");
    let group = format!("{topic}-group");
    let schema = format!("ledger_e2e_{}", uuid::Uuid::new_v4().simple());
    create_topic(&bootstrap, &topic, PARTITIONS).await;

    let produce_started = Instant::now();
    let records: Vec<(Vec<u8>, Vec<u8>)> = plan
        .records
        .iter()
        .map(|t| {
            (
                t.account.as_bytes().to_vec(),
                serde_json::to_vec(t).expect("encodes"),
            )
        })
        .collect();
    produce_to(&bootstrap, &topic, &records, None).await;
    println!(
        "[{tag}] produced {} records in {:.1} s",
        records.len(),
        produce_started.elapsed().as_secs_f64()
    );

    // The workers' logs: in the temp dir (their tails are printed on failure), or kept in
    // `LEDGER_E2E_LOGS/<redis|pg>` when that is set.
    let logs = std::env::var_os("LEDGER_E2E_LOGS")
        .map_or_else(|| dir.path().join("logs"), |d| PathBuf::from(d).join(tag));
    std::fs::create_dir_all(&logs).expect("logs dir");
    let mut args = ledger_args(&bootstrap, &topic, &group, &schema);
    if scenario.locks == Locks::Redis {
        args.extend(["--redis".to_owned(), REDIS.to_owned()]);
    }
    if let Some(n) = scenario.batch {
        args.extend([
            "--batch".to_owned(),
            n.to_string(),
            "--concurrency".to_owned(),
            "4".to_owned(),
        ]);
    }
    let mut fleet = Fleet {
        tag,
        binary,
        args,
        logs,
        procs: Vec::new(),
        kills: Vec::new(),
        env: Vec::new(),
    };
    let started = Instant::now();
    let deadline = started + DEADLINE;
    fleet.spawn();
    fleet.spawn();
    let table = format!("{schema}.effects");
    loop {
        let exists: bool = db
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .expect("to_regclass")
            .get(0);
        if exists {
            break;
        }
        fleet.assert_none_exited();
        assert!(
            Instant::now() < deadline,
            "the workers never created {table}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The kills and the join, in order of their progress points.
    let mut events: Vec<(f64, bool)> = scenario.kills.iter().map(|&f| (f, true)).collect();
    events.extend(scenario.join_at.map(|f| (f, false)));
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (fraction, kill) in events {
        let point = (expected as f64 * fraction) as i64;
        let what = format!("{:.0}% applied", fraction * 100.0);
        let (now, before, n) = wait_for(&mut fleet, &db, &schema, deadline, started, &what, |n| {
            n >= point
        })
        .await;
        assert!(n < expected, "[{tag}] everything was applied before {what}");
        if kill {
            let victim = busiest(&fleet, &before, &now);
            let name = fleet.name_of(victim);
            fleet.kill(victim);
            let replacement = fleet.spawn();
            println!(
                "[{tag}] {:>5.1} s: SIGKILLed {name} at {n} applied; {replacement} replaces it",
                started.elapsed().as_secs_f64()
            );
        } else {
            let joiner = fleet.spawn();
            println!(
                "[{tag}] {:>5.1} s: {joiner} joins at {n} applied",
                started.elapsed().as_secs_f64()
            );
        }
    }

    let (per_pid, _, _) = wait_for(
        &mut fleet,
        &db,
        &schema,
        deadline,
        started,
        "every transaction applied",
        |n| n >= expected,
    )
    .await;
    let applied_in = started.elapsed();
    let mut per_worker: Vec<String> = per_pid
        .iter()
        .map(|(pid, n)| format!("{}={n}", fleet.name_of(*pid)))
        .collect();
    per_worker.sort();
    println!(
        "[{tag}] {:>5.1} s: all {expected} applied; effects rows per worker: {}",
        applied_in.as_secs_f64(),
        per_worker.join(" ")
    );

    // Every record of the topic and of retry tier 1 finished and committed.
    for t in [topic.clone(), format!("{topic}.{group}.retry.1")] {
        loop {
            let (b, g, tt) = (bootstrap.clone(), group.clone(), t.clone());
            let (committed, ends) =
                tokio::task::spawn_blocking(move || committed_and_ends(&b, &g, &tt, PARTITIONS))
                    .await
                    .expect("offsets read");
            let done = committed
                .iter()
                .zip(&ends)
                .all(|(c, e)| *e == 0 || *c == Some(*e));
            if done {
                break;
            }
            fleet.assert_none_exited();
            assert!(
                Instant::now() < deadline,
                "[{tag}] {t}: committed {committed:?}, log ends {ends:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    println!(
        "[{tag}] {:>5.1} s: every partition of {topic} and its retry tier 1 committed to its end",
        started.elapsed().as_secs_f64()
    );
    fleet.terminate_all(Duration::from_secs(60)).await;
    let stopped_in = started.elapsed();

    // Exactly once, nothing else.
    let rows = db
        .query(
            &format!("SELECT txn, count(*) FROM {schema}.effects GROUP BY txn HAVING count(*) > 1"),
            &[],
        )
        .await
        .expect("duplicates");
    let twice: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    // Ordered by account, then by `finished_at`: `clock_timestamp()` at the effect's insert,
    // inside the transaction. Two transactions of one account cannot overlap past their
    // first statement: steadfast's version compare-and-set at the start of each locks the
    // account's row in `steadfast_versions` until commit, so a later transaction's insert
    // runs after the earlier one committed. Per account this order is the commit order, and
    // a version applied after a newer one (stale, or out of order) shows as a decrease.
    let rows = db
        .query(
            &format!(
                "SELECT txn, account, amount, version, finished_at FROM {schema}.effects \
                 ORDER BY account, finished_at"
            ),
            &[],
        )
        .await
        .expect("effects");
    let mut seen = HashSet::new();
    let mut unexpected = Vec::new();
    let mut last: Option<(String, i64, SystemTime)> = None;
    for r in &rows {
        let (txn, account, amount, version, finished): (String, String, i64, i64, SystemTime) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        match plan.must_apply.get(&txn) {
            Some(t) => assert_eq!(
                (&t.account, t.amount, t.version),
                (&account, amount, version),
                "{txn} applied with other values"
            ),
            None => unexpected.push(format!(
                "{txn} ({})",
                if plan.stale.contains(&txn) {
                    "stale"
                } else if plan.poison.contains(&txn) {
                    "poison"
                } else {
                    "unknown"
                }
            )),
        }
        if let Some((last_account, last_version, last_finished)) = &last {
            if *last_account == account {
                assert!(
                    version > *last_version && finished > *last_finished,
                    "{account}: version {version} ({txn}) applied after version {last_version}"
                );
            }
        }
        last = Some((account, version, finished));
        seen.insert(txn);
    }
    assert!(
        unexpected.is_empty(),
        "applied but must not be: {unexpected:?}"
    );
    let missing: Vec<&String> = plan
        .must_apply
        .keys()
        .filter(|t| !seen.contains(*t))
        .collect();
    assert!(missing.is_empty(), "never applied: {missing:?}");

    let rows = db
        .query(
            &format!("SELECT account, balance, version FROM {schema}.balances ORDER BY account"),
            &[],
        )
        .await
        .expect("balances");
    let balances: BTreeMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(
        balances, plan.balances,
        "balances (sum of applied amounts, largest applied version) per account"
    );

    // The dead-letter topic, and the retry tiers.
    let (b, t, g) = (bootstrap.clone(), topic.clone(), group.clone());
    let (dlq, tier1, tier2) = tokio::task::spawn_blocking(move || {
        (
            read_all(&b, &format!("{t}.dlq"), PARTITIONS),
            read_all(&b, &format!("{t}.{g}.retry.1"), PARTITIONS),
            read_all(&b, &format!("{t}.{g}.retry.2"), PARTITIONS),
        )
    })
    .await
    .expect("topics read");
    check_dead_letters(tag, &plan, &dlq, &fleet.kills);
    let tiered: HashSet<String> = tier1.iter().map(|r| txn_of(r).txn).collect();
    assert_eq!(tiered, plan.tiered, "what went through retry tier 1");
    assert!(
        tier2.is_empty(),
        "nothing needs retry tier 2: {:?}",
        tier2.iter().map(|r| txn_of(r).txn).collect::<Vec<_>>()
    );
    println!(
        "[{tag}] retry tier 1: {} records for {} transactions; effects: {} rows; applied in {:.1} s, \
         stopped in {:.1} s",
        tier1.len(),
        tiered.len(),
        seen.len(),
        applied_in.as_secs_f64(),
        stopped_in.as_secs_f64()
    );
    if scenario.batch.is_some() {
        check_batches(tag, &db, &schema).await;
    }

    drop(fleet);
    server.shutdown().await;
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop the run's schema");
    if scenario.locks == Locks::Redis {
        delete_redis_keys(&format!("ledger:{schema}")).await;
    }
}

/// Rows of `effects` for `txn`.
async fn applied(db: &tokio_postgres::Client, schema: &str, txn: &str) -> i64 {
    db.query_one(
        &format!("SELECT count(*) FROM {schema}.effects WHERE txn = $1"),
        &[&txn],
    )
    .await
    .expect("effects of a txn")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_from_latest_loses_nothing_to_a_kill_before_the_first_commit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let binary = example_binary("ledger");
    let db = postgres().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(&dir.path().join("data")).await;
    let bootstrap = server.bootstrap_servers();
    let topic = steadfast_testkit::unique_topic("ledger_latest");
    let group = format!("{topic}-group");
    let tier = format!("{topic}.{group}.retry.1");
    let schema = format!("ledger_latest_{}", uuid::Uuid::new_v4().simple());
    create_topic(&bootstrap, &topic, 1).await;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let mut args = ledger_args(&bootstrap, &topic, &group, &schema);
    args.extend(["--redis".to_owned(), REDIS.to_owned()]);
    let mut fleet = Fleet {
        tag: "latest",
        binary,
        args,
        logs,
        procs: Vec::new(),
        kills: Vec::new(),
        // Nothing is committed before the kill: the first commit would be an hour in.
        env: vec![
            ("STEADFAST_START_FROM", "latest".to_owned()),
            ("STEADFAST_COMMIT_INTERVAL_MS", "3600000".to_owned()),
        ],
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let txn = |txn: &str, account: &str, version: i64, fail: Option<u32>| {
        let t = Txn {
            txn: txn.to_owned(),
            account: account.to_owned(),
            amount: 1,
            version,
            fail,
            poison: None,
        };
        vec![(
            t.account.as_bytes().to_vec(),
            serde_json::to_vec(&t).expect("encodes"),
        )]
    };

    // Markers until one is applied: the worker reads from the log's end on.
    fleet.spawn();
    let table = format!("{schema}.effects");
    for n in 1.. {
        fleet.assert_none_exited();
        produce_to(
            &bootstrap,
            &topic,
            &txn(&format!("m{n}"), "marker", n, None),
            None,
        )
        .await;
        let exists: bool = db
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .expect("to_regclass")
            .get(0);
        if exists && progress(&db, &schema).await.1 > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no marker applied in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The source's start was committed at the first assignment (the periodic commit is an
    // hour away).
    assert!(
        committed(&bootstrap, &group, &topic).0.is_some(),
        "the group's start on the source is committed"
    );

    // Fails its three attempts in place and its first in a tier: routed to tier 1 (due a
    // second later), where the worker is killed. With it, a later record of the same account:
    // parked behind the tier record (strict order), unfinished at the kill, past the source's
    // end when the group first started. Both go out before the routing, so that the kill
    // follows the routing by no more than the poll below (on a loaded machine, a produce
    // between the two took past the tier's delay once, and the tier record ran first).
    let mut both = txn("tiered", "a1", 1, Some(4));
    both.extend(txn("parked", "a1", 2, None));
    produce_to(&bootstrap, &topic, &both, None).await;
    loop {
        fleet.assert_none_exited();
        if log_end(&bootstrap, &tier) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing routed to {tier} in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = fleet.live()[0];
    fleet.kill(pid);
    let (committed, _) = committed(&bootstrap, &group, &tier);
    assert_eq!(committed, None, "nothing of the tier was committed");
    assert_eq!(applied(&db, &schema, "tiered").await, 0);
    assert_eq!(
        applied(&db, &schema, "parked").await,
        0,
        "parked at the kill"
    );

    // The next worker, from latest too, starts the tier at its first record and the source
    // where the group first started (not at the log's end, past the parked record).
    fleet.spawn();
    loop {
        fleet.assert_none_exited();
        if applied(&db, &schema, "parked").await > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the parked transaction was not applied after the kill (tier record applied {} times)",
            applied(&db, &schema, "tiered").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.terminate_all(Duration::from_secs(60)).await;
    assert_eq!(applied(&db, &schema, "tiered").await, 1, "applied once");
    assert_eq!(applied(&db, &schema, "parked").await, 1, "applied once");
    delete_redis_keys(&format!("ledger:{schema}")).await;
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop schema");
    server.shutdown().await;
}
