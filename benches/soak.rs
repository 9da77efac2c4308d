//! Soak benchmark: does a worker fleet stay flat over a long run with members coming and
//! going?
//!
//! The embedded server runs in a child process; a 12-partition topic (1 MiB segments, 3
//! minutes' retention, so that segments roll and are deleted throughout) gets a steady
//! stream (1,000 msg/s by default) of versioned JSON updates with ids over 10,000 keys, from
//! a producer in this process. Three worker processes (this binary run again with
//! `--soak-worker`) consume it in one group with Redis stale drop, key lock and dedup (Redis
//! on 127.0.0.1:6379, keys under a fresh prefix that is deleted at the end), two retry tiers
//! and the dead-letter topic, serving `/metrics`. The handler sleeps 1-5 ms; about 3.5% of
//! records fail transiently at first (retried in place, some through one or both tiers),
//! 0.05% keep failing (dead-lettered after the last tier) and 0.05% fail permanently
//! (dead-lettered at once).
//!
//! At the end of every minute a member leaves (SIGTERM; it must exit 0) or joins, in turn,
//! so the group has 2-3 members; worker `w1` is never restarted. Each minute prints one
//! row: the resident set (VmRSS) and open file descriptors of `w1`, of the other live
//! workers and of the server process, the group's lag (log end minus committed offset,
//! summed over the partitions of the topic and its retry tiers) at the minute's end and the
//! highest sampled during it, and the records produced and handled in it. The end prints
//! the drift of `w1`'s and the server's RSS and fds (the change from minute 2 to the last
//! minute with as many members, least-squares slopes per 10 minutes), whether lag grew, and,
//! after the producer stopped and the group drained, the check that every produced record
//! was handled or dead-lettered as planned; it fails if one was not, or if a process did
//! not exit 0 when told to.
//!
//! ```sh
//! cargo bench --bench soak                                        # 30 one-minute minutes
//! SOAK_MINUTES=5 SOAK_MINUTE_SECS=20 cargo bench --bench soak     # a quick look
//! ```
//!
//! The worker and server processes run with `MALLOC_ARENA_MAX=2`, as the README advises for
//! long-running workers (glibc's default of eight malloc arenas per core lets RSS creep as
//! librdkafka's and tokio's threads each keep their own); `SOAK_MALLOC_ARENA_MAX=` (empty)
//! runs them with glibc's default, `SOAK_MALLOC_ARENA_MAX=N` with N.
//!
//! `SOAK_RATE` sets the records per second. Without cargo bench's `--bench` flag (as under
//! `cargo test --benches`) it runs a smoke pass: three 4-second minutes at 300 msg/s, with
//! the same checks.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead as _, BufReader, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::{Rng as _, SeedableRng as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use steadfast::{Context, DedupConfig, HandlerError, Retry, Worker, WorkerConfig};

const REDIS: &str = "redis://127.0.0.1:6379";
const KEYS: u64 = 10_000;
const PARTITIONS: i32 = 12;
const GROUP: &str = "soak";

/// A versioned update with an id; `seq` is its place in the produced stream.
#[derive(Debug, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "soak", key = key, version = version, id = id)]
struct Update {
    id: String,
    key: String,
    version: i64,
    seq: u64,
    body: String,
}

/// What the handler does with a record: sleep, then fail or succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Never,
    /// Fails attempts `1..=n` transiently (3 in place per delivery: 1 stays in place, 3 goes
    /// through tier 1, 6 through both tiers).
    First(u32),
    /// Fails every attempt transiently: dead-lettered after the last tier.
    Always,
    /// Fails permanently: dead-lettered at once.
    Permanent,
}

/// A record's handler sleep (ms) and failure, fixed by its sequence number.
fn fate(seq: u64) -> (u64, Fail) {
    // splitmix64: a well-spread hash of the sequence number.
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let fail = match z % 10_000 {
        0..5 => Fail::Permanent,
        5..10 => Fail::Always,
        10..20 => Fail::First(6),
        20..50 => Fail::First(3),
        50..350 => Fail::First(1),
        _ => Fail::Never,
    };
    (1 + (z >> 32) % 5, fail)
}

fn dead_lettered(seq: u64) -> bool {
    matches!(fate(seq).1, Fail::Always | Fail::Permanent)
}

/// The handler: sleeps, fails as [`fate`] says, and on success appends the record's sequence
/// number (u64, little-endian) to this process's handled file.
#[derive(Debug, Clone, steadfast::Handler)]
#[handler(message = Update, group = "soak")]
struct Soak {
    handled: Arc<parking_lot::Mutex<BufWriter<File>>>,
}

impl Soak {
    async fn handle(&self, msg: Update, cx: &Context) -> Result<(), HandlerError> {
        let (sleep_ms, fail) = fate(msg.seq);
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
        let attempt = cx.attempt();
        match fail {
            Fail::Permanent => {
                return Err(HandlerError::permanent(format!("{} is invalid", msg.id)))
            }
            Fail::Always => {
                return Err(HandlerError::transient(format!(
                    "{} keeps failing (attempt {attempt})",
                    msg.id
                )))
            }
            Fail::First(n) if attempt <= n => {
                return Err(HandlerError::transient(format!(
                    "{} fails attempt {attempt} of its first {n}",
                    msg.id
                )))
            }
            Fail::First(_) | Fail::Never => {}
        }
        self.handled
            .lock()
            .write_all(&msg.seq.to_le_bytes())
            .map_err(|e| HandlerError::transient(format!("handled file: {e}")))
    }
}

/// Everything a worker process needs, as JSON in its second argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkerSpec {
    bootstrap: String,
    topic: String,
    key_prefix: String,
    handled_file: PathBuf,
    tiers_ms: Vec<u64>,
}

/// `--soak-worker SPEC [--standby]`: one worker until SIGTERM, then flushes its handled
/// file. On standby it first waits for a line on stdin (and exits at once at its end).
fn worker_main(spec: &str, standby: bool) -> anyhow::Result<()> {
    if standby {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line)? == 0 {
            return Ok(());
        }
    }
    init_tracing();
    let spec: WorkerSpec = serde_json::from_str(spec).context("worker spec")?;
    let file = File::create(&spec.handled_file)
        .with_context(|| format!("creating {}", spec.handled_file.display()))?;
    let handled = Arc::new(parking_lot::Mutex::new(BufWriter::new(file)));
    let config = WorkerConfig {
        // Ids are remembered 10 minutes (default 7 days): longer than any redelivery here,
        // and Redis holds a bounded set of them.
        dedup: Some(DedupConfig {
            store: REDIS.to_owned(),
            lease_ms: None,
            ttl_ms: 600_000,
        }),
        ..WorkerConfig::default()
    };
    let worker = Worker::builder()
        .config(config)
        .brokers(&spec.bootstrap)
        .topic(&spec.topic)
        .group(GROUP)
        .concurrency(32)
        .retry(Retry::exponential(
            3,
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
        .retry_topics(spec.tiers_ms.iter().copied().map(Duration::from_millis))
        .kafka_property("heartbeat.interval.ms", "1000")
        .store_key_prefix(&spec.key_prefix)
        .stale_drop(REDIS)
        .key_lock(REDIS, Duration::from_secs(10))
        .observe_listener(std::net::TcpListener::bind("127.0.0.1:0")?)
        .handler(Soak {
            handled: handled.clone(),
        })
        .build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The orchestrator counts handled records by the files' sizes.
        let flusher = handled.clone();
        let flushing = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                if let Err(e) = flusher.lock().flush() {
                    tracing::error!(error = %e, "flushing the handled file");
                }
            }
        });
        let stats = worker.run_until_signal().await;
        flushing.abort();
        let stats = stats?;
        tracing::info!(?stats, "soak worker stopped");
        anyhow::Ok(())
    })?;
    handled
        .lock()
        .flush()
        .context("flushing the handled file")?;
    Ok(())
}

/// `--soak-server DIR`: the embedded server on a free port, its address on stdout, until
/// SIGTERM.
fn server_main(data: &str) -> anyhow::Result<()> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = steadfast::server::Server::builder()
            .listen("127.0.0.1:0")
            .data_dir(data)
            .auto_create_topics(false)
            .start()
            .await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        println!("{}", server.bootstrap_servers());
        std::io::stdout().flush()?;
        term.recv().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}

/// The run's sizes.
#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    minutes: u32,
    minute: Duration,
    rate: u64,
    tiers_ms: Vec<u64>,
    lag_every: Duration,
    /// `MALLOC_ARENA_MAX` of the worker and server processes (`SOAK_MALLOC_ARENA_MAX`,
    /// default 2, as the README advises for long-running workers); `None` (the variable set
    /// empty) leaves glibc's default of eight arenas per core.
    arena_max: Option<u32>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env(quick: bool) -> anyhow::Result<Settings> {
        let (minutes, minute_secs, rate) = if quick { (3, 4, 300) } else { (30, 60, 1_000) };
        let minutes: u32 = env_or("SOAK_MINUTES", minutes)?;
        let minute = Duration::from_secs(env_or("SOAK_MINUTE_SECS", minute_secs)?);
        if minutes == 0 || minute.is_zero() {
            bail!("SOAK_MINUTES and SOAK_MINUTE_SECS must be at least 1");
        }
        Ok(Settings {
            quick,
            minutes,
            minute,
            rate: env_or("SOAK_RATE", rate)?,
            tiers_ms: if quick {
                vec![200, 1_000]
            } else {
                vec![1_000, 5_000]
            },
            lag_every: (minute / 6).clamp(Duration::from_millis(500), Duration::from_secs(5)),
            arena_max: match std::env::var("SOAK_MALLOC_ARENA_MAX") {
                Ok(v) if v.trim().is_empty() => None,
                Ok(v) => {
                    Some(v.trim().parse().map_err(|_| {
                        anyhow::anyhow!("SOAK_MALLOC_ARENA_MAX={v} is not a number")
                    })?)
                }
                Err(_) => Some(2),
            },
        })
    }
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000");
    c
}

/// A child process that is SIGKILLed and reaped if still running when dropped.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    /// A worker on standby: the pipe to its stdin, where a line starts it.
    standby: Option<std::process::ChildStdin>,
    log: PathBuf,
    handled: Option<PathBuf>,
    /// When SIGTERM was sent, and how it exited.
    termed: Option<Instant>,
    exit: Option<(ExitStatus, Duration)>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (reaping it if it exited).
    fn running(&mut self) -> anyhow::Result<bool> {
        if self.exit.is_some() {
            return Ok(false);
        }
        match self.child.try_wait()? {
            None => Ok(true),
            Some(status) => {
                let after = self.termed.map_or(Duration::ZERO, |t| t.elapsed());
                self.exit = Some((status, after));
                Ok(false)
            }
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit.
    fn stop(&mut self, limit: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        if self.running()? {
            self.termed = Some(Instant::now());
            let status = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status()?;
            if !status.success() {
                bail!("kill -TERM {} failed", self.pid());
            }
            let deadline = Instant::now() + limit;
            while self.running()? {
                if Instant::now() > deadline {
                    bail!("{} did not exit within {limit:?} of SIGTERM", self.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.exit
            .with_context(|| format!("{} has no exit status", self.name))
    }

    /// The last `n` lines of its log.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// VmRSS in KiB and the number of open file descriptors of `pid`.
fn resources(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// `exit 0`, `exit 2`, `signal 9`.
fn exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The fleet of worker processes.
struct Fleet {
    dir: PathBuf,
    spec: WorkerSpec,
    /// `MALLOC_ARENA_MAX` for the workers (see [`Settings::arena_max`]).
    arena_max: Option<u32>,
    procs: Vec<Proc>,
}

impl Fleet {
    /// Starts the next worker process: running at once, or on standby (waiting for a line
    /// on its stdin, see [`Fleet::start_next`]).
    fn spawn(&mut self, standby: bool) -> anyhow::Result<String> {
        let name = format!("w{}", self.procs.len() + 1);
        let log = self.dir.join(format!("{name}.log"));
        let handled = self.dir.join(format!("{name}.handled"));
        let mut spec = self.spec.clone();
        spec.handled_file.clone_from(&handled);
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--soak-worker")
            .arg(serde_json::to_string(&spec)?)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(File::create(&log)?);
        arenas(&mut command, self.arena_max);
        if standby {
            command.arg("--standby").stdin(Stdio::piped());
        } else {
            command.stdin(Stdio::null());
        }
        let mut child = command.spawn().context("starting a worker")?;
        self.procs.push(Proc {
            name: name.clone(),
            standby: child.stdin.take(),
            child,
            log,
            handled: Some(handled),
            termed: None,
            exit: None,
        });
        Ok(name)
    }

    /// Starts the next worker on standby.
    fn start_next(&mut self) -> anyhow::Result<String> {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.standby.is_some())
            .context("no worker left on standby")?;
        let mut stdin = p.standby.take().context("standby")?;
        writeln!(stdin, "start").with_context(|| format!("starting {}", p.name))?;
        Ok(p.name.clone())
    }

    /// Ends the workers still on standby (they exit 0 at the end of their stdin).
    fn release_standbys(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if p.standby.take().is_some() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while p.running()? {
                    if Instant::now() > deadline {
                        bail!("{} on standby did not exit at the end of its stdin", p.name);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }

    /// The workers started and running.
    fn live(&mut self) -> anyhow::Result<Vec<usize>> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate() {
            if p.standby.is_none() && p.running()? {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Records handled so far, by every worker (from the sizes of their handled files).
    fn handled(&self) -> u64 {
        self.procs
            .iter()
            .filter_map(|p| p.handled.as_ref())
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len() / 8)
            .sum()
    }
}

/// The producer's delivery reports: how many were acknowledged, which sequence numbers
/// failed.
#[derive(Debug, Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: parking_lot::Mutex<Vec<u64>>,
}

/// The producer's context, sharing its [`Deliveries`] with the orchestrator.
#[derive(Debug, Clone)]
struct Reports(Arc<Deliveries>);

impl rdkafka::ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        match result {
            Ok(_) => {
                self.0.ok.fetch_add(1, AtomicOrdering::Relaxed);
            }
            Err(_) => self.0.failed.lock().push(*seq),
        }
    }
}

/// Produces `rate` updates a second until `stop`; returns the number sent.
fn produce(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    sent: &AtomicU64,
    deliveries: Arc<Deliveries>,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let producer: BaseProducer<Reports> = client(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(Reports(deliveries))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(25);
    let mut versions = vec![0i64; usize::try_from(KEYS)?];
    let body = "soak ".repeat(16);
    let started = Instant::now();
    let mut seq = 0u64;
    while !stop.load(AtomicOrdering::Relaxed) {
        let due = u64::try_from(started.elapsed().as_millis())? * rate / 1000;
        while seq < due {
            let k = rng.random_range(0..KEYS);
            let version = &mut versions[usize::try_from(k)?];
            *version += 1;
            let update = Update {
                id: format!("u{seq}"),
                key: format!("k{k}"),
                version: *version,
                seq,
                body: body.clone(),
            };
            let payload = serde_json::to_vec(&update)?;
            let mut record = Some(
                BaseRecord::with_opaque_to(topic, Box::new(seq))
                    .key(&update.key)
                    .payload(&payload),
            );
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
            seq += 1;
            sent.store(seq, AtomicOrdering::Relaxed);
        }
        producer.poll(Duration::from_millis(5));
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(seq)
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, AtomicOrdering::Relaxed);
    }
}

/// Reads the group's lag over the topic and its retry tiers.
struct LagProbe {
    consumer: BaseConsumer,
    topics: Vec<String>,
}

impl LagProbe {
    /// Sum over partitions of log end minus the group's committed offset (or the log start
    /// where it committed none).
    fn lag(&self) -> anyhow::Result<i64> {
        let mut tpl = TopicPartitionList::new();
        for t in &self.topics {
            for p in 0..PARTITIONS {
                tpl.add_partition(t, p);
            }
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .context("the group's committed offsets")?;
        let mut lag = 0;
        for t in &self.topics {
            for p in 0..PARTITIONS {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(t, p, Duration::from_secs(10))
                    .with_context(|| format!("watermarks of {t}/{p}"))?;
                let at = match committed.find_partition(t, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => low,
                };
                lag += (high - at).max(0);
            }
        }
        Ok(lag)
    }
}

/// Every record of `topic` (all partitions, from the start to the high watermarks as they
/// are now): the `seq` of each payload.
fn read_all(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<u64>> {
    let consumer: BaseConsumer = client(bootstrap)
        .set(
            "group.id",
            format!("soak-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in 0..PARTITIONS {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        remaining += high - low;
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while remaining > 0 {
        if Instant::now() > deadline {
            bail!("{remaining} records of {topic} not read within 60 s");
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(m) => {
                let m = m?;
                let update: Update = serde_json::from_slice(m.payload().unwrap_or_default())
                    .with_context(|| format!("a record of {topic}"))?;
                out.push(update.seq);
                remaining -= 1;
            }
        }
    }
    Ok(out)
}

/// Deletes every Redis key under `prefix:`; the number deleted.
fn clean_redis(prefix: &str) -> anyhow::Result<u64> {
    let mut con = redis::Client::open(REDIS)?
        .get_connection()
        .context("Redis on 127.0.0.1:6379 (scripts/services.sh)")?;
    let pattern = format!("{prefix}:*");
    let mut deleted = 0;
    // Deleting while scanning can make SCAN skip keys: go again until a pass finds none.
    loop {
        let mut found = 0;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query(&mut con)?;
            if !keys.is_empty() {
                found += keys.len() as u64;
                let n: u64 = redis::cmd("UNLINK").arg(&keys).query(&mut con)?;
                deleted += n;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if found == 0 {
            return Ok(deleted);
        }
    }
}

/// Least-squares slope of `points` (minute, value), per minute.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// One minute's figures.
#[derive(Debug, Clone)]
struct Row {
    minute: u32,
    /// Workers running at the minute's end.
    members: usize,
    anchor: Option<(u64, u64)>,
    server: Option<(u64, u64)>,
    lag_end: i64,
    lag_max: i64,
}

fn fmt_res(r: Option<(u64, u64)>) -> (String, String) {
    r.map_or(("-".into(), "-".into()), |(rss, fds)| {
        (format!("{:.1}", mib(rss)), fds.to_string())
    })
}

/// Sets `MALLOC_ARENA_MAX` of a child process, or removes it (glibc's default).
fn arenas(command: &mut Command, arena_max: Option<u32>) {
    match arena_max {
        Some(n) => command.env("MALLOC_ARENA_MAX", n.to_string()),
        None => command.env_remove("MALLOC_ARENA_MAX"),
    };
}

/// Starts the server process; returns it and its bootstrap address.
fn start_server(dir: &Path, arena_max: Option<u32>) -> anyhow::Result<(Proc, String)> {
    let log = dir.join("server.log");
    let mut command = Command::new(std::env::current_exe()?);
    arenas(&mut command, arena_max);
    let mut child = command
        .arg("--soak-server")
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log)?)
        .spawn()
        .context("starting the server")?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let server = Proc {
        name: "server".into(),
        child,
        standby: None,
        log,
        handled: None,
        termed: None,
        exit: None,
    };
    let mut bootstrap = String::new();
    BufReader::new(stdout).read_line(&mut bootstrap)?;
    let bootstrap = bootstrap.trim().to_owned();
    if bootstrap.is_empty() {
        bail!("the server did not start:\n{}", server.log_tail(20));
    }
    Ok((server, bootstrap))
}

/// Creates the topic with 1 MiB segments and a 3-minute retention, so that segments roll
/// and are deleted during the run.
fn create_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
        let new_topic = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))
            .set("segment.bytes", "1048576")
            .set("retention.ms", "180000");
        for r in admin
            .create_topics([&new_topic], &AdminOptions::new())
            .await?
        {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
        anyhow::Ok(())
    })
}

/// Waits until the workers created `topics` (the tiers and the dead-letter topic).
fn wait_for_topics(probe: &LagProbe, fleet: &mut Fleet, topics: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metadata = probe
            .consumer
            .fetch_metadata(None, Duration::from_secs(10))?;
        let names: BTreeSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        if topics.iter().all(|t| names.contains(t.as_str())) {
            return Ok(());
        }
        if fleet.live()?.len() < 3 || Instant::now() > deadline {
            bail!(
                "the workers did not create {topics:?}:\n{}",
                fleet.procs[0].log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The minutes: a row each, then a member leaves or joins. Returns the rows; adds to
/// `problems` the workers that did not exit 0 when told to, or exited untold.
fn minutes(
    s: &Settings,
    fleet: &mut Fleet,
    server: &Proc,
    probe: &LagProbe,
    sent: &AtomicU64,
    problems: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    const ANCHOR: usize = 0;
    println!("| min | at its start | w1 RSS MiB | w1 fds | other workers: RSS MiB / fds | server RSS MiB | server fds | lag end | lag max | produced | handled |");
    println!("|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut event = String::from("w1 w2 w3 started");
    let (mut last_sent, mut last_handled) = (0u64, 0u64);
    for minute in 1..=s.minutes {
        let end = started + s.minute * minute;
        let mut lag_max = 0i64;
        loop {
            lag_max = lag_max.max(probe.lag()?);
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep(s.lag_every.min(end - now));
        }
        let lag_end = probe.lag()?;
        lag_max = lag_max.max(lag_end);
        let live = fleet.live()?;
        for p in fleet.procs.iter().filter(|p| p.termed.is_none()) {
            if let Some((status, _)) = p.exit {
                let line = format!("{} exited by itself with {}", p.name, exit(status));
                if !problems.contains(&line) {
                    eprintln!("{line}:\n{}", p.log_tail(20));
                    problems.push(line);
                }
            }
        }
        let anchor = resources(fleet.procs[ANCHOR].pid()).filter(|_| live.contains(&ANCHOR));
        let others: Vec<String> = live
            .iter()
            .filter(|&&i| i != ANCHOR)
            .map(|&i| {
                let p = &fleet.procs[i];
                let (rss, fds) = fmt_res(resources(p.pid()));
                format!("{} {rss}/{fds}", p.name)
            })
            .collect();
        let server_res = resources(server.pid());
        let (now_sent, now_handled) = (sent.load(AtomicOrdering::Relaxed), fleet.handled());
        let (a_rss, a_fds) = fmt_res(anchor);
        let (s_rss, s_fds) = fmt_res(server_res);
        println!(
            "| {minute} | {event} | {a_rss} | {a_fds} | {} | {s_rss} | {s_fds} | {lag_end} | {lag_max} | {} | {} |",
            others.join(", "),
            now_sent - last_sent,
            now_handled - last_handled
        );
        (last_sent, last_handled) = (now_sent, now_handled);
        rows.push(Row {
            minute,
            members: live.len(),
            anchor,
            server: server_res,
            lag_end,
            lag_max,
        });
        if minute == s.minutes {
            break;
        }
        // A member leaves (the oldest but w1) or joins, in turn.
        event = if minute % 2 == 1 {
            let Some(&i) = live.iter().find(|&&i| i != ANCHOR) else {
                bail!("no worker but w1 is running");
            };
            let p = &mut fleet.procs[i];
            match p.stop(Duration::from_secs(60)) {
                Ok((status, after)) => {
                    let line = format!(
                        "{} left ({}, {:.1} s)",
                        p.name,
                        exit(status),
                        after.as_secs_f64()
                    );
                    if !status.success() {
                        eprintln!("{line}:\n{}", p.log_tail(20));
                        problems.push(line.clone());
                    }
                    line
                }
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    format!("{e:#}")
                }
            }
        } else {
            format!("{} joined", fleet.start_next()?)
        };
    }
    Ok(rows)
}

/// Prints the drift of w1's and the server's RSS and fds, and of the lag.
fn print_drift(s: &Settings, rows: &[Row]) {
    // From minute 2 (after the warm-up) to the last minute with as many members: the
    // server's connections, and the partitions w1 holds, follow the member count.
    let warm: Vec<&Row> = rows
        .iter()
        .filter(|r| r.minute >= 2.min(s.minutes))
        .collect();
    let Some(&first) = warm.first() else {
        return;
    };
    let same = warm
        .iter()
        .skip(1)
        .rev()
        .find(|r| r.members == first.members)
        .copied();
    let last = same.or(warm.last().copied()).unwrap_or(first);
    // The last half, for a rise that flattens (a warm-up) against one that keeps going.
    let half = &warm[warm.len() / 2..];
    let slope_of = |points: Vec<(f64, f64)>, precision: usize| {
        if points.len() < 2 {
            "-".to_owned()
        } else {
            format!("{:+.precision$}", slope(&points) * 10.0)
        }
    };
    let (h0, h1) = (half[0].minute, s.minutes);
    println!(
        "\n### Drift: minute {} to minute {} ({}), slopes by least squares\n",
        first.minute,
        last.minute,
        if same.is_some() {
            format!("the last with as many members, {}", first.members)
        } else {
            "no later minute has as many members".to_owned()
        }
    );
    println!(
        "| process | figure | at minute {} | at minute {} | change | slope per 10 min, minutes {}-{h1} | slope per 10 min, minutes {h0}-{h1} |",
        first.minute, last.minute, first.minute
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    type Pick = fn(&Row) -> Option<(u64, u64)>;
    let processes: [(&str, Pick); 2] = [
        ("w1 (never restarted)", |r| r.anchor),
        ("server", |r| r.server),
    ];
    for (process, res) in processes {
        let series = |rows: &[&Row], fds: bool| -> Vec<(f64, f64)> {
            rows.iter()
                .filter_map(|r| {
                    res(r).map(|(rss, n)| {
                        (f64::from(r.minute), if fds { n as f64 } else { mib(rss) })
                    })
                })
                .collect()
        };
        let (Some(a), Some(b)) = (res(first), res(last)) else {
            println!("| {process} | - | - | - | - | - | - |");
            continue;
        };
        println!(
            "| {process} | RSS MiB | {:.1} | {:.1} | {:+.1} | {} | {} |",
            mib(a.0),
            mib(b.0),
            mib(b.0) - mib(a.0),
            slope_of(series(&warm, false), 2),
            slope_of(series(half, false), 2)
        );
        println!(
            "| {process} | fds | {} | {} | {:+} | {} | {} |",
            a.1,
            b.1,
            i128::from(b.1) - i128::from(a.1),
            slope_of(series(&warm, true), 1),
            slope_of(series(half, true), 1)
        );
    }
    let lag_end: Vec<(f64, f64)> = warm
        .iter()
        .map(|r| (f64::from(r.minute), r.lag_end as f64))
        .collect();
    let third = warm.len().div_ceil(3).max(1);
    let mean = |rows: &[&Row]| {
        rows.iter().map(|r| r.lag_end as f64).sum::<f64>() / rows.len().max(1) as f64
    };
    let (early, late) = (mean(&warm[..third]), mean(&warm[warm.len() - third..]));
    // Growth: the last third's end-of-minute lag above 1.5 × the first third's plus one
    // second of production.
    let grew = late > early * 1.5 + s.rate as f64;
    println!(
        "\nlag: highest sampled {} (every {:.1} s); at the end of minute {} {}, of the last {}; slope per 10 min {:+.0}; mean at the ends of the first third of minutes {}-{h1} {early:.0}, of the last third {late:.0}: {}",
        rows.iter().map(|r| r.lag_max).max().unwrap_or(0),
        s.lag_every.as_secs_f64(),
        first.minute,
        first.lag_end,
        warm.last().map_or(0, |r| r.lag_end),
        slope(&lag_end) * 10.0,
        first.minute,
        if grew { "GREW" } else { "no growth" }
    );
}

/// Checks that every produced record was handled, or dead-lettered as planned; prints the
/// counts and adds what is wrong to `problems`.
fn check_records(
    fleet: &Fleet,
    bootstrap: &str,
    dlq: &str,
    produced: u64,
    deliveries: &Deliveries,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let failed: BTreeSet<u64> = deliveries.failed.lock().iter().copied().collect();
    let delivered = deliveries.ok.load(AtomicOrdering::Relaxed);
    let size = usize::try_from(produced)?;
    let mut handled = vec![0u32; size];
    let mut calls = 0u64;
    for p in &fleet.procs {
        let Some(path) = p.handled.as_ref().filter(|f| f.exists()) else {
            continue;
        };
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        for chunk in bytes.chunks_exact(8) {
            let seq = u64::from_le_bytes(chunk.try_into()?);
            let slot = handled
                .get_mut(usize::try_from(seq)?)
                .with_context(|| format!("handled seq {seq} was never produced"))?;
            *slot += 1;
            calls += 1;
        }
    }
    let mut in_dlq = vec![0u32; size];
    for seq in read_all(bootstrap, dlq)? {
        if let Some(slot) = in_dlq.get_mut(usize::try_from(seq)?) {
            *slot += 1;
        }
    }
    let (mut missing, mut unplanned, mut twice, mut planned, mut distinct) =
        (Vec::new(), Vec::new(), 0u64, 0u64, 0u64);
    for seq in 0..produced {
        let i = usize::try_from(seq)?;
        if failed.contains(&seq) {
            continue;
        }
        if dead_lettered(seq) {
            planned += 1;
            if in_dlq[i] == 0 {
                missing.push(seq);
            }
        } else {
            if handled[i] > 0 {
                distinct += 1;
            } else {
                missing.push(seq);
            }
            if in_dlq[i] > 0 {
                unplanned.push(seq);
            }
        }
        if in_dlq[i] > 1 {
            twice += 1;
        }
    }
    let dlq_total: u64 = in_dlq.iter().map(|&n| u64::from(n)).sum();
    println!(
        "produced {produced} ({delivered} acknowledged, {} failed); handled {distinct} distinct records in {calls} successful handler calls ({} repeats); dead-lettered {dlq_total} (planned {planned}; records with two copies there: {twice}; records there that should have been handled: {}); missing (neither handled nor dead-lettered): {}",
        failed.len(),
        calls - distinct,
        unplanned.len(),
        missing.len()
    );
    let first = |v: &[u64]| format!("{:?}", &v[..v.len().min(10)]);
    if !missing.is_empty() {
        problems.push(format!(
            "{} records neither handled nor dead-lettered (first: {})",
            missing.len(),
            first(&missing)
        ));
    }
    if !unplanned.is_empty() {
        problems.push(format!(
            "{} records dead-lettered that should have been handled (first: {})",
            unplanned.len(),
            first(&unplanned)
        ));
    }
    if twice > 0 {
        problems.push(format!("{twice} records dead-lettered twice"));
    }
    if !failed.is_empty() {
        problems.push(format!(
            "{} records were not acknowledged by the server",
            failed.len()
        ));
    }
    Ok(())
}

/// Prints what the workers logged at WARN or ERROR, without the time stamps, most frequent
/// first.
fn print_logged(fleet: &Fleet) {
    let mut logged: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for p in &fleet.procs {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        for line in text.lines() {
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                let rest = line.split_once(' ').map_or(line, |(_, rest)| rest).trim();
                let rest: String = rest.chars().take(160).collect();
                *logged.entry(rest).or_default() += 1;
            }
        }
    }
    let mut logged: Vec<(String, u64)> = logged.into_iter().collect();
    logged.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    println!(
        "worker log lines at WARN or ERROR: {}",
        logged.iter().map(|(_, n)| n).sum::<u64>()
    );
    for (line, n) in logged.iter().take(8) {
        println!("  {n} × {line}");
    }
    if logged.len() > 8 {
        println!("  ... and {} other distinct lines", logged.len() - 8);
    }
}

fn run(s: &Settings, dir: &Path, key_prefix: &str) -> anyhow::Result<()> {
    let (mut server, bootstrap) = start_server(dir, s.arena_max)?;
    let topic = format!("soak-{}", uuid::Uuid::new_v4().simple());
    create_topic(&bootstrap, &topic)?;
    let tiers: Vec<String> = (1..=s.tiers_ms.len())
        .map(|n| format!("{topic}.{GROUP}.retry.{n}"))
        .collect();
    let dlq = format!("{topic}.dlq");
    let mut fleet = Fleet {
        dir: dir.to_owned(),
        spec: WorkerSpec {
            bootstrap: bootstrap.clone(),
            topic: topic.clone(),
            key_prefix: key_prefix.to_owned(),
            handled_file: PathBuf::new(),
            tiers_ms: s.tiers_ms.clone(),
        },
        arena_max: s.arena_max,
        procs: Vec::new(),
    };
    // Every worker process is started now, those that join later on standby: a process
    // started after this one made its librdkafka clients would inherit their pipes (which
    // librdkafka opens without close-on-exec), 10 descriptors that are not the worker's.
    for _ in 0..3 {
        fleet.spawn(false)?;
    }
    for _ in 0..(s.minutes - 1) / 2 {
        fleet.spawn(true)?;
    }
    let probe = LagProbe {
        consumer: client(&bootstrap)
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .create()?,
        topics: std::iter::once(topic.clone())
            .chain(tiers.iter().cloned())
            .collect(),
    };
    let created: Vec<String> = tiers.iter().cloned().chain([dlq.clone()]).collect();
    wait_for_topics(&probe, &mut fleet, &created)?;

    // The producer, stopped when this function returns, whichever way.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_producing = StopOnDrop(stop.clone());
    let sent = Arc::new(AtomicU64::new(0));
    let deliveries = Arc::new(Deliveries::default());
    let producing = {
        let (bootstrap, topic, stop, sent) =
            (bootstrap.clone(), topic.clone(), stop.clone(), sent.clone());
        let (rate, deliveries) = (s.rate, deliveries.clone());
        std::thread::spawn(move || produce(&bootstrap, &topic, rate, &sent, deliveries, &stop))
    };

    println!(
        "## steadfast soak ({}): {} minutes of {} s, {} msg/s over {KEYS} keys, {PARTITIONS} partitions, tiers {:?} ms, workers and server with {}\n",
        if s.quick { "quick smoke run" } else { "full run" },
        s.minutes,
        s.minute.as_secs(),
        s.rate,
        s.tiers_ms,
        match s.arena_max {
            Some(n) => format!("MALLOC_ARENA_MAX={n}"),
            None => "glibc's default malloc arenas".to_owned(),
        }
    );
    let mut problems = Vec::new();
    let rows = minutes(s, &mut fleet, &server, &probe, &sent, &mut problems)?;

    // Stop producing, let the group drain, stop the fleet.
    stop.store(true, AtomicOrdering::Relaxed);
    let produced = producing
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let drain_started = Instant::now();
    let drain_limit =
        Duration::from_secs(120) + Duration::from_millis(3 * s.tiers_ms.iter().sum::<u64>());
    loop {
        let lag = probe.lag()?;
        if lag == 0 {
            break;
        }
        if drain_started.elapsed() > drain_limit {
            bail!("the group did not drain within {drain_limit:?}: lag {lag}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let drained = drain_started.elapsed();
    fleet.release_standbys()?;
    let mut exits = Vec::new();
    for i in fleet.live()? {
        let p = &mut fleet.procs[i];
        let (status, after) = p.stop(Duration::from_secs(60))?;
        exits.push(format!(
            "{} {} in {:.1} s",
            p.name,
            exit(status),
            after.as_secs_f64()
        ));
        if !status.success() {
            eprintln!("{}:\n{}", p.name, p.log_tail(20));
            problems.push(format!(
                "{} exited with {} at the end",
                p.name,
                exit(status)
            ));
        }
    }

    print_drift(s, &rows);
    println!(
        "\nafter the producer stopped, the group drained (lag 0 over the topic and its tiers) in {:.1} s",
        drained.as_secs_f64()
    );
    check_records(
        &fleet,
        &bootstrap,
        &dlq,
        produced,
        &deliveries,
        &mut problems,
    )?;
    println!(
        "worker exits after the drain (SIGTERM): {}",
        exits.join(", ")
    );
    print_logged(&fleet);
    let (status, after) = server.stop(Duration::from_secs(60))?;
    println!(
        "server: {} {:.1} s after SIGTERM",
        exit(status),
        after.as_secs_f64()
    );
    if !status.success() {
        problems.push(format!("the server exited with {}", exit(status)));
    }
    if !problems.is_empty() {
        bail!("the soak found problems:\n- {}", problems.join("\n- "));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--soak-worker") => {
            let standby = args.get(3).is_some_and(|a| a == "--standby");
            return worker_main(args.get(2).context("worker spec")?, standby);
        }
        Some("--soak-server") => return server_main(args.get(2).context("data dir")?),
        _ => {}
    }
    let quick = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--quick");
    let settings = Settings::from_env(quick)?;
    let dir = tempfile::tempdir()?;
    let key_prefix = format!("soak_{}", uuid::Uuid::new_v4().simple());
    let result = run(&settings, dir.path(), &key_prefix);
    // The shared Redis keeps nothing of this run, whatever happened.
    let cleaned = clean_redis(&key_prefix);
    if result.is_err() {
        let kept = dir.keep();
        eprintln!("logs and data kept in {}", kept.display());
    }
    result?;
    println!("Redis: removed {} keys under {key_prefix}:", cleaned?);
    Ok(())
}
