//! Store-backed policy benchmarks against the embedded server, printed as Markdown tables,
//! each as a ratio to the no-op runtime measured in the same run:
//!
//! - **guards**: Redis dedup + key lock + stale drop on every message vs the same worker
//!   without policies, its calls made one by one, combined per record (target ≥ 50,000
//!   msg/s on a 2-core machine), and for a batch handler (target ≥ 150,000 msg/s);
//! - **rate**: two workers under one shared Redis rate limit; the calls per second they reach
//!   as a fraction of the configured rate (the limit must hold, and should be used: the
//!   figure a test cannot assert on a loaded machine);
//! - **ledger**: the once-only Postgres path (a transaction per message with the id and
//!   version recorded in it, the key lock in Redis) with 2 workers, and where the time of a
//!   message goes (begin with records, the handler's writes, commit); then the same with a
//!   batch handler, one transaction per batch of up to 256 (target ≥ 10× the per-record
//!   path of the same run).
//!
//! Needs Redis on 127.0.0.1:6379 and Postgres on 127.0.0.1:5432 (`scripts/services.sh`).
//! `cargo bench --bench stores` runs the full sizes; without `--bench` (as under
//! `cargo test`) a quick smoke pass. `-- --only guards|rate|ledger`.

#[path = "support/redis_keys.rs"]
mod redis_keys;

/// mimalloc, as the README recommends for a worker's binary: with glibc's allocator, contended
/// by the runtime's threads, the ledger's batch row ran 12-18 % slower (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};
use steadfast::handler::{Batch, BatchContext};
use steadfast::{Context, HandlerError, Retry, Worker};
use tokio_util::sync::CancellationToken;

const REDIS: &str = "redis://127.0.0.1:6379";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A versioned event with an id.
#[derive(Debug, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "bench", key = key, version = version, id = id)]
struct Update {
    id: String,
    key: String,
    version: i64,
    amount: i64,
}

/// Counts calls.
#[derive(Debug, Clone, steadfast::Handler)]
#[handler(message = Update, group = "bench")]
struct Count {
    done: Arc<AtomicU64>,
}

impl Count {
    async fn handle(&self, _msg: Update, _cx: &Context) -> Result<(), HandlerError> {
        self.done.fetch_add(1, AtomicOrdering::Relaxed);
        Ok(())
    }
}

/// Counts records, in batches.
#[derive(Debug, Clone, steadfast::Handler)]
#[handler(message = Update, group = "bench", batch)]
struct CountBatch {
    done: Arc<AtomicU64>,
}

impl CountBatch {
    async fn handle_batch(
        &self,
        batch: Batch<Update>,
        _cx: &BatchContext,
    ) -> Result<(), HandlerError> {
        self.done
            .fetch_add(batch.len() as u64, AtomicOrdering::Relaxed);
        Ok(())
    }
}

/// Counts calls and notes when the first and the last came.
#[derive(Debug, Clone, steadfast::Handler)]
#[handler(message = Update, group = "bench")]
struct Paced {
    done: Arc<AtomicU64>,
    span: Arc<parking_lot::Mutex<Option<(Instant, Instant)>>>,
}

impl Paced {
    async fn handle(&self, _msg: Update, _cx: &Context) -> Result<(), HandlerError> {
        let now = Instant::now();
        let mut span = self.span.lock();
        let first = span.map_or(now, |(first, _)| first);
        *span = Some((first, now));
        drop(span);
        self.done.fetch_add(1, AtomicOrdering::Relaxed);
        Ok(())
    }
}

/// Time spent per stage of the once-only path, in microseconds, summed over messages.
#[derive(Debug, Default)]
struct Stages {
    begin_us: AtomicU64,
    writes_us: AtomicU64,
    commit_us: AtomicU64,
}

impl Stages {
    /// Adds one call's stages: begin `t0..t1`, writes `t1..t2`, commit `t2..t3`.
    fn add(&self, t0: Instant, t1: Instant, t2: Instant, t3: Instant) {
        for (sum, d) in [
            (&self.begin_us, t1 - t0),
            (&self.writes_us, t2 - t1),
            (&self.commit_us, t3 - t2),
        ] {
            sum.fetch_add(micros(d), AtomicOrdering::Relaxed);
        }
    }
}

/// The ledger's handler: one effect row and a balance update per message, in the
/// transaction steadfast hands it.
#[derive(Debug, Clone, steadfast::Handler)]
#[handler(message = Update, group = "bench")]
struct Ledger {
    done: Arc<AtomicU64>,
    stages: Arc<Stages>,
    insert: Arc<str>,
    upsert: Arc<str>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Ledger {
    async fn handle(&self, msg: Update, cx: &Context) -> Result<(), HandlerError> {
        let t0 = Instant::now();
        let Some(tx) = cx.transaction().await? else {
            self.done.fetch_add(1, AtomicOrdering::Relaxed);
            return Ok(());
        };
        let t1 = Instant::now();
        tx.execute(
            &*self.insert,
            &[&msg.id, &msg.key, &msg.amount, &msg.version],
        )
        .await?;
        tx.execute(&*self.upsert, &[&msg.key, &msg.amount, &msg.version])
            .await?;
        let t2 = Instant::now();
        tx.commit().await?;
        let t3 = Instant::now();
        self.stages.add(t0, t1, t2, t3);
        self.done.fetch_add(1, AtomicOrdering::Relaxed);
        Ok(())
    }
}

/// How long the ledger's batch rows wait for more records (`BENCH_LEDGER_LINGER_MS`;
/// the runtime's default, 5 ms, without it).
fn ledger_linger_ms() -> u64 {
    std::env::var("BENCH_LEDGER_LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Batch calls at once per worker in the ledger's batch row (`BENCH_LEDGER_BATCHES`; 2
/// without it).
fn ledger_batches() -> usize {
    std::env::var("BENCH_LEDGER_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2)
}

/// The ledger as a batch handler: the batch's effect rows and balance updates in two
/// statements, in the one transaction of the batch.
#[derive(Debug, Clone, steadfast::Handler)]
#[handler(message = Update, group = "bench", batch)]
struct LedgerBatch {
    done: Arc<AtomicU64>,
    stages: Arc<Stages>,
    batches: Arc<AtomicU64>,
    insert: Arc<str>,
    upsert: Arc<str>,
}

impl LedgerBatch {
    async fn handle_batch(
        &self,
        batch: Batch<Update>,
        cx: &BatchContext,
    ) -> Result<(), HandlerError> {
        let t0 = Instant::now();
        let Some(tx) = cx.transaction().await? else {
            self.done
                .fetch_add(batch.len() as u64, AtomicOrdering::Relaxed);
            return Ok(());
        };
        let t1 = Instant::now();
        let (mut ids, mut keys, mut amounts, mut versions) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for item in batch.iter().filter(|item| tx.applies(item)) {
            let msg = item.message();
            ids.push(msg.id.as_str());
            keys.push(msg.key.as_str());
            amounts.push(msg.amount);
            versions.push(msg.version);
        }
        tx.execute(&*self.insert, &[&ids, &keys, &amounts, &versions])
            .await?;
        tx.execute(&*self.upsert, &[&keys, &amounts, &versions])
            .await?;
        let t2 = Instant::now();
        tx.commit().await?;
        let t3 = Instant::now();
        self.stages.add(t0, t1, t2, t3);
        self.batches.fetch_add(1, AtomicOrdering::Relaxed);
        self.done
            .fetch_add(batch.len() as u64, AtomicOrdering::Relaxed);
        Ok(())
    }
}

struct Env {
    bootstrap: String,
    quick: bool,
}

/// Deletes the Redis keys a run wrote under `prefix` (dedup ids, versions, locks), so the
/// shared Redis does not grow from run to run.
async fn forget_keys(prefix: String) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || redis_keys::delete_under(REDIS, &prefix)).await??;
    Ok(())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Produces `count` updates over `keys` keys, versions increasing per key.
fn produce(bootstrap: &str, topic: &str, count: u64, keys: u64) -> anyhow::Result<()> {
    let producer: BaseProducer = steadfast_testkit::client_config(bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    for i in 0..count {
        let update = Update {
            id: format!("u{i}"),
            key: format!("k{}", i % keys),
            version: i64::try_from(i / keys + 1)?,
            amount: 1,
        };
        let payload = serde_json::to_vec(&update)?;
        let mut record = Some(BaseRecord::to(topic).key(&update.key).payload(&payload));
        while let Some(r) = record.take() {
            if let Err((e, r)) = producer.send(r) {
                if matches!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                ) {
                    producer.poll(Duration::from_millis(10));
                    record = Some(r);
                } else {
                    bail!("produce: {e}");
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

async fn backlog(env: &Env, prefix: &str, count: u64, keys: u64) -> anyhow::Result<String> {
    let topic = unique(prefix);
    steadfast_testkit::create_topic(&env.bootstrap, &topic, 4, &[]).await;
    let (bootstrap, t) = (env.bootstrap.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce(&bootstrap, &t, count, keys)).await??;
    Ok(topic)
}

/// A row's run: from the workers' start, and from the first handled record on.
#[derive(Clone, Copy)]
struct Run {
    /// Records handled.
    count: u64,
    /// From the workers' start to the last record handled.
    elapsed: Duration,
    /// From the workers' start until a record was first seen handled (topics made sure of,
    /// stores connected, the group joined, the first fetch: a fresh group's partitions also
    /// wait out librdkafka's 100 ms back-off before their first offset reset).
    first: Duration,
    /// Records seen handled at that moment.
    handled_at_first: u64,
}

impl Run {
    /// Records a second over the whole run, start-up included.
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    /// Records a second once the workers handle records: from the first handled record to
    /// the last.
    fn steady_rate(&self) -> f64 {
        let span = self.elapsed.saturating_sub(self.first).as_secs_f64();
        self.count.saturating_sub(self.handled_at_first) as f64 / span.max(f64::EPSILON)
    }
}

/// Runs `workers` until `done` reaches `count`, watching `done` every 2 ms.
async fn run_until(
    workers: Vec<Worker<impl steadfast::Handler>>,
    done: &AtomicU64,
    count: u64,
) -> anyhow::Result<Run> {
    let stop = CancellationToken::new();
    let started = Instant::now();
    let runs: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(w.run(stop.clone())))
        .collect();
    let mut first = None;
    loop {
        let handled = done.load(AtomicOrdering::Relaxed);
        if first.is_none() && handled > 0 {
            first = Some((started.elapsed(), handled));
        }
        if handled >= count {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("handled {handled} of {count} in 600 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    for run in runs {
        run.await??;
    }
    let (first, handled_at_first) = first.unwrap_or((elapsed, count));
    Ok(Run {
        count,
        elapsed,
        first,
        handled_at_first,
    })
}

fn base(env: &Env, topic: &str) -> steadfast::WorkerBuilder {
    Worker::builder()
        .brokers(env.bootstrap.clone())
        .topic(topic)
        .group(unique("bench_group"))
        .concurrency(256)
        .retry(Retry::none())
}

/// One of two workers of a group that start together. The first to join takes every
/// partition; the second is let in at the first one's next heartbeat, by default up to 3 s
/// later, so a row shorter than that was mostly measured on one worker (the ledger's batch
/// row ran at about 15,000 msg/s when its second worker joined 3 s late, at about 21,000
/// when both joined at once). Heartbeats every 100 ms let the second in at once.
fn paired(env: &Env, topic: &str) -> steadfast::WorkerBuilder {
    base(env, topic).kafka_property("heartbeat.interval.ms", "100")
}

async fn guards(env: &Env) -> anyhow::Result<()> {
    let count: u64 = if env.quick { 5_000 } else { 200_000 };
    let keys = 10_000;
    let plain_topic = backlog(env, "plain", count, keys).await?;
    let separate_topic = backlog(env, "separate", count, keys).await?;
    let combined_topic = backlog(env, "combined", count, keys).await?;
    let batch_topic = backlog(env, "batch", count, keys).await?;

    let done = Arc::new(AtomicU64::new(0));
    let worker = base(env, &plain_topic)
        .handler(Count { done: done.clone() })
        .build()?;
    let plain = run_until(vec![worker], &done, count).await?;

    // The same guards, their calls made one by one (six or seven a message) and then
    // together (one script before the handler, one after).
    let mut guarded = Vec::new();
    for (topic, combine) in [(&separate_topic, false), (&combined_topic, true)] {
        let done = Arc::new(AtomicU64::new(0));
        let prefix = unique("bench");
        let worker = base(env, topic)
            .store_key_prefix(prefix.clone())
            .stale_drop(REDIS)
            .key_lock(REDIS, Duration::from_secs(10))
            .dedup(REDIS)
            .combine_store_calls(combine)
            .handler(Count { done: done.clone() })
            .build()?;
        guarded.push(run_until(vec![worker], &done, count).await?);
        forget_keys(prefix).await?;
    }
    let (separate, combined) = (guarded[0], guarded[1]);

    // A batch handler behind the same guards: its records' calls share one script run each
    // way.
    let done = Arc::new(AtomicU64::new(0));
    let prefix = unique("bench");
    let worker = base(env, &batch_topic)
        .concurrency(4)
        .max_batch(256)
        .store_key_prefix(prefix.clone())
        .stale_drop(REDIS)
        .key_lock(REDIS, Duration::from_secs(10))
        .dedup(REDIS)
        .handler(CountBatch { done: done.clone() })
        .build()?;
    let batched = run_until(vec![worker], &done, count).await?;
    forget_keys(prefix).await?;

    println!("\n### (a) Redis dedup + key lock + stale drop, {count} JSON messages, 4 partitions, {keys} keys, concurrency 256\n");
    print_header("worker");
    for (name, run) in [
        ("no policies (no-op handler)", plain),
        ("Redis dedup + lock + stale drop, separate calls", separate),
        (
            "Redis dedup + lock + stale drop, combined calls (default)",
            combined,
        ),
        (
            "the same, batch handler (4 batches of up to 256 at once)",
            batched,
        ),
    ] {
        print_row(name, &run);
    }
    for (what, rate) in MEASURES {
        println!(
            "\n{what}: combined / no-op: {:.2}; combined / separate: {:.2}; target 50,000 msg/s: {:.2} of it",
            rate(&combined) / rate(&plain),
            rate(&combined) / rate(&separate),
            rate(&combined) / 50_000.0
        );
        println!(
            "{what}: batch / no-op: {:.2}; batch / combined: {:.2}; target 150,000 msg/s: {:.2} of it",
            rate(&batched) / rate(&plain),
            rate(&batched) / rate(&combined),
            rate(&batched) / 150_000.0
        );
    }
    Ok(())
}

/// A measure of a run's rate: its name in the ratios' lines, and how it is taken.
type Measure = (&'static str, fn(&Run) -> f64);

/// The two measures of a run's rate.
const MEASURES: [Measure; 2] = [
    ("whole run", Run::rate),
    ("from the first record", Run::steady_rate),
];

/// The header of a table of runs whose first column is `what`.
fn print_header(what: &str) {
    println!("| {what} | elapsed s | msg/s | first record after s | msg/s from the first record |");
    println!("|---|---:|---:|---:|---:|");
}

/// One row of a table of runs: elapsed and rate over the whole run, and from the first
/// handled record on.
fn print_row(name: &str, run: &Run) {
    println!(
        "| {name} | {:.2} | {:.0} | {:.2} | {:.0} |",
        run.elapsed.as_secs_f64(),
        run.rate(),
        run.first.as_secs_f64(),
        run.steady_rate()
    );
}

async fn rate(env: &Env) -> anyhow::Result<()> {
    let (per_second, burst, seconds) = if env.quick {
        (200, 10, 2)
    } else {
        (1_000, 50, 20)
    };
    let count = u64::from(per_second) * seconds;
    let keys = 1_000;
    let topic = backlog(env, "rate", count, keys).await?;
    let (prefix, name, group) = (unique("bench"), unique("limit"), unique("bench_group"));
    let done = Arc::new(AtomicU64::new(0));
    let span = Arc::new(parking_lot::Mutex::new(None));
    let workers = (0..2)
        .map(|_| {
            base(env, &topic)
                .group(group.clone())
                .store_key_prefix(prefix.clone())
                .shared_rate_limit(REDIS, name.clone(), per_second, burst)
                .handler(Paced {
                    done: done.clone(),
                    span: span.clone(),
                })
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    run_until(workers, &done, count).await?;
    forget_keys(prefix.clone()).await?;
    let Some((first, last)) = *span.lock() else {
        bail!("no handler call was recorded");
    };
    // From the first call to the last: the workers' start-up is not the limiter's doing.
    let elapsed = (last - first).as_secs_f64().max(f64::EPSILON);
    let reached = count as f64 / elapsed;
    // What the limit allows in that time: the burst at once, then the rate. A call is seen
    // when its handler runs, which on a loaded machine may be some time after its grant: the
    // first call's grant may have come up to `SEEN_LATE` before it was seen, so the limit is
    // measured over the observed span and that much more.
    const SEEN_LATE: f64 = 0.05;
    let allowed = (f64::from(burst) + f64::from(per_second) * (elapsed + SEEN_LATE)) / elapsed;
    println!("\n### (b) Shared Redis rate limit, 2 workers, {per_second}/s, burst {burst}, {count} messages\n");
    println!(
        "| limit /s | first to last call s | reached msg/s | reached / limit | reached / allowed |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {per_second} | {elapsed:.2} | {reached:.0} | {:.3} | {:.3} |",
        reached / f64::from(per_second),
        reached / allowed
    );
    if reached > allowed * 1.01 {
        bail!(
            "the shared limit let {reached:.0}/s through, more than the {allowed:.0}/s it allows"
        );
    }
    Ok(())
}

async fn ledger(env: &Env) -> anyhow::Result<()> {
    let count: u64 = if env.quick { 2_000 } else { 50_000 };
    let keys = 1_000;
    let plain_topic = backlog(env, "plain", count, keys).await?;
    let ledger_topic = backlog(env, "ledger", count, keys).await?;
    let batch_topic = backlog(env, "ledger_batch", count, keys).await?;
    let schema = unique("bench");
    let (client, connection) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls)
        .await
        .context("Postgres on 127.0.0.1:5432 (scripts/services.sh)")?;
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.effects (txn text, account text, amount bigint, version bigint);
             CREATE TABLE {schema}.balances (account text PRIMARY KEY, balance bigint, version bigint);"
        ))
        .await?;

    let done = Arc::new(AtomicU64::new(0));
    let workers = (0..2)
        .map(|_| {
            paired(env, &plain_topic)
                .group("plain_pair")
                .handler(Count { done: done.clone() })
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let plain = run_until(workers, &done, count).await?;

    let done = Arc::new(AtomicU64::new(0));
    let stages = Arc::new(Stages::default());
    let handler = Ledger {
        done: done.clone(),
        stages: stages.clone(),
        insert: Arc::from(format!(
            "INSERT INTO {schema}.effects VALUES ($1, $2, $3, $4)"
        )),
        upsert: Arc::from(format!(
            "INSERT INTO {schema}.balances VALUES ($1, $2, $3) ON CONFLICT (account) DO UPDATE \
             SET balance = {schema}.balances.balance + EXCLUDED.balance, \
             version = GREATEST({schema}.balances.version, EXCLUDED.version)"
        )),
    };
    let group = unique("ledger_pair");
    let prefix = unique("bench");
    let workers = (0..2)
        .map(|_| {
            paired(env, &ledger_topic)
                .group(&group)
                // The smoke pass (beside the tests, on the shared Postgres) keeps its two
                // pools small: each holds up to concurrency + 8 connections.
                .concurrency(if env.quick { 8 } else { 32 })
                .store_schema(&schema)
                .store_key_prefix(&prefix)
                .stale_drop(POSTGRES)
                .key_lock(REDIS, Duration::from_secs(10))
                .transactions(POSTGRES)
                .handler(handler.clone())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let once = run_until(workers, &done, count).await?;
    forget_keys(prefix.clone()).await?;
    let per = |stages: &Stages, n: u64| {
        let ms =
            |us: &AtomicU64| us.load(AtomicOrdering::Relaxed) as f64 / n.max(1) as f64 / 1000.0;
        (
            ms(&stages.begin_us),
            ms(&stages.writes_us),
            ms(&stages.commit_us),
        )
    };
    let (begin, writes, commit) = per(&stages, count);

    // The same path with a batch handler: one transaction per batch of up to 256.
    let done = Arc::new(AtomicU64::new(0));
    let batch_stages = Arc::new(Stages::default());
    let batches = Arc::new(AtomicU64::new(0));
    let handler = LedgerBatch {
        done: done.clone(),
        stages: batch_stages.clone(),
        batches: batches.clone(),
        insert: Arc::from(format!(
            "INSERT INTO {schema}.effects SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])"
        )),
        upsert: Arc::from(format!(
            "INSERT INTO {schema}.balances SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (account) DO UPDATE \
             SET balance = {schema}.balances.balance + EXCLUDED.balance, \
             version = GREATEST({schema}.balances.version, EXCLUDED.version)"
        )),
    };
    let group = unique("ledger_batch_pair");
    let prefix = unique("bench");
    let workers = (0..2)
        .map(|_| {
            paired(env, &batch_topic)
                .group(&group)
                .concurrency(ledger_batches())
                .max_batch(256)
                .batch_linger(Duration::from_millis(ledger_linger_ms()))
                .store_schema(&schema)
                .store_key_prefix(&prefix)
                .stale_drop(POSTGRES)
                .key_lock(REDIS, Duration::from_secs(10))
                .transactions(POSTGRES)
                .handler(handler.clone())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let batched = run_until(workers, &done, count).await?;
    forget_keys(prefix.clone()).await?;
    let batch_count = batches.load(AtomicOrdering::Relaxed);
    let (batch_begin, batch_writes, batch_commit) = per(&batch_stages, batch_count);

    println!("\n### (c) the ledger path: 2 workers, {count} messages, 4 partitions, {keys} keys\n");
    print_header("workers");
    print_row("2 × no policies (no-op handler)", &plain);
    print_row(
        "2 × stale drop (Postgres) + lock (Redis) + a transaction per message, concurrency 32",
        &once,
    );
    print_row(
        &format!(
            "2 × the same, batch handler: a transaction per batch of up to 256, {} batches at once",
            ledger_batches()
        ),
        &batched,
    );
    // The workers' start (0.17-0.43 s here) is most of the no-op row and a sixth to a third
    // of the batch row, and nothing of the path's own rate: both measures are printed.
    for (what, rate) in MEASURES {
        println!(
            "\n{what}: per record / no-op: {:.3}; batches / per record: {:.2} (target 10)",
            rate(&once) / rate(&plain),
            rate(&batched) / rate(&once)
        );
    }
    println!(
        "\nper record, mean handler time per message: begin with id + version + fence recorded {begin:.2} ms, the two writes {writes:.2} ms, commit {commit:.2} ms"
    );
    println!(
        "batches: {batch_count} transactions, {:.1} records each on average; mean per batch: begin with the checks {batch_begin:.2} ms, the two writes {batch_writes:.2} ms, commit with the records {batch_commit:.2} ms",
        count as f64 / batch_count.max(1) as f64
    );
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dir = tempfile::tempdir()?;
        let server = steadfast_testkit::start_server(dir.path()).await;
        let env = Env {
            bootstrap: server.bootstrap_servers(),
            quick,
        };
        println!(
            "## steadfast store benchmarks ({})",
            if quick { "quick smoke run" } else { "full run" }
        );
        let wants = |case: &str| only.as_deref().is_none_or(|o| o == case);
        if wants("guards") {
            guards(&env).await?;
        }
        if wants("rate") {
            rate(&env).await?;
        }
        if wants("ledger") {
            ledger(&env).await?;
        }
        server.shutdown().await;
        anyhow::Ok(())
    })
}
