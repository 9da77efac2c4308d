//! The chaos test: seeded workloads through real worker processes while workers, the server,
//! Redis and Postgres are killed and restarted, with every invariant checked from outside.
//!
//! Per seed ([`plan::Plan::new`] draws everything from it): a few hundred records over many
//! keys with every outcome class (ok, duplicate id, stale version, transient for 1..=6 attempts
//! so some pass through tier 1 and tier 2, retry-after, handler timeout, permanent,
//! undecodable, a panic in the handler and one outside it, in the message's `version`); two
//! consumer groups on the topic, each with its own drawn settings (concurrency 1..64,
//! `max_in_flight` from its minimum up, `max_per_key` 1..8, strict or relaxed order, 1..3
//! attempts in place, two tiers of 200..800 ms, the key lock's keeping between a key's records
//! off, left at the worker's default or 1..1000 ms, eager or (relaxed groups) cooperative
//! rebalances, starting from the log's start or end); and a fault schedule (worker SIGKILL,
//! SIGTERM and joins, server SIGKILL and restart on the same port and data dir, restarts of a
//! private Redis and a private Postgres) run while the records are produced. Then every
//! partition of the topic and of each group's tiers must be committed to its end within a
//! deadline, every worker must drain on SIGTERM and exit 0, and: every record that must apply
//! is applied once (effects through `cx.transaction()`), at the expected attempt; per key,
//! versions apply in increasing order and, in strict mode, exactly in production order; no two
//! handler runs of a key overlap (from each worker's run log); the dead-letter topic holds
//! exactly the expected records, once each, with their provenance headers and attempt counts;
//! each group's tiers hold exactly its own copies, once each. Every other record is produced
//! with forged routing headers (another topic as its origin, the last tier, attempts spent),
//! which the workers must ignore.
//!
//! The binary is its own worker and server: `CHAOS_ROLE=worker` / `server` (set by the test
//! when it spawns itself) run those roles instead of the test.
//!
//! - `cargo test --test chaos`: short mode, the seeds in [`SHORT_SEEDS`] (about a minute
//!   each here at most), stops at the first failure.
//! - `CHAOS_SEEDS=N`: long mode, N seeds from `CHAOS_SEED_BASE` (default: drawn from the
//!   clock, printed), every one run, the failed ones listed at the end.
//! - `CHAOS_SEED=S`: replays seed S (the same workload, settings and fault schedule).
//! - `CHAOS_DRAIN_SECS` (default 60): how long after the last fault the lag must reach 0,
//!   plus twice the waiting handler time that the slower group's concurrency cannot spread
//!   (timeouts and retry-afters over its concurrency: most of a minute at concurrency 1).
//! - `CHAOS_MAX_IN_FLIGHT=N` replaces every drawn `max_in_flight` (a diagnostic, to look
//!   past a wedge; not a replay).
//! - `CHAOS_TARGET=mock`: the workers run against librdkafka's mock cluster of three brokers
//!   (`rdkafka::mocking`), held by the test process, instead of the embedded server; with
//!   `CHAOS_SEEDS`, `CHAOS_SEED` or the short seeds. Each seed's plan is the same but for the
//!   server kills, which become two to five mock-cluster faults drawn from the seed
//!   ([`plan::Plan::on_mock_cluster`]): a broker down and up, partition leaders of the source,
//!   the tiers or the DLQ moved, a group's coordinator moved, OffsetCommit refused
//!   (REBALANCE_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, ILLEGAL_GENERATION,
//!   UNKNOWN_MEMBER_ID), Fetch refused (NOT_LEADER_OR_FOLLOWER), Produce refused
//!   (NOT_ENOUGH_REPLICAS, REQUEST_TIMED_OUT), seconds of round-trip delay; the checks are
//!   the same, with a minute more for the lag to drain and for workers to exit
//!   ([`mock_allowance`]). The mock cluster has no CreateTopics: the test creates the tiers
//!   and the DLQ. Its request errors are taken by the next requests of that API from any
//!   client, the test's producer included. Every client keeps one request in flight per
//!   connection ([`MOCK_KAFKA`]): the mock checks sequence numbers only for transactional
//!   producers, so behind a refused Produce it writes an idempotent producer's next batch of
//!   the partition, and librdkafka then takes the refused batch as written (acknowledged
//!   implicitly, offset -1001) though the mock never wrote it (seen with seed 8: source
//!   records acknowledged to the test's producer and in no log). `CHAOS_TARGET=mock
//!   CHAOS_SEED=S` replays a seed there.
//! - `CHAOS_BATCH`: which groups run a batch handler (`#[handler(..., batch)]`, the same
//!   acts per record; a timeout or a panic in a batch runs its records again alone):
//!   `drawn` (the default: each group with even odds, and its `max_batch` 1..64 and linger
//!   0..20 ms, drawn from the seed apart from the rest of the plan), `all` or `none`. The
//!   checks are the same.
//! - `CHAOS_PLAN_ONLY=1` prints the selected seeds' plans (settings, mix, faults) and runs
//!   nothing.
//! - `CHAOS_ONE_GROUP=1` runs group a alone (a diagnostic).
//! - `CHAOS_KAFKA_DEBUG=<contexts>`: librdkafka's `debug` contexts (`cgrp,broker`, say) for
//!   the workers' clients, logged with `RUST_LOG=info,librdkafka=debug` (a diagnostic).
//! - `CHAOS_LOGS=<dir>`: keep every seed's worker logs and run logs there (a failed seed's
//!   are always kept, and their directory printed). `RUST_LOG` sets the workers' filter.

// The modules' items are `pub` for one another, not for export.
#![allow(unreachable_pub)]

#[path = "support/mod.rs"]
mod support;

#[path = "chaos/check.rs"]
mod check;
#[path = "chaos/infra.rs"]
mod infra;
#[path = "chaos/plan.rs"]
mod plan;
#[path = "chaos/roles.rs"]
mod roles;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use check::{Effect, Observed};
use infra::{Fleet, PrivatePostgres, ServerProc};
use plan::{dlq_topic, tier_topic, Fault, Leaders, MockFault, Plan, TIERS};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use roles::WorkerSpec;
use support::mock::MockKafka;
use support::PrivateRedis;

/// The seeds of the short mode (CI): between them strict and relaxed groups, concurrency 1
/// and tens, and worker, server, Redis and Postgres faults.
///
/// Seeds 2 and 6 replay earlier findings; they stay out of the short mode for its run time
/// (the three seeds here take about 95 s; each of those about 30 s more) and because seed 2
/// failed now and then. Seed 2: a record copied twice to a retry tier when the server is
/// SIGKILLed while copies wait in the routing producer and the group loses its partitions
/// (fixed: abandoned handlers publish nothing, their queued copies are purged), and when the
/// restarted server forgot the group's members, so that a rejoining member got every
/// partition while another still consumed them until its next heartbeat, both routing copies
/// (fixed: the server keeps group membership across restarts). Seed 6, two runs of one key
/// overlapping on one worker (timing-dependent, it did not recur in replays; the cause found
/// in the code: a relaxed group's tier record and a later record of its key run in two lanes,
/// kept apart only by the key lock, which the seed's Redis restart empties; a key's lanes now
/// never run at once). Long runs (`CHAOS_SEEDS=30 CHAOS_SEED_BASE=1`): 27 of 30 passed before
/// membership was kept (seeds 2, 22 and 24 routed records twice by that server-restart split);
/// since, 30 of 30 at `704be2e` (868.8 s) and at `b2340db` (853.5 s); with every group a batch
/// handler (`CHAOS_BATCH=all`), 30 of 30 at `8029a55` (903.6 s). With the lock's keeping drawn
/// too (`CHAOS_SEED_BASE=3000`), 30 of 30 at `94cf7c3` (893.1 s); with a key's version and
/// token in one Postgres row (`CHAOS_SEED_BASE=4000`), 30 of 30 at `8ce53d6` (875.0 s). With
/// each partition read from a queue of its own: 30 of 30 at `fcc9b72` (`5000`, 1018.5 s); at
/// `a597ad7`, which read the partitions' queues before the main queue, 29 of 30 twice (`6000`:
/// seed 6019, `7000`: seed 7014, each routing records twice to a tier when the server is
/// SIGKILLed while a member that made copies leaves the group and is expelled, so that the
/// next owner's read-back runs before those copies land; 6019 passed in three replays); with
/// the main queue first again, 29 of 30 at `fedcf34` (`8000`, 1040.6 s), the one failure
/// (seed 8011) the harness sending a second SIGTERM to a draining worker, which exits at
/// once by design (the harness now sends none; 8011 passes), and 30 of 30 at `dc3501c`
/// (`9000`, 1011.7 s); with librdkafka clients closed off the async threads (taken back at
/// `9b0845d`), 30 of 30 at
/// `f236e14` (`10000`, 996.4 s); with a stopped worker's clients closed before it returns,
/// 30 of 30 at `d707a53` (`11000`, 965.2 s); with partitions never committed assigned at
/// their start position (`be66580`, `12000`), 29 of 30: seed 12022 (one partition, 11 keys,
/// strict, `max_per_key=1`, 155 tier passes) did not drain within the deadline, at `ab6b4de`
/// as well. Not a wedge: it drained steadily, but each record waiting in a tier stopped the
/// partition for the tier's delay (no handler ran for 72 % of the drain), which the deadline
/// did not count; it now does (`Plan::serial_tier_ms`), and 12022 drains at 72.9 s of its
/// deadline; 30 of 30 at `2a89ff6` (`13000`, 983.5 s); with `start_from = latest` drawn for
/// a group (`35d263c`, `14000`: 25 of the 60 groups), 30 of 30 (943.7 s); with the faults
/// running while such a group joins (`42c44a1`, `15000`: 14 groups), 30 of 30 (922.9 s);
/// `16000` at `0d4296f`, 30 of 30 (1098.4 s); with a parked key's records past its bounds
/// let go and read again instead of pausing the partition (the plans' `max_per_key` 1..8
/// reach it), 30 of 30 at `c70d538` (`17000`, 851.7 s) and at `e6e8d05` (`18000`, 918.8 s);
/// `19000` at `daa3ca7`/`ac2227e`: 29 of 30, seed 19018 a worker started and sent SIGTERM in
/// the same millisecond, which exited by the signal's default action before its `main` got
/// far (the harness now waits for a worker's endpoint before it sends SIGTERM, see
/// `Fleet::term`; 19018 passes since). (Seeds 19013 on ran in a second run: rebuilding this
/// binary while it runs makes its re-executions of itself fail to start.) With cooperative
/// rebalances drawn for relaxed groups (`750b2ce`): 30 of 30 at `20000` (915.3 s) and
/// `21000` (796.8 s); with the lock held back after a Redis restart and the `version-panic`
/// class: 30 of 30 at `4f2d4e7` (`22000`, 885.5 s) and at `0726981` (`23000`, 911.7 s). On
/// the mock cluster (`CHAOS_TARGET=mock`), with the workers' `max.poll.interval.ms` at 20 s
/// ([`MOCK_WORKER_KAFKA`]): seed 24000 4 of 4, `24001`-`24009` 9 of 9 at `3e458a7` (340.0 s).
/// Open too: once (short mode, seed 8) a
/// worker did not exit within 30 s of SIGTERM; its log ends at "signal received: draining"
/// (a hang in the drain, the final commit or the consumer's close; `cb48982` removed one such
/// hang, a rebalance event served after the consumer closed, librdkafka #4041). A final commit to a
/// coordinator that does not answer waited librdkafka's session timeout (45 s) until
/// `cfd391e`, which bounds it to 10 s: the stop now takes at most the drain timeout (5 s
/// here), that and the helpers' 5 s. Seed 5 once (CI at `4a9f93e`, the first runs with
/// cooperative rebalances drawn): two runs of one key on two workers of a relaxed group,
/// whose tier partition and source partition then live on different members, kept apart only
/// by the key lock, which the seed's Redis restart emptied while one of them ran; a Redis
/// now grants no lock until it has been up for a lease (`store/redis/lua.rs`, `MAY_GRANT`).
const SHORT_SEEDS: &[u64] = &[1, 5, 8];

fn main() {
    match std::env::var("CHAOS_ROLE").as_deref() {
        Ok("worker") => return roles::worker_main(),
        Ok("server") => return roles::server_main(),
        _ => {}
    }
    if !selected() {
        println!("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out");
        return;
    }
    let (seeds, long) = seeds();
    let mock = on_mock_cluster();
    if std::env::var_os("CHAOS_PLAN_ONLY").is_some() {
        for &seed in &seeds {
            println!("{}", plan_of(seed, mock).describe());
        }
        return;
    }
    if let Ok(max) = std::env::var("CHAOS_MAX_IN_FLIGHT") {
        println!("chaos: CHAOS_MAX_IN_FLIGHT={max} replaces the drawn max_in_flight (a diagnostic: not a replay)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let failed = runtime.block_on(run_all(&seeds, long, mock));
    if failed.is_empty() {
        println!(
            "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out ({} seed(s))",
            seeds.len()
        );
    } else {
        eprintln!("chaos: {} seed(s) failed:", failed.len());
        for (seed, names) in &failed {
            eprintln!(
                "  seed {seed} ({}): replay with {}CHAOS_SEED={seed} cargo test --test chaos",
                names.join(", "),
                if mock { "CHAOS_TARGET=mock " } else { "" }
            );
        }
        println!("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        std::process::exit(1);
    }
}

/// Whether the libtest-style arguments select this test (`chaos`): `--list` lists it, a
/// filter that is not part of its name skips it.
fn selected() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // It is not an ignored test: `--ignored` lists and runs nothing.
    let ignored_only = args.iter().any(|a| a == "--ignored");
    if args.iter().any(|a| a == "--list") {
        if !ignored_only {
            println!("chaos: test");
        }
        std::process::exit(0);
    }
    if ignored_only {
        return false;
    }
    let mut filters = Vec::new();
    let mut skip: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(flag) = a.strip_prefix("--") {
            if !flag.contains('=')
                && [
                    "skip",
                    "test-threads",
                    "color",
                    "format",
                    "logfile",
                    "shuffle-seed",
                ]
                .contains(&flag)
            {
                if flag == "skip" {
                    skip.extend(args.get(i + 1).cloned());
                }
                i += 1;
            }
        } else if !a.starts_with('-') {
            filters.push(a.clone());
        }
        i += 1;
    }
    let name = "chaos";
    (filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        && !skip.iter().any(|s| name.contains(s.as_str()))
}

/// Whether `CHAOS_TARGET` names the mock cluster (`mock`) rather than the embedded server
/// (`server`, the default).
fn on_mock_cluster() -> bool {
    match std::env::var("CHAOS_TARGET").as_deref() {
        Err(_) | Ok("server") => false,
        Ok("mock") => true,
        Ok(other) => panic!("CHAOS_TARGET={other:?}: expected `server` or `mock`"),
    }
}

/// The plan of `seed` against the target, with batch handlers where `CHAOS_BATCH` says.
fn plan_of(seed: u64, mock: bool) -> Plan {
    let plan = if mock {
        Plan::on_mock_cluster(seed)
    } else {
        Plan::new(seed)
    };
    plan.with_batches(plan::BatchMode::from_env())
}

/// The seeds to run, and whether this is the long mode.
fn seeds() -> (Vec<u64>, bool) {
    let var = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v:?}: expected a number"))
        })
    };
    if let Some(seed) = var("CHAOS_SEED") {
        return (vec![seed], false);
    }
    if let Some(n) = var("CHAOS_SEEDS") {
        let base = var("CHAOS_SEED_BASE").unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() % 1_000_000 * 1_000)
        });
        println!("chaos: long mode, {n} seeds from {base} (CHAOS_SEED_BASE={base} repeats them)");
        return ((base..base + n).collect(), true);
    }
    (SHORT_SEEDS.to_vec(), false)
}

/// What the workers run against.
enum Cluster {
    /// The embedded server, a child process.
    Server(ServerProc),
    /// librdkafka's mock cluster of three brokers, in this process.
    Mock(MockKafka),
}

/// The services every seed of the run shares (each seed has its own topic, groups, schemas
/// and key prefixes).
struct Infra {
    cluster: Cluster,
    redis: PrivateRedis,
    postgres: PrivatePostgres,
    dir: tempfile::TempDir,
}

impl Infra {
    fn bootstrap(&self) -> String {
        match &self.cluster {
            Cluster::Server(s) => s.bootstrap(),
            Cluster::Mock(m) => m.bootstrap(),
        }
    }
}

/// Runs every seed; returns the failed ones with the invariants they broke.
async fn run_all(seeds: &[u64], long: bool, mock: bool) -> Vec<(u64, Vec<String>)> {
    let started = Instant::now();
    let mut infra = tokio::task::block_in_place(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = if mock {
            Cluster::Mock(MockKafka::start(3))
        } else {
            Cluster::Server(ServerProc::start(
                &dir.path().join("data"),
                &dir.path().join("server.log"),
            ))
        };
        Infra {
            cluster,
            redis: PrivateRedis::start(),
            postgres: PrivatePostgres::start(),
            dir,
        }
    });
    println!(
        "chaos: {} {}, redis {}, postgres {} up in {:.1} s",
        if mock {
            "mock cluster (3 brokers)"
        } else {
            "server"
        },
        infra.bootstrap(),
        infra.redis.url(),
        infra.postgres.url(),
        started.elapsed().as_secs_f64()
    );
    let mut failed = Vec::new();
    for &seed in seeds {
        let t = Instant::now();
        match run_seed(&mut infra, seed, mock).await {
            Ok(summary) => println!(
                "[seed {seed}] ok in {:.1} s: {summary}",
                t.elapsed().as_secs_f64()
            ),
            Err(failure) => {
                eprintln!(
                    "\n[seed {seed}] FAILED after {:.1} s\n{}\nreplay: {}CHAOS_SEED={seed} cargo test --test chaos\n",
                    t.elapsed().as_secs_f64(),
                    failure.text,
                    if mock { "CHAOS_TARGET=mock " } else { "" }
                );
                failed.push((seed, failure.invariants));
                if !long {
                    break;
                }
            }
        }
    }
    println!(
        "chaos: {} seed(s) in {:.1} s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    failed
}

/// A failed seed: which invariants, and the whole story.
struct Failure {
    invariants: Vec<String>,
    text: String,
}

/// One seed, start to end.
async fn run_seed(infra: &mut Infra, seed: u64, mock: bool) -> Result<String, Failure> {
    let plan = plan_of(seed, mock);
    println!("[seed {seed}] {}", plan.describe());
    let nonce = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let topic = format!("chaos-{seed}-{nonce}");
    let groups = [format!("ca-{nonce}"), format!("cb-{nonce}")];
    let schema = format!("chaos_{nonce}");
    let bootstrap = infra.bootstrap();
    let logs = match std::env::var_os("CHAOS_LOGS") {
        Some(d) => PathBuf::from(d).join(format!("seed-{seed}-{nonce}")),
        None => infra.dir.path().join(format!("seed-{seed}")),
    };
    std::fs::create_dir_all(&logs).expect("logs dir");
    match &infra.cluster {
        Cluster::Server(_) => support::create_topic(&bootstrap, &topic, plan.partitions).await,
        // No CreateTopics on the mock: every topic a worker would create is made here.
        Cluster::Mock(m) => {
            for t in std::iter::once(topic.clone())
                .chain(
                    groups
                        .iter()
                        .flat_map(|g| (1..=TIERS).map(|n| tier_topic(&topic, g, n))),
                )
                .chain([dlq_topic(&topic)])
            {
                m.create_topic(&t, plan.partitions);
            }
        }
    }
    let db = connect(&infra.postgres.url()).await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.effects (grp text, id text, key text, version bigint,
             attempt int, pid int, finished_at timestamptz)"
    ))
    .await
    .expect("effects table");
    drop(db);

    let spec = |g: usize| WorkerSpec {
        name: String::new(),
        bootstrap: bootstrap.clone(),
        topic: topic.clone(),
        group: groups[g].clone(),
        postgres: infra.postgres.url(),
        redis: infra.redis.url(),
        schema: schema.clone(),
        store_schema: format!("{schema}_{}", plan.groups[g].label),
        runs_file: PathBuf::new(),
        observe: String::new(),
        settings: plan.groups[g].clone(),
        kafka: if mock {
            MOCK_KAFKA
                .iter()
                .chain(MOCK_WORKER_KAFKA)
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        } else {
            Vec::new()
        },
    };
    let mut fleet = Fleet {
        logs: logs.clone(),
        procs: Vec::new(),
        specs: [spec(0), spec(1)],
    };
    // A diagnostic: group a alone, to tell a fault of one group from the two groups' interplay.
    let active = if std::env::var_os("CHAOS_ONE_GROUP").is_some() {
        println!("[seed {seed}] CHAOS_ONE_GROUP: group a alone (a diagnostic: not a replay)");
        1
    } else {
        2
    };
    for g in 0..active {
        for _ in 0..plan.groups[g].initial_workers {
            fleet.spawn(g);
        }
    }
    let origin = SystemTime::now();
    let started = Instant::now();
    let at = |t: Instant| t.duration_since(started).as_secs_f64();
    // A group from latest commits where it starts before anything is produced (everything
    // produced after must then be handled, however early a worker is killed); the faults
    // run meanwhile, the groups' first join included.
    let from_latest: Vec<String> = (0..active)
        .filter(|g| plan.groups[*g].from_latest)
        .map(|g| groups[g].clone())
        .collect();
    let producer = tokio::spawn({
        let (bootstrap, topic, partitions) = (bootstrap.clone(), topic.clone(), plan.partitions);
        let records = plan
            .records
            .iter()
            .map(|r| (r.key.clone(), r.payload.clone()))
            .collect();
        let over = Duration::from_millis(plan.produce_ms);
        async move {
            for group in &from_latest {
                wait_for_start_commits(&bootstrap, group, &topic, partitions).await?;
            }
            let settings = if mock { MOCK_KAFKA } else { &[] };
            Ok::<_, String>(produce(bootstrap, topic, records, over, settings).await)
        }
    });

    // The fault schedule.
    for (when, fault) in &plan.faults {
        tokio::time::sleep_until((started + Duration::from_millis(*when)).into()).await;
        if fault.group().is_some_and(|g| g >= active) {
            continue;
        }
        let what = apply(infra, &mut fleet, fault, &topic, &plan).await;
        println!("[seed {seed}] {:>5.1} s: {what}", at(Instant::now()));
    }
    if let Cluster::Mock(m) = &infra.cluster {
        // Whatever the last faults left behind ends here.
        tokio::task::block_in_place(|| clear_mock_faults(m));
    }
    for g in 0..active {
        if fleet.live(g).is_empty() {
            let name = fleet.spawn(g);
            println!(
                "[seed {seed}] {:>5.1} s: started {name}: its group had no live worker",
                at(Instant::now())
            );
        }
    }
    let delivered = match tokio::time::timeout(Duration::from_secs(60), producer).await {
        Ok(Ok(Ok(d))) => d,
        Ok(Ok(Err(story))) => {
            return Err(fail(
                seed,
                &plan,
                &fleet,
                &logs,
                vec!["a group from latest commits where it starts".to_owned()],
                story,
            ))
        }
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => {
            return Err(fail(
                seed,
                &plan,
                &fleet,
                &logs,
                vec!["production".to_owned()],
                "the records were not all acknowledged within 60 s of the last fault".to_owned(),
            ))
        }
    };
    println!(
        "[seed {seed}] {:>5.1} s: all {} records produced; waiting for the lag to drain",
        at(Instant::now()),
        delivered.len()
    );

    // Lag drains to 0: every partition of the topic and of each group's tiers committed to
    // its end, twice in a row.
    // The base, plus twice the handler time of waiting attempts that concurrency cannot
    // spread (see `Plan::waiting_ms`) and the tier delays a strict group's partitions wait
    // out one after another (`Plan::serial_tier_ms`), for the slower group.
    let waiting = (0..active)
        .map(|g| 2 * plan.waiting_ms(g) + plan.serial_tier_ms(g))
        .max()
        .unwrap_or(0);
    let drain = Duration::from_secs(
        std::env::var("CHAOS_DRAIN_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    ) + Duration::from_millis(waiting)
        + mock_allowance(mock);
    let deadline = Instant::now() + drain;
    let mut clean = 0;
    let mut last_print = Instant::now();
    loop {
        let (b, t, gs) = (bootstrap.clone(), topic.clone(), groups[..active].to_vec());
        let lag = tokio::task::spawn_blocking(move || lag_report(&b, &t, &gs))
            .await
            .expect("lag read");
        if lag.is_empty() {
            clean += 1;
            if clean == 2 {
                break;
            }
        } else {
            clean = 0;
        }
        if Instant::now() >= deadline {
            let applied = effects_count(&infra.postgres.url(), &schema).await;
            let text = format!(
                "lag did not drain to 0 within {drain:?} of the last fault ({} s after the start); \
                 what is not committed to its end:{}\n  effects rows per group: {applied}\n  \
                 live workers (metrics and readiness):{}",
                at(Instant::now()) as u64,
                lag.join(""),
                fleet.observe_live()
            );
            return Err(fail(
                seed,
                &plan,
                &fleet,
                &logs,
                vec!["lag drains to 0".to_owned()],
                text,
            ));
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            println!(
                "[seed {seed}] {:>5.1} s: still draining:{}",
                at(Instant::now()),
                lag.join("")
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained_at = at(Instant::now());
    println!("[seed {seed}] {drained_at:>5.1} s: lag 0 for both groups; SIGTERM to every worker");

    // Every worker drains and exits 0.
    fleet.term_all();
    let exits = tokio::task::block_in_place(|| {
        fleet.bad_exits(Duration::from_secs(30) + mock_allowance(mock))
    });
    if !exits.is_empty() {
        return Err(fail(
            seed,
            &plan,
            &fleet,
            &logs,
            vec!["workers drain and exit 0 on SIGTERM".to_owned()],
            exits.join("\n  "),
        ));
    }

    // What is left behind, against what must be.
    let observed = observe(
        &bootstrap,
        &topic,
        &groups,
        &infra.postgres.url(),
        &schema,
        &fleet,
    )
    .await;
    let violations = check::check(
        &plan,
        &topic,
        &groups[..active],
        &delivered,
        &observed,
        origin,
    );
    if !violations.is_empty() {
        return Err(fail(
            seed,
            &plan,
            &fleet,
            &logs,
            violations.names().iter().map(|s| (*s).to_owned()).collect(),
            violations.report(12),
        ));
    }
    let summary = format!(
        "drained at {drained_at:.1} s; effects {}, dead letters {}, tier copies {}, handler runs {}, workers {}",
        observed.effects.len(),
        observed.dlq.len(),
        observed.tiers.iter().flatten().map(Vec::len).sum::<usize>(),
        observed.runs.len(),
        fleet.procs.len()
    );
    drop(fleet);
    if std::env::var_os("CHAOS_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    }
    Ok(summary)
}

/// Carries out one fault; says what it did.
async fn apply(
    infra: &mut Infra,
    fleet: &mut Fleet,
    fault: &Fault,
    topic: &str,
    plan: &Plan,
) -> String {
    let pick = |candidates: Vec<&infra::Proc>, pick: u32| {
        (!candidates.is_empty()).then(|| candidates[pick as usize % candidates.len()].name.clone())
    };
    match *fault {
        Fault::KillWorker { group, pick: p } => match pick(fleet.live(group), p) {
            Some(name) => {
                tokio::task::block_in_place(|| fleet.kill(&name));
                format!("SIGKILLed worker {name}")
            }
            None => format!("{fault}: no live worker, skipped"),
        },
        // A worker draining after an earlier SIGTERM is not sent another (that one would
        // make it exit at once, by design).
        Fault::TermWorker { group, pick: p } => match pick(fleet.not_termed(group), p) {
            Some(name) => {
                fleet.term(&name);
                format!("sent SIGTERM to worker {name}")
            }
            None => format!("{fault}: no live worker not sent SIGTERM yet, skipped"),
        },
        Fault::StartWorker { group } => {
            if fleet.live(group).len() >= 4 {
                format!("{fault}: four are live already, skipped")
            } else {
                format!("started worker {}", fleet.spawn(group))
            }
        }
        Fault::KillServer { down_ms } => match &mut infra.cluster {
            Cluster::Server(server) => {
                tokio::task::block_in_place(|| server.kill());
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                tokio::task::block_in_place(|| server.restart());
                format!("SIGKILLed the server; restarted it after {down_ms} ms")
            }
            Cluster::Mock(_) => format!("{fault}: no server (mock cluster), skipped"),
        },
        Fault::Mock(ref m) => match &infra.cluster {
            Cluster::Mock(cluster) => {
                let groups = [fleet.specs[0].group.clone(), fleet.specs[1].group.clone()];
                apply_mock(cluster, m, topic, &groups, plan.partitions).await;
                m.to_string()
            }
            Cluster::Server(_) => format!("{fault}: no mock cluster, skipped"),
        },
        Fault::RestartRedis { down_ms } => {
            tokio::task::block_in_place(|| infra.redis.kill());
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            tokio::task::block_in_place(|| infra.redis.restart());
            format!("killed Redis; restarted it (empty) after {down_ms} ms")
        }
        Fault::RestartPostgres { down_ms } => {
            tokio::task::block_in_place(|| infra.postgres.crash());
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            tokio::task::block_in_place(|| infra.postgres.restart());
            format!("crashed Postgres; restarted it after {down_ms} ms")
        }
    }
}

/// The librdkafka properties of every client on the mock cluster (see the header).
const MOCK_KAFKA: &[(&str, &str)] = &[("max.in.flight.requests.per.connection", "1")];

/// And of the workers there: a JoinGroup in flight when the coordinator's mock broker goes
/// down goes unanswered until its request times out, after the group's rebalance timeout
/// (`max.poll.interval.ms`, 300 s by default) and 3 s, longer than the lag's deadline (seed
/// 24000: a relaxed group's only member, started as its first one was SIGKILLed, joined
/// through broker 3 just before it went down, and had no partition for the rest of the
/// run; its threads idle, librdkafka waiting in `wait-join`). 20 s bounds that wait within
/// [`mock_allowance`]; the workers never stop polling for longer (they pause partitions
/// instead), and their revoke drains take at most the drain timeout (5 s here).
const MOCK_WORKER_KAFKA: &[(&str, &str)] = &[("max.poll.interval.ms", "20000")];

/// How much longer the lag may take to drain, and a worker to exit, on the mock cluster:
/// librdkafka's `socket.timeout.ms` (60 s). A request in flight when a mock broker goes down
/// can go unanswered until then (seen: a worker's Fetch, its partition not fetched for a
/// minute), as over a network partition rather than a crashed broker.
fn mock_allowance(mock: bool) -> Duration {
    if mock {
        Duration::from_secs(60)
    } else {
        Duration::ZERO
    }
}

/// Carries out a mock-cluster fault on `topic` (its groups' tiers, its DLQ) and `groups`.
async fn apply_mock(
    cluster: &MockKafka,
    fault: &MockFault,
    topic: &str,
    groups: &[String; 2],
    partitions: i32,
) {
    match *fault {
        MockFault::BrokerDown { broker, down_ms } => {
            tokio::task::block_in_place(|| cluster.down(broker));
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            tokio::task::block_in_place(|| cluster.up(broker));
        }
        MockFault::LeadersMove { which, step } => {
            let topics: Vec<String> = match which {
                Leaders::Source => vec![topic.to_owned()],
                Leaders::Tiers => groups
                    .iter()
                    .flat_map(|g| (1..=TIERS).map(move |n| tier_topic(topic, g, n)))
                    .collect(),
                Leaders::DeadLetters => vec![dlq_topic(topic)],
            };
            tokio::task::block_in_place(|| {
                for t in &topics {
                    for p in 0..partitions {
                        cluster.leader(t, p, (p + step) % 3 + 1);
                    }
                }
            });
        }
        MockFault::CoordinatorMove { group, broker } => {
            tokio::task::block_in_place(|| cluster.coordinator(&groups[group], broker));
        }
        MockFault::CommitRefused { error, count } => tokio::task::block_in_place(|| {
            cluster.request_errors(
                RDKafkaApiKey::OffsetCommit,
                &vec![broker_error(error); count],
            );
        }),
        MockFault::FetchRefused { count } => tokio::task::block_in_place(|| {
            cluster.request_errors(
                RDKafkaApiKey::Fetch,
                &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; count],
            );
        }),
        MockFault::ProduceRefused { error, count } => tokio::task::block_in_place(|| {
            cluster.request_errors(RDKafkaApiKey::Produce, &vec![broker_error(error); count]);
        }),
        MockFault::RoundTrip { ms, for_ms } => {
            tokio::task::block_in_place(|| cluster.round_trip(-1, Duration::from_millis(ms)));
            tokio::time::sleep(Duration::from_millis(for_ms)).await;
            tokio::task::block_in_place(|| cluster.round_trip(-1, Duration::ZERO));
        }
    }
}

/// The broker error a mock fault names.
fn broker_error(name: &str) -> RDKafkaRespErr {
    match name {
        "REBALANCE_IN_PROGRESS" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
        "COORDINATOR_NOT_AVAILABLE" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        "ILLEGAL_GENERATION" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION,
        "UNKNOWN_MEMBER_ID" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID,
        "NOT_ENOUGH_REPLICAS" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        "REQUEST_TIMED_OUT" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        other => panic!("no broker error {other}"),
    }
}

/// Every broker up, no delay, no request error left pending.
fn clear_mock_faults(cluster: &MockKafka) {
    for broker in cluster.brokers() {
        cluster.up(broker);
    }
    cluster.round_trip(-1, Duration::ZERO);
    for api in [
        RDKafkaApiKey::OffsetCommit,
        RDKafkaApiKey::Fetch,
        RDKafkaApiKey::Produce,
    ] {
        cluster.clear_request_errors(api);
    }
}

/// Waits (up to 60 s) until `group` has a committed offset on every one of the `partitions`
/// of `topic`: a group from latest commits where it starts when it is first assigned. A read
/// that fails (the server is down) is tried again.
async fn wait_for_start_commits(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (b, g, t) = (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
        let committed = tokio::task::spawn_blocking(move || {
            steadfast_testkit::try_committed_offsets(&b, &g, &t, partitions)
        })
        .await
        .expect("committed offsets read");
        if committed
            .as_ref()
            .is_ok_and(|c| c.iter().all(Option::is_some))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{group}, from latest, had not committed where it starts within 60 s: {committed:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The failure of `seed`: its invariants, the story, the settings, the workers' log tails,
/// where the logs are kept.
fn fail(
    seed: u64,
    plan: &Plan,
    fleet: &Fleet,
    logs: &Path,
    invariants: Vec<String>,
    story: String,
) -> Failure {
    let text = format!(
        "--- seed {seed}: broken invariant(s): {} ---\n{story}\n--- seed {seed} settings ---\n{}\n--- worker logs: {} ---\n{}",
        invariants.join(", "),
        plan.describe(),
        logs.display(),
        fleet.log_tails(15),
    );
    // Keep the logs of a failed seed: the temp dir is removed with the run, so copy them.
    let kept = std::env::var_os("CHAOS_LOGS").map_or_else(
        || {
            let keep =
                std::env::temp_dir().join(format!("chaos-seed-{seed}-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            if let Ok(entries) = std::fs::read_dir(logs) {
                for e in entries.flatten() {
                    let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                }
            }
            keep
        },
        |_| logs.to_owned(),
    );
    Failure {
        invariants,
        text: text.replace(&logs.display().to_string(), &kept.display().to_string()),
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the private Postgres at {url}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Rows of `effects` per group, for messages.
async fn effects_count(url: &str, schema: &str) -> String {
    let db = connect(url).await;
    match db
        .query(
            &format!("SELECT grp, count(*), count(DISTINCT id) FROM {schema}.effects GROUP BY grp ORDER BY grp"),
            &[],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                format!(
                    "{}: {} rows, {} ids",
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("(query failed: {e})"),
    }
}

/// Produces `records` (key, payload) in order, paced evenly over `over`, with the extra
/// librdkafka `settings`; returns each record's (partition, offset).
async fn produce(
    bootstrap: String,
    topic: String,
    records: Vec<(String, Vec<u8>)>,
    over: Duration,
    settings: &'static [(&'static str, &'static str)],
) -> Vec<(i32, i64)> {
    let mut config = support::client(&bootstrap);
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let producer: FutureProducer = config.create().expect("producer");
    let ticks = 40;
    let per_tick = records.len().div_ceil(ticks);
    let mut interval = tokio::time::interval(over / ticks as u32);
    let mut pending = Vec::with_capacity(records.len());
    let forged = forged_routing_headers(&topic);
    for (c, chunk) in records.chunks(per_tick).enumerate() {
        interval.tick().await;
        for (i, (key, payload)) in chunk.iter().enumerate() {
            let mut record = FutureRecord::to(&topic)
                .key(key.as_bytes())
                .payload(payload);
            // Every other record carries forged routing headers, whatever its outcome class:
            // the provenance, attempt and tier checks hold only if the workers ignore them.
            if (c * per_tick + i) % 2 == 1 {
                record = record.headers(forged.clone());
            }
            pending.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("queued"),
            );
        }
    }
    support::acknowledged(pending).await
}

/// What a producer could write to pass a source record off as a copy: the last tier, its
/// attempts spent, another topic as its origin.
fn forged_routing_headers(topic: &str) -> OwnedHeaders {
    let elsewhere = format!("{topic}.forged");
    let routed_from = format!("{elsewhere}/0/1");
    [
        ("steadfast-original-topic", elsewhere.as_str()),
        ("steadfast-original-partition", "99"),
        ("steadfast-original-offset", "999999"),
        ("steadfast-retry-tier", "2"),
        ("steadfast-attempts", "99"),
        ("steadfast-due-at", "2999-01-01T00:00:00Z"),
        ("steadfast-routed-from", routed_from.as_str()),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    })
}

/// Partition counts of the topics that exist (without creating any).
fn partition_counts(consumer: &BaseConsumer) -> BTreeMap<String, i32> {
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map(|m| {
            m.topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
                .collect()
        })
        .unwrap_or_default()
}

/// For each group, every partition of the topic and of its tiers that is not committed to
/// its end, as lines; empty when the lag is 0 everywhere. Blocking.
fn lag_report(bootstrap: &str, topic: &str, groups: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for group in groups {
        let consumer: BaseConsumer =
            match support::client(bootstrap).set("group.id", group).create() {
                Ok(c) => c,
                Err(e) => return vec![format!("\n  (no consumer: {e})")],
            };
        let counts = partition_counts(&consumer);
        if counts.is_empty() {
            return vec!["\n  (no metadata: is the server down?)".to_owned()];
        }
        let topics: Vec<String> = std::iter::once(topic.to_owned())
            .chain((1..=TIERS).map(|n| tier_topic(topic, group, n)))
            .collect();
        let mut tpl = TopicPartitionList::new();
        for t in &topics {
            for p in 0..counts.get(t).copied().unwrap_or(0) {
                tpl.add_partition(t, p);
            }
        }
        let committed = match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(c) => c,
            Err(e) => return vec![format!("\n  (committed offsets of {group}: {e})")],
        };
        for t in &topics {
            for p in 0..counts.get(t).copied().unwrap_or(0) {
                let end = match consumer.fetch_watermarks(t, p, Duration::from_secs(10)) {
                    Ok((_, high)) => high,
                    Err(e) => {
                        out.push(format!("\n  {group} {t}[{p}]: watermarks: {e}"));
                        continue;
                    }
                };
                let at = match committed.find_partition(t, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                };
                if end > 0 && at != Some(end) {
                    out.push(format!(
                        "\n  {group} {t}[{p}]: committed {}, end {end}",
                        at.map_or("nothing".to_owned(), |o| o.to_string())
                    ));
                }
            }
        }
    }
    out
}

/// Reads what the run left: effects, dead letters, tiers, run logs.
async fn observe(
    bootstrap: &str,
    topic: &str,
    groups: &[String; 2],
    postgres: &str,
    schema: &str,
    fleet: &Fleet,
) -> Observed {
    let db = connect(postgres).await;
    let rows = db
        .query(
            &format!(
                "SELECT grp, id, key, version, attempt, pid FROM {schema}.effects \
                 ORDER BY grp, key, finished_at"
            ),
            &[],
        )
        .await
        .expect("effects");
    let effects = rows
        .iter()
        .map(|r| Effect {
            group: r.get(0),
            id: r.get(1),
            key: r.get(2),
            version: r.get(3),
            attempt: r.get(4),
            pid: r.get(5),
        })
        .collect();
    let (b, t, gs) = (bootstrap.to_owned(), topic.to_owned(), groups.clone());
    let (dlq, tiers) = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = support::client(&b).create().expect("consumer");
        let counts = partition_counts(&consumer);
        let read = |name: &str| match counts.get(name) {
            Some(&n) => support::read_all(&b, name, n),
            None => Vec::new(),
        };
        let tiers = [0, 1].map(|g| [1, 2].map(|n| read(&tier_topic(&t, &gs[g], n))));
        (read(&dlq_topic(&t)), tiers)
    })
    .await
    .expect("topics read");
    Observed {
        effects,
        dlq,
        tiers,
        runs: infra::read_runs(fleet),
        deaths: fleet.deaths(),
    }
}
