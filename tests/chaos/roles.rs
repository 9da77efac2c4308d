//! The two child roles of the chaos binary, chosen by `CHAOS_ROLE`: `worker` (a steadfast
//! worker whose handler does what each record says, applies effects once through
//! `cx.transaction()` and logs every handler run) and `server` (the embedded server on a
//! given port and data dir, as `steadfast server` runs it, until killed).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use steadfast::handler::{Batch, BatchContext};
use steadfast::message::Json;
use steadfast::{Context, Handler, HandlerError, Message, Ordering, Retry, StartFrom, Worker};

use crate::plan::{Act, GroupSettings, Rec};

/// Everything a worker process needs, passed as JSON in `CHAOS_WORKER`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub name: String,
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    pub postgres: String,
    pub redis: String,
    /// Schema of the `effects` table.
    pub schema: String,
    /// Schema of the group's store tables (and its Redis key prefix).
    pub store_schema: String,
    pub runs_file: PathBuf,
    pub observe: String,
    pub settings: GroupSettings,
    /// librdkafka properties besides the worker's own.
    #[serde(default)]
    pub kafka: Vec<(String, String)>,
}

/// Nanoseconds since the epoch: the clock every process of the run shares.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The handler runs of this process, one line each at start (`S <run> <ns> <group> <key>
/// <id> <attempt>`) and end (`E <run> <ns>`), written unbuffered so a SIGKILL loses no line.
#[derive(Debug)]
struct RunLog {
    file: parking_lot::Mutex<File>,
    next: AtomicU64,
}

impl RunLog {
    fn write(&self, line: &str) {
        let mut f = self.file.lock();
        f.write_all(line.as_bytes()).expect("run log written");
    }
}

/// Writes the end line when dropped: at return, at a panic's unwinding, and when the runtime
/// drops the handler's future (timeout).
struct Run {
    log: Arc<RunLog>,
    run: u64,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.log.write(&format!("E {} {}\n", self.run, now_ns()));
    }
}

impl Message for Rec {
    const TOPIC: &'static str = "chaos";
    type Codec = Json;
    fn key(&self) -> Vec<u8> {
        self.key.as_bytes().to_vec()
    }
    fn version(&self) -> Option<i64> {
        if self.act == Act::VersionPanics {
            panic!("{} panics when asked for its version", self.id);
        }
        Some(self.version)
    }
    fn id(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

#[derive(Debug, Clone)]
struct Chaos {
    runs: Arc<RunLog>,
    group: String,
    insert: Arc<str>,
    pid: i32,
    timeout: Duration,
}

impl Chaos {
    /// Logs the start of a handler run of `rec` (its end is logged when the returned guard is
    /// dropped).
    fn start_run(&self, rec: &Rec, attempt: u32) -> Run {
        let run = self.runs.next.fetch_add(1, AtomicOrdering::Relaxed);
        self.runs.write(&format!(
            "S {run} {} {} {} {} {attempt}\n",
            now_ns(),
            self.group,
            rec.key,
            rec.id
        ));
        Run {
            log: self.runs.clone(),
            run,
        }
    }

    /// What `rec` says to do at `attempt` before its effect is applied: `Err` to fail it;
    /// `Ok(true)` to sleep past the handler timeout first. A panic record panics.
    fn act(rec: &Rec, attempt: u32) -> Result<bool, HandlerError> {
        match rec.act {
            Act::Ok => Ok(false),
            Act::Fail { n } if attempt <= n => Err(HandlerError::transient(format!(
                "{} fails at attempt {attempt} of its first {n}",
                rec.id
            ))),
            Act::RetryAfter { n, ms } if attempt <= n => Err(HandlerError::retry_after(
                Duration::from_millis(ms),
                format!("{} asks for {ms} ms at attempt {attempt}", rec.id),
            )),
            Act::Timeout { n } if attempt <= n => Ok(true),
            Act::Fail { .. } | Act::RetryAfter { .. } | Act::Timeout { .. } => Ok(false),
            Act::Permanent => Err(HandlerError::permanent(format!("{} is invalid", rec.id))),
            Act::Panic => panic!("{} makes the handler panic", rec.id),
            // Dead-lettered with class `permanent`, not the expected `panic`.
            Act::VersionPanics => Err(HandlerError::permanent(format!(
                "{}'s handler ran although its version panics",
                rec.id
            ))),
        }
    }

    /// Sleeps past the handler timeout; the runtime cuts the call before this returns.
    async fn oversleep(&self, id: &str) -> HandlerError {
        tokio::time::sleep(self.timeout + Duration::from_millis(500)).await;
        HandlerError::transient(format!(
            "{id} slept past the handler timeout and was not cut"
        ))
    }

    /// The effect row of `rec` applied at `attempt`, through `tx`.
    async fn apply(
        &self,
        tx: &tokio_postgres::Client,
        rec: &Rec,
        attempt: u32,
    ) -> Result<(), HandlerError> {
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        tx.execute(
            &*self.insert,
            &[
                &self.group,
                &rec.id,
                &rec.key,
                &rec.version,
                &attempt,
                &self.pid,
            ],
        )
        .await?;
        Ok(())
    }
}

impl Handler for Chaos {
    type Message = Rec;
    const GROUP: &'static str = "chaos";

    fn handle_message(
        &self,
        rec: Rec,
        cx: &Context,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
        let this = self.clone();
        let attempt = cx.attempt();
        async move {
            let _run = this.start_run(&rec, attempt);
            if Chaos::act(&rec, attempt)? {
                return Err(this.oversleep(&rec.id).await);
            }
            let Some(tx) = cx.transaction().await? else {
                return Ok(());
            };
            this.apply(&tx, &rec, attempt).await?;
            tx.commit().await
        }
    }
}

/// [`Chaos`] as a batch handler: the same acts per record, failures per record, one
/// transaction per batch. A batch holding a record that times out sleeps past the limit as a
/// whole (its records then run again alone); a record that panics panics the batch (the
/// same).
#[derive(Debug, Clone, steadfast::Handler)]
#[handler(message = Rec, group = "chaos", batch)]
struct ChaosBatch(Chaos);

impl ChaosBatch {
    async fn handle_batch(&self, batch: Batch<Rec>, cx: &BatchContext) -> Result<(), HandlerError> {
        let chaos = &self.0;
        let _runs: Vec<Run> = batch
            .iter()
            .map(|item| chaos.start_run(item.message(), item.context().attempt()))
            .collect();
        let mut oversleep = None;
        for item in &batch {
            match Chaos::act(item.message(), item.context().attempt()) {
                Ok(false) => {}
                Ok(true) => oversleep = Some(item),
                Err(e) => item.fail(e),
            }
        }
        if let Some(item) = oversleep {
            let e = chaos.oversleep(&item.message().id).await;
            item.fail(e);
        }
        let Some(tx) = cx.transaction().await? else {
            return Ok(());
        };
        for item in batch.iter().filter(|item| tx.applies(item)) {
            chaos
                .apply(&tx, item.message(), item.context().attempt())
                .await?;
        }
        tx.commit().await
    }
}

/// `CHAOS_ROLE=worker`: runs one worker until SIGTERM.
pub fn worker_main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let spec: WorkerSpec = serde_json::from_str(
        &std::env::var("CHAOS_WORKER").expect("CHAOS_WORKER holds the worker's spec"),
    )
    .expect("a worker spec");
    let runs = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.runs_file)
        .expect("run log opens");
    let mut settings = spec.settings.clone();
    // A diagnostic: side-steps the in-flight bound to look past a wedge.
    if let Some(max) = std::env::var("CHAOS_MAX_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.max_in_flight = max;
    }
    let s = &settings;
    let handler = Chaos {
        runs: Arc::new(RunLog {
            file: parking_lot::Mutex::new(runs),
            next: AtomicU64::new(0),
        }),
        group: spec.group.clone(),
        insert: format!(
            "INSERT INTO {}.effects (grp, id, key, version, attempt, pid, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp())",
            spec.schema
        )
        .into(),
        pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        timeout: Duration::from_millis(s.handler_timeout_ms),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut builder = Worker::builder();
    // A diagnostic: librdkafka's debug contexts (`cgrp,broker`, say) for the worker's clients,
    // logged with `RUST_LOG=...,librdkafka=debug`.
    if let Ok(contexts) = std::env::var("CHAOS_KAFKA_DEBUG") {
        builder = builder.kafka_property("debug", contexts);
    }
    if settings.cooperative {
        builder = builder.kafka_property("partition.assignment.strategy", "cooperative-sticky");
    }
    for (name, value) in &spec.kafka {
        builder = builder.kafka_property(name, value);
    }
    let builder = builder
        .brokers(&spec.bootstrap)
        .topic(&spec.topic)
        .group(&spec.group)
        .concurrency(s.concurrency)
        .max_in_flight(s.max_in_flight)
        .max_per_key(s.max_per_key)
        .ordering(if s.strict {
            Ordering::Strict
        } else {
            Ordering::Relaxed
        })
        .retry(Retry::exponential(
            s.attempts,
            Duration::from_millis(20),
            Duration::from_millis(100),
        ))
        .retry_topics(s.tiers_ms.map(Duration::from_millis))
        .handler_timeout(Duration::from_millis(s.handler_timeout_ms))
        .drain_timeout(Duration::from_secs(5))
        .commit_interval(Duration::from_millis(200))
        .kafka_property("session.timeout.ms", "4000")
        .kafka_property("heartbeat.interval.ms", "500")
        .store_schema(&spec.store_schema)
        .store_key_prefix(&spec.store_schema)
        .stale_drop(&spec.postgres)
        .key_lock(&spec.redis, Duration::from_secs(3))
        .transactions(&spec.postgres)
        .observe(&spec.observe)
        .lag_interval(Duration::from_secs(1));
    // Not set: the worker's default keeping.
    let builder = match s.keep_ms {
        Some(ms) => builder.key_lock_keep(Duration::from_millis(ms)),
        None => builder,
    };
    let builder = if s.from_latest {
        builder.start_from(StartFrom::Latest)
    } else {
        builder
    };
    let result = runtime.block_on(async {
        match s.batch {
            Some(b) => {
                builder
                    .max_batch(b.max_batch)
                    .batch_linger(Duration::from_millis(b.linger_ms))
                    .handler(ChaosBatch(handler))
                    .run_until_signal()
                    .await
            }
            None => builder.handler(handler).run_until_signal().await,
        }
    });
    match result {
        Ok(stats) => tracing::info!(?stats, "chaos worker {} stopped", spec.name),
        Err(e) => {
            tracing::error!(error = %e, "chaos worker {} failed", spec.name);
            std::process::exit(2);
        }
    }
}

/// `CHAOS_ROLE=server`: the embedded server on `CHAOS_SERVER_LISTEN` and
/// `CHAOS_SERVER_DATA`, as `steadfast server` starts it but with a 1 s minimum session timeout
/// and no topic auto-creation, until killed.
pub fn server_main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let listen = std::env::var("CHAOS_SERVER_LISTEN").expect("CHAOS_SERVER_LISTEN");
    let data = std::env::var("CHAOS_SERVER_DATA").expect("CHAOS_SERVER_DATA");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let server = steadfast::server::Server::builder()
            .listen(listen)
            .data_dir(data)
            .auto_create_topics(false)
            .group_min_session_timeout(Duration::from_millis(1_000))
            .start()
            .await
            .expect("the server starts");
        println!("steadfast server listening on {}", server.local_addr());
        std::future::pending::<()>().await;
    });
}
