//! A bank ledger: the once-only path end to end. Every transaction message adds its amount to
//! its account's balance exactly once, in the Postgres transaction steadfast hands the
//! handler (with the message id and the account's version recorded in it), under a per-key
//! lock, with stale versions dropped, transient failures retried in place and through two
//! retry tiers, and poison pills dead-lettered.
//!
//! ```text
//! ledger --bootstrap HOST:PORT --topic T --group G --postgres URL --schema S [--redis URL] [--concurrency N]
//! ```
//!
//! - Consumes `T`, `T.G.retry.1` (1 s) and `T.G.retry.2` (2 s) in group `G` (retry tiers
//!   belong to the group); dead letters go to `T.dlq`. Key = account id; value = JSON `{"txn", "account", "amount", "version",
//!   "fail"?, "poison"?}`. A value that does not decode is dead-lettered.
//! - `poison: true` fails permanently; `fail: n` fails transiently on every attempt ≤ n.
//! - Otherwise inserts a row into `S.effects` and adds the amount to `S.balances`, in one
//!   transaction with steadfast's records (tables created if missing).
//! - The per-key lock lives in Redis with `--redis`, else in Postgres. SIGTERM drains,
//!   commits and exits 0. Logs go to stderr (`RUST_LOG` filters them).
//! - Other settings come from `steadfast.toml` (or the file `STEADFAST_CONFIG` names) and
//!   `STEADFAST_*` variables when present, e.g. `STEADFAST_KAFKA_SESSION_TIMEOUT_MS=6000`;
//!   the flags take precedence.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Parser;
use serde::{Deserialize, Serialize};
use steadfast::{Context, HandlerError, Ordering, Retry, Worker};

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
    /// Handler calls at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
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

    async fn handle(&self, msg: LedgerTxn, cx: &Context) -> Result<(), HandlerError> {
        let started_at = SystemTime::now();
        if msg.poison == Some(true) {
            return Err(HandlerError::permanent(format!(
                "poison transaction {}",
                msg.txn
            )));
        }
        if let Some(fail) = msg.fail {
            if cx.attempt() <= fail {
                return Err(HandlerError::transient(format!(
                    "transaction {} fails at attempt {} of its first {fail}",
                    msg.txn,
                    cx.attempt()
                )));
            }
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

/// Creates the schema and the ledger tables if missing; an advisory lock lets several
/// workers start at once.
async fn create_tables(url: &str, schema: &str) -> anyhow::Result<()> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", steadfast::config::redact(url)))?;
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
    let stats = Worker::builder()
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
        .transactions(&args.postgres)
        .handler(Ledger::new(&args.schema))
        .run_until_signal()
        .await?;
    tracing::info!(?stats, "ledger worker stopped");
    Ok(())
}
