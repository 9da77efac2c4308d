//! A bank ledger: the once-only path end to end. Every transaction message adds its amount to
//! its account's balance exactly once, in the Postgres transaction steadfast hands the
//! handler (with the message id and the account's version recorded in it), under a per-key
//! lock, with stale versions dropped, transient failures retried in place and through two
//! retry tiers, and poison pills dead-lettered.
//!
//! ```text
//! ledger --bootstrap HOST:PORT --topic T --group G --postgres URL --schema S [--redis URL] [--concurrency N] [--batch N]
//! ```
//!
//! - Consumes `T`, `T.G.retry.1` (1 s) and `T.G.retry.2` (2 s) in group `G` (retry tiers
//!   belong to the group); dead letters go to `T.dlq`. Key = account id; value = JSON `{"txn", "account", "amount", "version",
//!   "fail"?, "poison"?}`. A value that does not decode is dead-lettered.
//! - `poison: true` fails permanently; `fail: n` fails transiently on every attempt ≤ n.
//! - Otherwise inserts a row into `S.effects` and adds the amount to `S.balances`, in one
//!   transaction with steadfast's records (tables created if missing).
//! - With `--batch N`, a batch handler serves the same contract: up to N transactions (one
//!   per account) in one database transaction, `--concurrency` batches at once; a poison or
//!   failing transaction fails alone and the others are applied.
//! - The per-key lock lives in Redis with `--redis`, else in Postgres. SIGTERM drains,
//!   commits and exits 0. Logs go to stderr (`RUST_LOG` filters them).
//! - Other settings come from `steadfast.toml` (or the file `STEADFAST_CONFIG` names) and
//!   `STEADFAST_*` variables when present, e.g. `STEADFAST_KAFKA_SESSION_TIMEOUT_MS=6000`;
//!   the flags take precedence.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use clap::Parser;
use serde::{Deserialize, Serialize};
use steadfast::handler::{Batch, BatchContext};
use steadfast::{Context, HandlerError, Ordering, Retry, Worker};

/// mimalloc rather than glibc's malloc, whose locks the runtime's threads contend for: the
/// batch path ran 12-18 % faster with it (README, "Memory of a long-running worker or
/// server"; BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line; its flags are a contract that outside checks rely on.
#[derive(Debug, Parser)]
#[command(
    name = "ledger",
    about = "Applies ledger transactions once each, through steadfast"
)]
struct Args {
    /// Kafka bootstrap servers (the embedded server's or a cluster's).
    #[arg(long)]
    bootstrap: String,
    /// The transactions topic.
    #[arg(long)]
    topic: String,
    /// The consumer group.
    #[arg(long)]
    group: String,
    /// The Postgres database of the ledger and the stores.
    #[arg(long)]
    postgres: String,
    /// The schema of `effects`, `balances` and the store tables.
    #[arg(long)]
    schema: String,
    /// A Redis for the per-key lock (Postgres holds it when absent).
    #[arg(long)]
    redis: Option<String>,
    /// Handler calls at once (with `--batch`, batch calls at once).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Apply up to this many transactions per database transaction, through a batch handler.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: Option<u32>,
}

/// One ledger transaction.
#[derive(Debug, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "ledger", key = account, version = version, id = txn)]
struct LedgerTxn {
    txn: String,
    account: String,
    amount: i64,
    version: i64,
    #[serde(default)]
    fail: Option<u32>,
    #[serde(default)]
    poison: Option<bool>,
}

/// Applies transactions to the ledger tables of `schema`.
#[derive(steadfast::Handler)]
#[handler(message = LedgerTxn, group = "ledger")]
struct Ledger {
    insert_effect: String,
    add_to_balance: String,
    pid: i32,
}

impl Ledger {
    fn new(schema: &str) -> Self {
        Ledger {
            insert_effect: format!(
                "INSERT INTO {schema}.effects (txn, account, amount, version, attempt, worker_pid, started_at, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp())"
            ),
            add_to_balance: format!(
                "INSERT INTO {schema}.balances (account, balance, version) VALUES ($1, $2, $3) \
                 ON CONFLICT (account) DO UPDATE SET balance = {schema}.balances.balance + EXCLUDED.balance, \
                 version = GREATEST({schema}.balances.version, EXCLUDED.version)"
            ),
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        }
    }

    /// Why `msg` fails at `attempt`, if it does: a poison transaction always, a failing one
    /// at its first `fail` attempts.
    fn refusal(msg: &LedgerTxn, attempt: u32) -> Option<HandlerError> {
        if msg.poison == Some(true) {
            return Some(HandlerError::permanent(format!(
                "poison transaction {}",
                msg.txn
            )));
        }
        match msg.fail {
            Some(fail) if attempt <= fail => Some(HandlerError::transient(format!(
                "transaction {} fails at attempt {attempt} of its first {fail}",
                msg.txn
            ))),
            _ => None,
        }
    }

    async fn handle(&self, msg: LedgerTxn, cx: &Context) -> Result<(), HandlerError> {
        let started_at = SystemTime::now();
        if let Some(refusal) = Self::refusal(&msg, cx.attempt()) {
            return Err(refusal);
        }
        let Some(tx) = cx.transaction().await? else {
            return Ok(());
        };
        let attempt = i32::try_from(cx.attempt()).unwrap_or(i32::MAX);
        tx.execute(
            &self.insert_effect,
            &[
                &msg.txn,
                &msg.account,
                &msg.amount,
                &msg.version,
                &attempt,
                &self.pid,
                &started_at,
            ],
        )
        .await?;
        tx.execute(
            &self.add_to_balance,
            &[&msg.account, &msg.amount, &msg.version],
        )
        .await?;
        tx.commit().await
    }
}

/// The ledger as a batch handler (`--batch N`): a batch's transactions (one per account)
/// are applied with two statements in one database transaction.
#[derive(steadfast::Handler)]
#[handler(message = LedgerTxn, group = "ledger", batch)]
struct LedgerBatch {
    insert_effects: String,
    add_to_balances: String,
    pid: i32,
}

impl LedgerBatch {
    fn new(schema: &str) -> Self {
        LedgerBatch {
            insert_effects: format!(
                "INSERT INTO {schema}.effects (txn, account, amount, version, attempt, worker_pid, started_at, finished_at) \
                 SELECT t.*, clock_timestamp() FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::int[], $6::int[], $7::timestamptz[]) AS t"
            ),
            add_to_balances: format!(
                "INSERT INTO {schema}.balances (account, balance, version) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
                 ON CONFLICT (account) DO UPDATE SET balance = {schema}.balances.balance + EXCLUDED.balance, \
                 version = GREATEST({schema}.balances.version, EXCLUDED.version)"
            ),
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        }
    }

    async fn handle_batch(
        &self,
        batch: Batch<LedgerTxn>,
        cx: &BatchContext,
    ) -> Result<(), HandlerError> {
        let started_at = SystemTime::now();
        for item in &batch {
            if let Some(refusal) = Ledger::refusal(item.message(), item.context().attempt()) {
                item.fail(refusal);
            }
        }
        let Some(tx) = cx.transaction().await? else {
            return Ok(());
        };
        let (mut txns, mut accounts, mut amounts, mut versions, mut attempts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for item in batch.iter().filter(|item| tx.applies(item)) {
            let msg = item.message();
            txns.push(msg.txn.as_str());
            accounts.push(msg.account.as_str());
            amounts.push(msg.amount);
            versions.push(msg.version);
            attempts.push(i32::try_from(item.context().attempt()).unwrap_or(i32::MAX));
        }
        let pids = vec![self.pid; txns.len()];
        let started = vec![started_at; txns.len()];
        tx.execute(
            &self.insert_effects,
            &[
                &txns, &accounts, &amounts, &versions, &attempts, &pids, &started,
            ],
        )
        .await?;
        tx.execute(&self.add_to_balances, &[&accounts, &amounts, &versions])
            .await?;
        tx.commit().await
    }
}

/// Creates the schema and the ledger tables if missing, waiting out a Postgres that cannot
/// take a connection yet (down, starting, or at `max_connections`), as the worker's own
/// stores do at start; any other error ends the start.
async fn create_tables(url: &str, schema: &str) -> anyhow::Result<()> {
    let mut delays = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
        .build();
    loop {
        match try_create_tables(url, schema).await {
            Ok(()) => return Ok(()),
            Err(e) if steadfast::store::postgres::classify(&e).is_unavailable() => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    url = %steadfast::config::redact(url),
                    error = %steadfast::store::postgres::classify(&e),
                    ?delay,
                    "Postgres cannot take the ledger's connection yet: trying again"
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                return Err(steadfast::store::postgres::classify(&e)).with_context(|| {
                    format!(
                        "creating the ledger tables in {}",
                        steadfast::config::redact(url)
                    )
                })
            }
        }
    }
}

/// One try of [`create_tables`]; an advisory lock lets several workers start at once.
async fn try_create_tables(url: &str, schema: &str) -> Result<(), tokio_postgres::Error> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("ledger-tables:{schema}")],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.effects (
             txn text, account text, amount bigint, version bigint, attempt int,
             worker_pid int, started_at timestamptz, finished_at timestamptz);
         CREATE TABLE IF NOT EXISTS {schema}.balances (
             account text PRIMARY KEY, balance bigint NOT NULL, version bigint NOT NULL);"
    ))
    .await?;
    tx.commit().await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

fn valid_schema(schema: &str) -> anyhow::Result<()> {
    let mut chars = schema.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63;
    anyhow::ensure!(
        ok,
        "--schema {schema:?}: use a plain lower-case identifier (letters, digits, _)"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    valid_schema(&args.schema)?;
    create_tables(&args.postgres, &args.schema).await?;
    let lock_store = args.redis.clone().unwrap_or_else(|| args.postgres.clone());
    // Settings the flags do not cover (librdkafka properties, say) come from the file
    // `STEADFAST_CONFIG` names, else `steadfast.toml` when present, and `STEADFAST_*`
    // variables; the flags win.
    let base = steadfast::WorkerConfig::from_env().context("reading the worker settings")?;
    let builder = Worker::builder()
        .config(base)
        .brokers(&args.bootstrap)
        .topic(&args.topic)
        .group(&args.group)
        .concurrency(args.concurrency)
        .ordering(Ordering::Strict)
        .retry(Retry::exponential(
            3,
            Duration::from_millis(50),
            Duration::from_millis(500),
        ))
        .retry_topics([Duration::from_secs(1), Duration::from_secs(2)])
        .dead_letter_topic(format!("{}.dlq", args.topic))
        .store_schema(&args.schema)
        .store_key_prefix(format!("ledger:{}", args.schema))
        .stale_drop(&args.postgres)
        .key_lock(lock_store, Duration::from_secs(10))
        .transactions(&args.postgres);
    let stats = match args.batch {
        Some(n) => {
            builder
                .max_batch(n as usize)
                .handler(LedgerBatch::new(&args.schema))
                .run_until_signal()
                .await?
        }
        None => {
            builder
                .handler(Ledger::new(&args.schema))
                .run_until_signal()
                .await?
        }
    };
    tracing::info!(?stats, "ledger worker stopped");
    Ok(())
}
