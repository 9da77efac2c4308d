//! Throughput benchmark: the embedded steadfast server, driven by the real librdkafka
//! client, against Redis Streams on the local Redis — same payloads, same machine.
//!
//! Run with `cargo bench --bench throughput` (add `-- --quick` for a smoke run, or
//! `-- --help` for every flag). See `benches/README.md` for what each row measures.
//!
//! Workloads, for message size {100 B, 1 KiB} x partitions {1, 8}:
//!
//! * produce with `acks=1` and with `acks=-1` (steadfast answers `acks=-1` only after an
//!   fsync; Redis has no equivalent, so its `acks=1` numbers are repeated and marked);
//! * consume a backlog: the messages of the `acks=1` row, read from offset 0 to the end.
//!
//! The Redis side uses a small hand-written RESP client (see [`resp`]) so that the client is
//! not the bottleneck: a generic reply parser (the `redis` crate's) tops out near 0.5M
//! entries/s here, while with this one redis-server runs at 100% of a core and the client
//! at about 15%.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use clap::Parser;
use rand::Rng as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use steadfast_server::{FsyncPolicy, Server};

#[path = "throughput/batch_read.rs"]
#[allow(unsafe_code)] // librdkafka's batch consume, which the rdkafka crate does not wrap
mod batch_read;
#[path = "throughput/partitions.rs"]
mod partitions;
#[path = "throughput/raw_produce.rs"]
mod raw_produce;

/// Default messages per run for messages up to 512 bytes.
const DEFAULT_MESSAGES_SMALL: u64 = 2_000_000;
/// Default messages per run for larger messages.
const DEFAULT_MESSAGES_LARGE: u64 = 500_000;
/// Messages per run with `--quick` (small, large).
const QUICK_MESSAGES: (u64, u64) = (20_000, 5_000);
/// A run fails if no message or delivery report arrives for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Command-line flags (everything after `cargo bench --bench throughput --`).
#[derive(Parser, Debug)]
#[command(about = "steadfast vs Redis Streams throughput benchmark")]
struct Args {
    /// Messages per run for every message size (default: 2,000,000 for messages up to 512 B
    /// and 500,000 for larger ones).
    #[arg(long)]
    messages: Option<u64>,
    /// Smoke run: 20,000 messages per 100-byte run and 5,000 per 1 KiB run, one run each.
    #[arg(long)]
    quick: bool,
    /// Runs of every case; the table shows the median (default: 3, or 1 with --quick).
    #[arg(long)]
    repeat: Option<usize>,
    /// Message sizes in bytes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    sizes: Vec<usize>,
    /// Partition counts (stream keys for Redis) to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    partitions: Vec<i32>,
    /// Address of the Redis server to compare with.
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// Skip Redis (for profiling the steadfast side alone).
    #[arg(long)]
    no_redis: bool,
    /// Skip steadfast (for checking the Redis or tansu side alone).
    #[arg(long)]
    no_steadfast: bool,
    /// XADD commands per pipelined round trip.
    #[arg(long, default_value_t = 1000)]
    redis_pipeline: usize,
    /// Entries per XRANGE call when reading the backlog from Redis.
    #[arg(long, default_value_t = 10_000)]
    redis_batch: usize,
    /// The tansu binary to run as a second Kafka-protocol peer (memory storage). Without it
    /// (and without `STEADFAST_BENCH_TANSU`) the tansu rows are skipped.
    #[arg(long, env = "STEADFAST_BENCH_TANSU", value_name = "PATH")]
    tansu: Option<PathBuf>,
    /// Skip tansu even when `--tansu` or `STEADFAST_BENCH_TANSU` names it.
    #[arg(long)]
    no_tansu: bool,
    /// Run the steadfast server in a child process of its own (the crate's `child_server`
    /// binary) instead of inside the benchmark process: the setup tansu is measured in, so
    /// the two servers compete with the client for the cores in the same way.
    #[arg(long)]
    steadfast_process: bool,
    /// Run one predefined case instead of `--sizes` x `--partitions`: `backlog` is 100 B
    /// messages on one partition, 1,000,000 per run (unless `--messages` says otherwise),
    /// set up for the comparison with tansu: steadfast in a child process, 4 rounds
    /// (unless `--repeat`), `fetch.wait.max.ms=1` and a 16 MiB prefetch queue (unless
    /// `--consumer-set` sets them; see `BACKLOG_CASE_CONSUMER`).
    #[arg(long, value_enum)]
    case: Option<OnlyCase>,
    /// Extra or overriding librdkafka producer property, `key=value` (repeatable).
    #[arg(long = "producer-set", value_name = "KEY=VALUE", value_parser = parse_property)]
    producer_set: Vec<(String, String)>,
    /// Extra or overriding librdkafka consumer property, `key=value` (repeatable).
    #[arg(long = "consumer-set", value_name = "KEY=VALUE", value_parser = parse_property)]
    consumer_set: Vec<(String, String)>,
    /// Partition counts of `--case partitions`, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1000,10000")]
    scaling_partitions: Vec<i32>,
    /// Open-file limit (soft and hard) of the server in `--case partitions`.
    #[arg(long, default_value_t = 1024)]
    nofile_limit: u64,
    /// `--max-open-files` of the server in `--case partitions` (default: the server's, half
    /// of the open-file limit).
    #[arg(long)]
    max_open_files: Option<usize>,
    /// Messages the consumer takes off librdkafka's queue at a time
    /// (`rd_kafka_consume_batch_queue`); 1 reads them one `poll` at a time, as a
    /// `BaseConsumer` loop does.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    consume_batch: u64,
    /// Keep the system allocator in the client (by default the benchmark re-runs itself with
    /// jemalloc preloaded when `libjemalloc2` is installed, and says so in its output).
    #[arg(long)]
    system_malloc: bool,
    /// Passed by `cargo bench`. Without it (the binary run by `cargo test --all-targets`)
    /// the benchmark does a `--quick` smoke run, so the test suite checks that it works
    /// without spending a minute on it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The predefined cases of `--case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnlyCase {
    /// 100 B messages, one partition, a 1,000,000-message backlog, steadfast out of process.
    Backlog,
    /// Many partitions: steadfast alone, in a child process under an open-file limit, with
    /// `--scaling-partitions` partitions (see [`partitions`]).
    Partitions,
}

/// Messages per run of `--case backlog`.
const BACKLOG_CASE_MESSAGES: u64 = 1_000_000;
/// Rounds of `--case backlog`: each server goes first in half of them.
const BACKLOG_CASE_ROUNDS: usize = 4;
/// Consumer settings of `--case backlog` (each unless `--consumer-set` gives it):
///
/// * `fetch.wait.max.ms=1`: tansu 0.6.0 sleeps out whatever is left of the wait on every
///   Fetch, data or not (half of it from 250 ms up), so at the 100 ms of
///   [`consumer_config`] it reads about 0.15M msg/s; steadfast answers ready data at once
///   whatever the setting.
/// * A bounded prefetch queue, 100,000 messages (librdkafka's default) or 16 MiB, refilled
///   1 ms after it drains below that (librdkafka's default waits 1 s): a server that answers
///   at once lets librdkafka fill all of `queued.max.messages.kbytes` with fresh buffers,
///   and page-faulting 256 MiB of them costs the client more CPU than it spends reading the
///   messages (see `benches/README.md`).
const BACKLOG_CASE_CONSUMER: &[(&str, &str)] = &[
    ("fetch.wait.max.ms", "1"),
    ("queued.min.messages", "100000"),
    ("queued.max.messages.kbytes", "16384"),
    ("fetch.queue.backoff.ms", "1"),
];

/// Parses `key=value`.
fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

/// The three measured workloads, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    /// Produce, answered after the write to the OS.
    ProduceAcks1,
    /// Produce, answered after fsync (steadfast's default policy).
    ProduceAcksAll,
    /// Read the `acks=1` backlog from the start.
    ConsumeBacklog,
}

impl Workload {
    /// Label in the table.
    fn label(self) -> &'static str {
        match self {
            Workload::ProduceAcks1 => "produce acks=1",
            Workload::ProduceAcksAll => "produce acks=-1",
            Workload::ConsumeBacklog => "consume backlog",
        }
    }
}

/// The result of one timed run.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// Messages moved.
    messages: u64,
    /// Payload bytes moved.
    bytes: u64,
    /// Wall-clock time of the run.
    elapsed: Duration,
}

impl Measured {
    /// Messages per second.
    fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
    /// Payload megabytes (10^6 bytes) per second.
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// One line of the final table.
#[derive(Debug)]
struct Row {
    /// What was measured.
    workload: Workload,
    /// Message payload size in bytes.
    size: usize,
    /// Partitions (steadfast) or stream keys (Redis).
    partitions: i32,
    /// Messages per run.
    messages: u64,
    /// steadfast's result, if it ran.
    steadfast: Option<Measured>,
    /// Redis's result, if it ran.
    redis: Option<Measured>,
    /// Whether the Redis numbers are borrowed from another workload (no equivalent exists).
    redis_substituted: bool,
    /// tansu's result, if it ran and has the workload.
    tansu: Option<Measured>,
}

/// Random payloads: message `i` is a `size`-byte window into one random block, so payloads
/// differ from message to message without allocating per message.
#[derive(Debug)]
struct Payloads {
    /// Random bytes, `WINDOWS * STRIDE + size` long.
    block: Vec<u8>,
    /// Payload size.
    size: usize,
}

impl Payloads {
    /// Distinct windows in the block.
    const WINDOWS: usize = 1024;
    /// Distance between windows.
    const STRIDE: usize = 61;

    /// Random payloads of `size` bytes.
    fn new(size: usize) -> Self {
        let mut block = vec![0u8; Self::WINDOWS * Self::STRIDE + size];
        rand::rng().fill(&mut block[..]);
        Payloads { block, size }
    }

    /// The payload of message `i`.
    fn get(&self, i: u64) -> &[u8] {
        let start = (i as usize % Self::WINDOWS) * Self::STRIDE;
        &self.block[start..start + self.size]
    }
}

/// Where Debian's `libjemalloc2` puts the allocator the client runs with when it is there.
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// Set in the environment of the benchmark's re-run with jemalloc, so it never re-runs twice.
const REEXEC_MARK: &str = "STEADFAST_BENCH_JEMALLOC_RERUN";

/// Runs the benchmark again with jemalloc preloaded into the client, when it is installed,
/// the servers run as child processes (`--steadfast-process`, `--case backlog`: an embedded
/// server would share the client's allocator) and no allocator is preloaded yet
/// (`--system-malloc` or any `LD_PRELOAD` keeps the process as it is): with glibc's malloc,
/// librdkafka's threads contend on one arena, and the client then limits what the rows
/// measure (README, "The client's allocator"). The child servers never inherit it. Returns
/// only when it does not re-run (a failed re-run is reported, and this run goes on).
fn preload_jemalloc(args: &Args) {
    use std::os::unix::process::CommandExt as _;
    if !args.steadfast_process
        || args.system_malloc
        || std::env::var_os("LD_PRELOAD").is_some()
        || std::env::var_os(REEXEC_MARK).is_some()
        || !std::path::Path::new(JEMALLOC).is_file()
    {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("client allocator: staying on glibc (the benchmark's own path: {e})");
            return;
        }
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_PRELOAD", JEMALLOC)
        .env(REEXEC_MARK, "1")
        .exec();
    eprintln!("client allocator: staying on glibc (re-running with {JEMALLOC} preloaded: {err})");
}

/// Parses the flags, starts the embedded server, runs every case `repeat` times and prints
/// the table of medians to stdout (progress goes to stderr).
fn main() -> Result<()> {
    let mut args = Args::parse();
    args.quick |= !args.bench;
    if args.case == Some(OnlyCase::Backlog) {
        args.sizes = vec![100];
        args.partitions = vec![1];
        args.messages.get_or_insert(BACKLOG_CASE_MESSAGES);
        args.repeat.get_or_insert(BACKLOG_CASE_ROUNDS);
        args.steadfast_process = true;
        for (key, value) in BACKLOG_CASE_CONSUMER {
            if !args.consumer_set.iter().any(|(k, _)| k == key) {
                args.consumer_set
                    .push(((*key).to_owned(), (*value).to_owned()));
            }
        }
    }
    preload_jemalloc(&args);
    // Server logs (errors only unless RUST_LOG says otherwise) go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if args.case == Some(OnlyCase::Partitions) {
        return partitions::run(&args);
    }
    ensure!(
        !(args.no_redis && args.no_steadfast && (args.tansu.is_none() || args.no_tansu)),
        "--no-redis and --no-steadfast without tansu leave nothing to run"
    );
    ensure!(
        args.sizes.iter().all(|&s| s > 0) && args.partitions.iter().all(|&p| p > 0),
        "sizes and partition counts must be positive"
    );
    ensure!(
        args.redis_pipeline > 0 && args.redis_batch > 0,
        "--redis-pipeline and --redis-batch must be positive"
    );
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 });
    ensure!(repeat > 0, "--repeat must be at least 1");
    let messages_for = |size: usize| -> u64 {
        match (args.messages, args.quick) {
            (Some(n), _) => n,
            (None, true) if size <= 512 => QUICK_MESSAGES.0,
            (None, true) => QUICK_MESSAGES.1,
            (None, false) if size <= 512 => DEFAULT_MESSAGES_SMALL,
            (None, false) => DEFAULT_MESSAGES_LARGE,
        }
    };

    // Fail before any work if the peer is not there; note how durable it is configured.
    let redis_persistence = if args.no_redis {
        "not run".to_owned()
    } else {
        let mut conn = resp::Conn::connect(&args.redis)
            .and_then(|mut c| c.ping().map(|()| c))
            .with_context(|| {
                format!(
                    "Redis does not answer at {} (start it, pass --redis ADDR, or --no-redis)",
                    args.redis
                )
            })?;
        let mut settings = Vec::new();
        for name in ["appendonly", "appendfsync", "save"] {
            let value = conn.config_get(name)?;
            settings.push(format!("{name}={value:?}"));
        }
        settings.join(" ")
    };

    let tansu = match (&args.tansu, args.no_tansu) {
        (Some(binary), false) => Some(tansu::Tansu::start(binary)?),
        (_, true) => {
            eprintln!("tansu: skipped (--no-tansu)");
            None
        }
        (None, false) => {
            eprintln!(
                "tansu: skipped, no binary given. Install it with `cargo install tansu \
                 --version 0.6.0 --features dynostore --root DIR`, then pass --tansu \
                 DIR/bin/tansu or set STEADFAST_BENCH_TANSU=DIR/bin/tansu"
            );
            None
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("steadfast-server")
        .build()
        .context("building the server's tokio runtime")?;
    let data_dir = tempfile::tempdir().context("creating the server's data dir")?;
    let server = if args.no_steadfast {
        None
    } else if args.steadfast_process {
        Some(Steadfast::Process(child::ChildServer::start(
            data_dir.path(),
        )?))
    } else {
        Some(Steadfast::Embedded(
            runtime
                .block_on(
                    Server::builder()
                        .listen("127.0.0.1:0")
                        .data_dir(data_dir.path())
                        .fsync(FsyncPolicy::default())
                        .start(),
                )
                .context("starting the embedded server")?,
        ))
    };
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );

    eprintln!(
        "steadfast throughput benchmark: sizes {:?}, partitions {:?}, fsync policy {:?}",
        args.sizes,
        args.partitions,
        FsyncPolicy::default()
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    for &size in &args.sizes {
        let n = messages_for(size);
        let payloads = Payloads::new(size);
        for &partitions in &args.partitions {
            let (mut steadfast_runs, mut redis_runs, mut tansu_runs) =
                (Vec::new(), Vec::new(), Vec::new());
            for repetition in 1..=repeat {
                let case = Case {
                    size,
                    partitions,
                    messages: n,
                    payloads: &payloads,
                    repetition,
                    keyed: false,
                };
                let run = format!("{run_id}-r{repetition}");
                // The two Kafka-protocol servers take turns going first (ABBA), so neither
                // always meets a client process warmed up (heap grown, pages mapped) by the
                // other's run.
                let tansu_first = repetition % 2 == 0;
                for tansu_turn in [tansu_first, !tansu_first] {
                    match (tansu_turn, &server, &tansu) {
                        (false, Some(server), _) => {
                            let target = Target {
                                system: "steadfast",
                                bootstrap: server.bootstrap_servers(),
                                pid: server.pid(),
                            };
                            let result = kafka_case(&target, &runtime, &args, &case, &run, true)
                                .with_context(|| {
                                    format!("steadfast, {size} B, {partitions} partitions")
                                })?;
                            steadfast_runs.push(result);
                        }
                        (true, _, Some(tansu)) => {
                            let target = Target {
                                system: "tansu",
                                bootstrap: tansu.bootstrap(),
                                pid: Some(tansu.pid()),
                            };
                            let result = kafka_case(&target, &runtime, &args, &case, &run, false)
                                .with_context(|| {
                                format!(
                                    "tansu, {size} B, {partitions} partitions (its log: {})",
                                    tansu.log_path().display()
                                )
                            })?;
                            tansu_runs.push(result);
                        }
                        _ => {}
                    }
                }
                if let (Some(ours), Some(theirs)) = (
                    steadfast_runs.get(repetition - 1),
                    tansu_runs.get(repetition - 1),
                ) {
                    eprintln!(
                        "  run {repetition} consume backlog steadfast/tansu: {:.2}",
                        ours.consume.msgs_per_sec() / theirs.consume.msgs_per_sec()
                    );
                }
                if !args.no_redis {
                    let result = redis_case(&args, &case, &run)
                        .with_context(|| format!("Redis, {size} B, {partitions} stream keys"))?;
                    redis_runs.push(result);
                }
            }
            for workload in [
                Workload::ProduceAcks1,
                Workload::ProduceAcksAll,
                Workload::ConsumeBacklog,
            ] {
                let pick = |r: &CaseResult| match workload {
                    Workload::ProduceAcks1 => Some(r.produce_acks1),
                    Workload::ProduceAcksAll => r.produce_acks_all,
                    Workload::ConsumeBacklog => Some(r.consume),
                };
                // Redis has no acks=-1: its acks=1 figures stand in, marked.
                let pick_redis = |r: &CaseResult| pick(r).or(Some(r.produce_acks1));
                rows.push(Row {
                    workload,
                    size,
                    partitions,
                    messages: n,
                    steadfast: median(&steadfast_runs, pick),
                    redis: median(&redis_runs, pick_redis),
                    redis_substituted: workload == Workload::ProduceAcksAll,
                    tansu: median(&tansu_runs, pick),
                });
            }
        }
    }
    match server {
        Some(Steadfast::Embedded(server)) => runtime.block_on(server.shutdown()),
        Some(Steadfast::Process(child)) => drop(child),
        None => {}
    }
    let tansu_ran = tansu.is_some();
    drop(tansu);
    drop(runtime);
    if let Err(e) = data_dir.close() {
        eprintln!("warning: could not remove the server's data dir: {e}");
    }
    rows.sort_by_key(|r| (r.workload, r.size, r.partitions));
    rows.dedup_by_key(|r| (r.workload, r.size, r.partitions));
    println!(
        "{}",
        render_table(&rows, &args, repeat, &redis_persistence, tansu_ran)
    );
    eprintln!("total time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The steadfast server under test: inside this process, or a child process.
enum Steadfast {
    /// Started on the benchmark's tokio runtime.
    Embedded(steadfast_server::ServerHandle),
    /// `child_server`, with `--steadfast-process`.
    Process(child::ChildServer),
}

impl Steadfast {
    /// `bootstrap.servers` for the clients.
    fn bootstrap_servers(&self) -> String {
        match self {
            Steadfast::Embedded(server) => server.bootstrap_servers(),
            Steadfast::Process(child) => child.bootstrap().to_owned(),
        }
    }

    /// The server's process id when it runs apart from the benchmark.
    fn pid(&self) -> Option<u32> {
        match self {
            Steadfast::Embedded(_) => None,
            Steadfast::Process(child) => Some(child.pid()),
        }
    }
}

/// One (size, partitions) combination.
#[derive(Debug)]
struct Case<'a> {
    /// Payload size in bytes.
    size: usize,
    /// Partitions or stream keys.
    partitions: i32,
    /// Messages per workload.
    messages: u64,
    /// The payloads to send.
    payloads: &'a Payloads,
    /// Which run of the case this is, from 1.
    repetition: usize,
    /// Messages carry distinct keys and go where the client's partitioner puts them (spread
    /// over every partition), rather than round-robin by partition number.
    keyed: bool,
}

/// The run with the median message rate (the upper one of the two middle runs for an even
/// count); `None` without runs or when the system does not have the workload.
fn median(runs: &[CaseResult], pick: impl Fn(&CaseResult) -> Option<Measured>) -> Option<Measured> {
    let mut measured: Vec<Measured> = runs.iter().filter_map(pick).collect();
    measured.sort_by(|a, b| a.msgs_per_sec().total_cmp(&b.msgs_per_sec()));
    measured.get(measured.len() / 2).copied()
}

/// The three workloads of one case for one system.
#[derive(Debug)]
struct CaseResult {
    /// Produce with `acks=1` (Redis: plain pipelined XADD).
    produce_acks1: Measured,
    /// Produce with `acks=-1`; `None` where the system has no such mode.
    produce_acks_all: Option<Measured>,
    /// Consume the `acks=1` backlog.
    consume: Measured,
}

/// Prints one finished measurement to stderr, as progress.
fn report(system: &str, workload: Workload, case: &Case<'_>, m: &Measured) {
    eprintln!(
        "  run {} {system:<9} {:<16} {:>5} B x {} partitions: {:>10} msg/s {:>8.1} MB/s ({:.2} s)",
        case.repetition,
        workload.label(),
        case.size,
        case.partitions,
        group_digits(m.msgs_per_sec()),
        m.mb_per_sec(),
        m.elapsed.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// steadfast, through librdkafka
// ---------------------------------------------------------------------------------------------

/// A Kafka-protocol server the workloads run against.
struct Target<'a> {
    /// Its name in the progress lines.
    system: &'a str,
    /// `bootstrap.servers` for the clients.
    bootstrap: String,
    /// Its process id, when it is a process of its own (for its CPU time).
    pid: Option<u32>,
}

/// Runs the workloads against a Kafka-protocol server (`target`), on fresh topics that are
/// deleted afterwards. `acks=-1` runs only with `with_acks_all` (tansu's memory storage has
/// nothing to wait for).
fn kafka_case(
    target: &Target<'_>,
    runtime: &tokio::runtime::Runtime,
    args: &Args,
    case: &Case<'_>,
    run_id: &str,
    with_acks_all: bool,
) -> Result<CaseResult> {
    let (system, bootstrap, server_pid) = (target.system, target.bootstrap.as_str(), target.pid);
    let topic_acks1 = format!("bench-{run_id}-{}b-{}p-acks1", case.size, case.partitions);
    let topic_acks_all = format!("bench-{run_id}-{}b-{}p-acksall", case.size, case.partitions);
    let mut topics = vec![topic_acks1.as_str()];
    if with_acks_all {
        topics.push(&topic_acks_all);
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating the admin client")?;
    runtime.block_on(create_topics(&admin, &topics, case.partitions))?;

    let produce_acks1 = produce(bootstrap, &topic_acks1, "1", case, &args.producer_set)?;
    report(system, Workload::ProduceAcks1, case, &produce_acks1);
    let cpu_before = (
        cpu::used(None),
        server_pid.and_then(|pid| cpu::used(Some(pid))),
    );
    let (consume, threads) = consume(
        bootstrap,
        &topic_acks1,
        case,
        &args.consumer_set,
        args.consume_batch,
    )?;
    let cpu_after = (
        cpu::used(None),
        server_pid.and_then(|pid| cpu::used(Some(pid))),
    );
    report(system, Workload::ConsumeBacklog, case, &consume);
    cpu::report(case, cpu_before, cpu_after, server_pid.is_some());
    cpu::report_threads(case, &threads.0, &threads.1);
    let produce_acks_all = if with_acks_all {
        let m = produce(bootstrap, &topic_acks_all, "all", case, &args.producer_set)?;
        report(system, Workload::ProduceAcksAll, case, &m);
        Some(m)
    } else {
        None
    };

    let deleted = runtime.block_on(admin.delete_topics(
        &topics,
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ));
    if let Err(e) = deleted.map_err(anyhow::Error::from).and_then(|results| {
        results
            .into_iter()
            .try_for_each(|r| r.map(drop).map_err(|(t, e)| anyhow!("{t}: {e}")))
    }) {
        eprintln!("warning: deleting benchmark topics on {system} failed: {e:#}");
    }
    Ok(CaseResult {
        produce_acks1,
        produce_acks_all,
        consume,
    })
}

/// Creates `topics` with `partitions` partitions each, failing on any per-topic error.
async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[&str],
    partitions: i32,
) -> Result<()> {
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .context("CreateTopics")?;
    for result in results {
        result.map_err(|(topic, e)| anyhow!("creating topic {topic}: {e}"))?;
    }
    Ok(())
}

/// Counts delivery reports; the producer's poll loop runs the callback.
#[derive(Debug, Default)]
struct DeliveryCounter {
    /// Messages acknowledged by the server.
    delivered: AtomicU64,
    /// Messages that failed.
    failed: AtomicU64,
    /// The first failure, for the error message.
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

impl DeliveryCounter {
    /// Delivery reports received, successful or not.
    fn reports(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// How long the producing thread sleeps when it has nothing to do but wait for the client.
const IDLE_WAIT: Duration = Duration::from_micros(100);

/// Runs every delivery report that is ready, without blocking; true if there were any.
///
/// `BaseProducer::poll` with a timeout busy-waits for the sub-millisecond rest of its
/// deadline, which on a two-core machine steals CPU from the server, so the loops here poll
/// with a zero timeout (one event — a batch of reports — per call) and sleep briefly instead.
fn serve_reports(producer: &BaseProducer<DeliveryCounter>) -> bool {
    let counter = producer.context();
    let mut served = false;
    loop {
        let before = counter.reports();
        producer.poll(Duration::ZERO);
        if counter.reports() == before {
            return served;
        }
        served = true;
    }
}

/// librdkafka producer settings tuned for throughput; `acks` is `1` or `all`; `overrides`
/// come last and win.
fn producer_config(bootstrap: &str, acks: &str, overrides: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("compression.type", "none")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "1000000")
        // One request may carry a full batch for every partition.
        .set("message.max.bytes", "16000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "120000")
        .set("socket.timeout.ms", "60000");
    for (key, value) in overrides {
        config.set(key, value);
    }
    config
}

/// Sends `case.messages` messages round-robin over the partitions and waits for every
/// delivery report. Timed from the first send to the last report.
fn produce(
    bootstrap: &str,
    topic: &str,
    acks: &str,
    case: &Case<'_>,
    overrides: &[(String, String)],
) -> Result<Measured> {
    let producer: BaseProducer<DeliveryCounter> = producer_config(bootstrap, acks, overrides)
        .create_with_context(DeliveryCounter::default())
        .context("creating the producer")?;
    // Connect and learn the topic's leaders before the clock starts.
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("fetching metadata")?;
    let known = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    ensure!(
        known == case.partitions as usize,
        "topic {topic} has {known} partitions, expected {}",
        case.partitions
    );

    let n = case.messages;
    let parts = case.partitions as u64;
    let counter = producer.context();
    let start = Instant::now();
    let mut key = String::new();
    for i in 0..n {
        let record = BaseRecord::<str, [u8]>::to(topic).payload(case.payloads.get(i));
        let mut record = if case.keyed {
            key.clear();
            let _ = write!(key, "key-{i}");
            record.key(key.as_str())
        } else {
            record.partition((i % parts) as i32)
        };
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if !serve_reports(&producer) {
                        std::thread::sleep(IDLE_WAIT);
                    }
                }
                Err((e, _)) => bail!("send failed at message {i}: {e}"),
            }
        }
        if i % 1024 == 1023 {
            serve_reports(&producer);
        }
    }
    // Own flush loop: rdkafka's `flush` polls in 100 ms steps, which would blur the timing.
    let mut last_progress = (counter.reports(), Instant::now());
    while counter.reports() < n {
        if !serve_reports(&producer) {
            std::thread::sleep(IDLE_WAIT);
        }
        let reports = counter.reports();
        if reports != last_progress.0 {
            last_progress = (reports, Instant::now());
        } else if last_progress.1.elapsed() > STALL_TIMEOUT {
            bail!("no delivery report for {STALL_TIMEOUT:?} ({reports} of {n} in)");
        }
    }
    let elapsed = start.elapsed();
    let failed = counter.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = counter
            .first_error
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_default();
        bail!("{failed} of {n} messages failed to produce to {topic} (first error: {first})");
    }
    Ok(Measured {
        messages: n,
        bytes: n * case.size as u64,
        elapsed,
    })
}

/// librdkafka consumer settings tuned for reading a backlog; `overrides` come last and win.
fn consumer_config(bootstrap: &str, topic: &str, overrides: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        // Required by librdkafka even for `assign`; no group protocol is used.
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        // About 1 MiB per fetch: both sides then reuse warm buffers. (64 MiB fetches were
        // 3-4x slower here: buffers that large are mmap'ed and page-faulted in anew every
        // time, on the server and in librdkafka.) 1 MiB is the floor: fetch.max.bytes must
        // be at least message.max.bytes (1,000,000 by default).
        .set("fetch.max.bytes", "1048576")
        .set("max.partition.fetch.bytes", "1048576")
        .set("queued.min.messages", "1000000")
        .set("queued.max.messages.kbytes", "262144")
        .set("fetch.wait.max.ms", "100")
        .set("socket.timeout.ms", "60000");
    for (key, value) in overrides {
        config.set(key, value);
    }
    config
}

/// This process's threads at the start and at the end of a consume run.
type ThreadSnapshots = (
    std::collections::BTreeMap<u32, cpu::ThreadUsage>,
    std::collections::BTreeMap<u32, cpu::ThreadUsage>,
);

/// Reads `case.messages` messages from offset 0 of every partition, `batch` at a time (one
/// `poll` each when 1). Timed from the first read to the last message; also returns the
/// threads' usage around that time.
fn consume(
    bootstrap: &str,
    topic: &str,
    case: &Case<'_>,
    overrides: &[(String, String)],
    batch: u64,
) -> Result<(Measured, ThreadSnapshots)> {
    let consumer: BaseConsumer = consumer_config(bootstrap, topic, overrides)
        .create()
        .context("creating the consumer")?;
    // Connect and learn the partitions' leader before the clock starts, as for the producer.
    consumer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("fetching metadata")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..case.partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .context("building the assignment")?;
    }
    consumer.assign(&assignment).context("assign")?;

    let n = case.messages;
    let (mut received, mut bytes) = (0u64, 0u64);
    let mut reader = if batch > 1 {
        Some(batch_read::BatchReader::new(
            &consumer,
            usize::try_from(batch).unwrap_or(usize::MAX),
        )?)
    } else {
        None
    };
    let threads_before = cpu::threads();
    let start = Instant::now();
    // (count at the last idle read, when that count was first seen): no clock reads per message.
    let mut idle_since = (0u64, start);
    while received < n {
        // Never more than the rest: a batch waits for all it asks for or for the timeout.
        let read = match reader.as_mut() {
            Some(reader) => reader
                .read(n - received, Duration::from_millis(100))
                .with_context(|| format!("consume failed after {received} of {n} messages"))?,
            None => match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => batch_read::Batch {
                    messages: 1,
                    bytes: message.payload_len() as u64,
                },
                Some(Err(e)) => bail!("consume failed after {received} of {n} messages: {e}"),
                None => batch_read::Batch::default(),
            },
        };
        received += read.messages;
        bytes += read.bytes;
        if read.messages > 0 {
            continue;
        }
        if received != idle_since.0 {
            idle_since = (received, Instant::now());
        } else if idle_since.1.elapsed() > STALL_TIMEOUT {
            bail!("no message for {STALL_TIMEOUT:?} ({received} of {n} in)")
        }
    }
    drop(reader);
    let elapsed = start.elapsed();
    // librdkafka's threads end with the consumer: read them while it is alive.
    let threads_after = cpu::threads();
    ensure!(
        bytes == n * case.size as u64,
        "consumed {bytes} payload bytes, expected {}",
        n * case.size as u64
    );
    Ok((
        Measured {
            messages: received,
            bytes,
            elapsed,
        },
        (threads_before, threads_after),
    ))
}

// ---------------------------------------------------------------------------------------------
// Redis Streams
// ---------------------------------------------------------------------------------------------

/// Deletes the benchmark's stream keys when dropped, so a failed run leaves nothing behind.
#[derive(Debug)]
struct KeyGuard<'a> {
    /// Redis address.
    addr: &'a str,
    /// Keys to delete.
    keys: Vec<String>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let deleted = resp::Conn::connect(self.addr).and_then(|mut c| c.del(&self.keys));
        if let Err(e) = deleted {
            eprintln!("warning: deleting Redis keys {:?} failed: {e:#}", self.keys);
        }
    }
}

/// XADD then XRANGE the same messages on `case.partitions` stream keys.
fn redis_case(args: &Args, case: &Case<'_>, run_id: &str) -> Result<CaseResult> {
    let guard = KeyGuard {
        addr: &args.redis,
        keys: (0..case.partitions)
            .map(|p| format!("steadfast-bench:{run_id}:{}b:{p}", case.size))
            .collect(),
    };
    let keys = &guard.keys;
    let mut conn = resp::Conn::connect(&args.redis)?;
    conn.del(keys)?;

    // Produce: pipelined XADD, round-robin over the keys, one batch in flight while the
    // next is written.
    let n = case.messages;
    let start = Instant::now();
    let mut pending = 0usize;
    let mut i = 0u64;
    while i < n {
        let batch = (n - i).min(args.redis_pipeline as u64);
        for j in i..i + batch {
            let key = &keys[(j % keys.len() as u64) as usize];
            conn.push_command(&[b"XADD", key.as_bytes(), b"*", b"d", case.payloads.get(j)]);
        }
        conn.send()?;
        conn.skip_bulk_replies(pending)?;
        pending = batch as usize;
        i += batch;
    }
    conn.skip_bulk_replies(pending)?;
    let produce = Measured {
        messages: n,
        bytes: n * case.size as u64,
        elapsed: start.elapsed(),
    };
    report("redis", Workload::ProduceAcks1, case, &produce);

    // Consume: XRANGE each key from the start in batches, resuming after the last ID.
    let count = args.redis_batch.to_string();
    let start = Instant::now();
    let (mut received, mut bytes) = (0u64, 0u64);
    for key in keys {
        let mut from = b"-".to_vec();
        loop {
            conn.push_command(&[
                b"XRANGE",
                key.as_bytes(),
                &from,
                b"+",
                b"COUNT",
                count.as_bytes(),
            ]);
            conn.send()?;
            let got = conn.read_xrange(&mut from)?;
            received += got.entries;
            bytes += got.value_bytes;
            if got.entries < args.redis_batch as u64 {
                break;
            }
            // Exclusive start: "(" followed by the last ID seen.
            from.insert(0, b'(');
        }
    }
    let consume = Measured {
        messages: received,
        bytes,
        elapsed: start.elapsed(),
    };
    ensure!(
        received == n && bytes == n * case.size as u64,
        "read back {received} entries / {bytes} bytes, expected {n} / {}",
        n * case.size as u64
    );
    report("redis", Workload::ConsumeBacklog, case, &consume);
    drop(conn);
    drop(guard);
    Ok(CaseResult {
        produce_acks1: produce,
        produce_acks_all: None,
        consume,
    })
}

/// A minimal, fast RESP2 client over a blocking `TcpStream` — benchmark-only code.
///
/// Commands are encoded straight into one write buffer (so a pipeline is one `write`), and
/// replies are parsed in place from a large read buffer without allocating per reply. It
/// understands only what the benchmark needs: bulk strings, arrays, integers, simple strings
/// and errors.
mod resp {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use anyhow::{bail, ensure, Context as _, Result};

    /// Read buffer size; also the largest single read.
    const READ_BUFFER: usize = 4 << 20;

    /// Counts from one XRANGE reply.
    #[derive(Debug)]
    pub(crate) struct XrangeBatch {
        /// Entries in the reply.
        pub(crate) entries: u64,
        /// Sum of the field values' lengths.
        pub(crate) value_bytes: u64,
    }

    /// One connection with its buffers.
    #[derive(Debug)]
    pub(crate) struct Conn {
        /// The socket.
        stream: TcpStream,
        /// Encoded commands not yet sent.
        out: Vec<u8>,
        /// Received bytes; `buf[pos..end]` is not yet parsed.
        buf: Vec<u8>,
        /// Start of the unparsed bytes.
        pos: usize,
        /// End of the received bytes.
        end: usize,
    }

    impl Conn {
        /// Connects with Nagle off and read/write timeouts.
        pub(crate) fn connect(addr: &str) -> Result<Conn> {
            let stream =
                TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true).context("TCP_NODELAY")?;
            // Fail rather than hang if Redis stops answering.
            stream
                .set_read_timeout(Some(super::STALL_TIMEOUT))
                .and_then(|()| stream.set_write_timeout(Some(super::STALL_TIMEOUT)))
                .context("socket timeouts")?;
            Ok(Conn {
                stream,
                out: Vec::with_capacity(1 << 20),
                buf: vec![0; READ_BUFFER],
                pos: 0,
                end: 0,
            })
        }

        /// `PING`, expecting `+PONG`.
        pub(crate) fn ping(&mut self) -> Result<()> {
            self.push_command(&[b"PING"]);
            self.send()?;
            let (kind, _) = self.header()?;
            ensure!(kind == b'+', "unexpected reply to PING");
            Ok(())
        }

        /// `CONFIG GET name`: the value, or an empty string if the server does not know it.
        pub(crate) fn config_get(&mut self, name: &str) -> Result<String> {
            self.push_command(&[b"CONFIG", b"GET", name.as_bytes()]);
            self.send()?;
            let items = self.expect(b'*')?;
            let mut value = String::new();
            for i in 0..items {
                let len = self.expect(b'$')?;
                let data = self.take(len)?;
                if i == 1 {
                    value = String::from_utf8_lossy(data).into_owned();
                }
            }
            Ok(value)
        }

        /// `DEL keys...`.
        pub(crate) fn del(&mut self, keys: &[String]) -> Result<()> {
            let mut args: Vec<&[u8]> = vec![b"DEL"];
            args.extend(keys.iter().map(|k| k.as_bytes()));
            self.push_command(&args);
            self.send()?;
            let (kind, _) = self.header()?;
            ensure!(kind == b':', "unexpected reply to DEL");
            Ok(())
        }

        /// Appends one command (an array of bulk strings) to the write buffer.
        pub(crate) fn push_command(&mut self, args: &[&[u8]]) {
            push_len(&mut self.out, b'*', args.len());
            for arg in args {
                push_len(&mut self.out, b'$', arg.len());
                self.out.extend_from_slice(arg);
                self.out.extend_from_slice(b"\r\n");
            }
        }

        /// Writes every buffered command.
        pub(crate) fn send(&mut self) -> Result<()> {
            self.stream
                .write_all(&self.out)
                .context("writing to Redis")?;
            self.out.clear();
            Ok(())
        }

        /// Reads `count` bulk-string replies (such as XADD's IDs), failing on an error reply.
        pub(crate) fn skip_bulk_replies(&mut self, count: usize) -> Result<()> {
            for _ in 0..count {
                let len = self.expect(b'$')?;
                self.take(len)?;
            }
            Ok(())
        }

        /// Reads one XRANGE reply: `[[id, [field, value, ...]], ...]`. Leaves the last entry's
        /// ID in `last_id` (unchanged when the reply is empty).
        pub(crate) fn read_xrange(&mut self, last_id: &mut Vec<u8>) -> Result<XrangeBatch> {
            let entries = self.expect(b'*')?;
            let mut value_bytes = 0u64;
            for _ in 0..entries {
                ensure!(self.expect(b'*')? == 2, "XRANGE entry is not [id, fields]");
                let id_len = self.expect(b'$')?;
                let id = self.take(id_len)?;
                last_id.clear();
                last_id.extend_from_slice(id);
                let fields = self.expect(b'*')?;
                for f in 0..fields {
                    let len = self.expect(b'$')?;
                    self.take(len)?;
                    if f % 2 == 1 {
                        value_bytes += len as u64;
                    }
                }
            }
            Ok(XrangeBatch {
                entries: entries as u64,
                value_bytes,
            })
        }

        /// Reads a header of type `kind` (`$` or `*`) and returns its length.
        fn expect(&mut self, kind: u8) -> Result<usize> {
            let (got, n) = self.header()?;
            ensure!(
                got == kind,
                "expected RESP `{}`, got `{}`",
                kind as char,
                got as char
            );
            usize::try_from(n).context("null reply")
        }

        /// Reads one `<type><line>\r\n` header. `-` (error) replies become errors; the number
        /// is 0 for `+` simple strings.
        fn header(&mut self) -> Result<(u8, i64)> {
            loop {
                let unparsed = &self.buf[self.pos..self.end];
                if let Some(cr) = unparsed.iter().position(|&b| b == b'\r') {
                    if cr + 1 < unparsed.len() {
                        let kind = unparsed[0];
                        let line = &unparsed[1..cr];
                        self.pos += cr + 2;
                        return match kind {
                            b'-' => bail!("Redis error: {}", String::from_utf8_lossy(line)),
                            b'+' => Ok((kind, 0)),
                            b'$' | b'*' | b':' => Ok((kind, parse_int(line)?)),
                            other => bail!("unexpected RESP type byte {other:#x}"),
                        };
                    }
                }
                self.fill(self.end - self.pos + 1)?;
            }
        }

        /// Consumes `len` bytes of bulk data plus the trailing CRLF and returns the data.
        fn take(&mut self, len: usize) -> Result<&[u8]> {
            if self.end - self.pos < len + 2 {
                self.fill(len + 2)?;
            }
            let data = &self.buf[self.pos..self.pos + len];
            self.pos += len + 2;
            Ok(data)
        }

        /// Reads until at least `need` unparsed bytes are buffered.
        fn fill(&mut self, need: usize) -> Result<()> {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            if self.buf.len() < need {
                self.buf.resize(need.max(2 * self.buf.len()), 0);
            }
            while self.end < need {
                let read = self
                    .stream
                    .read(&mut self.buf[self.end..])
                    .context("reading from Redis")?;
                ensure!(read > 0, "Redis closed the connection");
                self.end += read;
            }
            Ok(())
        }
    }

    /// Appends `<kind><n>\r\n`.
    fn push_len(out: &mut Vec<u8>, kind: u8, n: usize) {
        out.push(kind);
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[i..]);
        out.extend_from_slice(b"\r\n");
    }

    /// Parses a RESP integer line (`-1` for null bulk/array).
    fn parse_int(line: &[u8]) -> Result<i64> {
        let (negative, digits) = match line.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, line),
        };
        ensure!(!digits.is_empty(), "empty RESP integer");
        let mut n: i64 = 0;
        for &d in digits {
            ensure!(d.is_ascii_digit(), "bad RESP integer");
            n = n * 10 + i64::from(d - b'0');
        }
        Ok(if negative { -n } else { n })
    }
}

// ---------------------------------------------------------------------------------------------
// CPU time of the client and of a server process
// ---------------------------------------------------------------------------------------------

/// CPU time (user + system) and minor page faults of processes, from `/proc/PID/stat`, to
/// show where a consume run's time goes: in the client (this process) or in the server.
mod cpu {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::Case;

    /// `/proc` reports times in clock ticks of `USER_HZ`, which is 100 on Linux.
    const TICKS_PER_SECOND: u64 = 100;

    /// `amount` over a run of `case`, scaled to a million messages.
    fn per_million(case: &Case<'_>, amount: f64) -> f64 {
        amount * 1e6 / case.messages as f64
    }

    /// What a process has used so far.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Usage {
        /// User plus system CPU time.
        cpu: Duration,
        /// Minor page faults: pages the process touched for the first time since they were
        /// mapped (or since its allocator gave them back to the kernel).
        minor_faults: u64,
    }

    /// Usage so far of process `pid` (this process for `None`); `None` if `/proc` cannot
    /// tell.
    pub(crate) fn used(pid: Option<u32>) -> Option<Usage> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/stat"),
            None => "/proc/self/stat".to_owned(),
        };
        let stat = std::fs::read_to_string(path).ok()?;
        let (cpu, minor_faults) = parse_stat(&stat)?;
        Some(Usage { cpu, minor_faults })
    }

    /// CPU time (utime + stime) and minor page faults from the text of a `stat` file of
    /// `/proc`, a process's or a thread's.
    fn parse_stat(stat: &str) -> Option<(Duration, u64)> {
        // Fields after the parenthesised command name: state is field 3, minflt 10, utime 14,
        // stime 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let (utime, stime) = (field(14)?, field(15)?);
        let cpu = Duration::from_millis((utime + stime) * 1000 / TICKS_PER_SECOND);
        Some((cpu, field(10)?))
    }

    /// CPU time and voluntary context switches of one thread of this process.
    #[derive(Debug, Clone)]
    pub(crate) struct ThreadUsage {
        /// The thread's name (`comm`), e.g. `rdk:broker0`.
        name: String,
        /// User plus system CPU time so far.
        cpu: Duration,
        /// Voluntary context switches so far: the times the thread blocked, on a lock, a
        /// condition or a socket.
        waits: u64,
    }

    /// Usage so far of every thread of this process, by thread id. Threads `/proc` cannot
    /// tell about are left out.
    pub(crate) fn threads() -> BTreeMap<u32, ThreadUsage> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return BTreeMap::new();
        };
        tasks
            .flatten()
            .filter_map(|task| {
                let tid = task.file_name().to_str()?.parse::<u32>().ok()?;
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                let status = std::fs::read_to_string(task.path().join("status")).ok()?;
                let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_owned();
                let (cpu, _) = parse_stat(&stat)?;
                let waits = status
                    .lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some((tid, ThreadUsage { name, cpu, waits }))
            })
            .collect()
    }

    /// Prints, per thread that used CPU between the two snapshots (nothing where `/proc`
    /// has no threads to show), its CPU seconds and voluntary waits per million messages:
    /// with librdkafka, the polling thread (the benchmark's own) against `rdk:broker*`,
    /// which parses the fetch responses.
    pub(crate) fn report_threads(
        case: &Case<'_>,
        before: &BTreeMap<u32, ThreadUsage>,
        after: &BTreeMap<u32, ThreadUsage>,
    ) {
        let mut lines: Vec<(Duration, String)> = after
            .iter()
            .filter_map(|(tid, a)| {
                let (cpu0, waits0) = before
                    .get(tid)
                    .map_or((Duration::ZERO, 0), |b| (b.cpu, b.waits));
                let cpu = a.cpu.checked_sub(cpu0)?;
                (!cpu.is_zero()).then(|| {
                    let waits = per_million(case, a.waits.saturating_sub(waits0) as f64);
                    let secs = per_million(case, cpu.as_secs_f64());
                    (cpu, format!("{} {secs:.2} s, {waits:.0} waits", a.name))
                })
            })
            .collect();
        lines.sort_by_key(|l| std::cmp::Reverse(l.0));
        if lines.is_empty() {
            return;
        }
        let lines: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
        eprintln!(
            "        bench process threads per million messages: {}",
            lines.join("; ")
        );
    }

    /// Prints the CPU seconds per million messages of a run (client and server apart when
    /// the server is another process, together otherwise) and the client's page faults.
    pub(crate) fn report(
        case: &Case<'_>,
        before: (Option<Usage>, Option<Usage>),
        after: (Option<Usage>, Option<Usage>),
        server_apart: bool,
    ) {
        let cpu_per_million = |b: Option<Usage>, a: Option<Usage>| {
            let used = a?.cpu.checked_sub(b?.cpu)?;
            Some(per_million(case, used.as_secs_f64()))
        };
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let process = cpu_per_million(before.0, after.0);
        let faults = match (before.0, after.0) {
            (Some(b), Some(a)) => {
                let faults = a.minor_faults.saturating_sub(b.minor_faults) as f64;
                format!("{:.0}", per_million(case, faults))
            }
            _ => "-".to_owned(),
        };
        if server_apart {
            eprintln!(
                "        CPU s per million messages consumed: client {}, server {}; \
                 client page faults per million: {faults}",
                show(process),
                show(cpu_per_million(before.1, after.1))
            );
        } else {
            eprintln!(
                "        CPU s per million messages consumed: client and embedded server {}; \
                 page faults per million: {faults}",
                show(process)
            );
        }
    }
}

/// Leaves out of a server's environment what the benchmark was given for its own, the
/// client's, allocator: a preloaded malloc (`LD_PRELOAD`) and glibc malloc settings
/// (`GLIBC_TUNABLES`).
fn without_client_malloc_settings(command: &mut std::process::Command) {
    command
        .env_remove("LD_PRELOAD")
        .env_remove("GLIBC_TUNABLES");
}

// ---------------------------------------------------------------------------------------------
// steadfast as a child process
// ---------------------------------------------------------------------------------------------

/// Runs the crate's `child_server` binary (built with the benchmark, same profile).
mod child {
    use std::io::{BufRead as _, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use anyhow::{bail, Context as _, Result};

    /// A running `child_server`; killed when dropped.
    #[derive(Debug)]
    pub(crate) struct ChildServer {
        /// The server process.
        child: Child,
        /// `host:port` it listens on.
        bootstrap: String,
    }

    impl ChildServer {
        /// Starts the server on `data_dir` and waits for the address it prints once it serves.
        pub(crate) fn start(data_dir: &Path) -> Result<ChildServer> {
            Self::start_with(data_dir, &[])
        }

        /// Starts the server on `data_dir` with more `child_server` flags and waits for the
        /// address it prints once it serves.
        pub(crate) fn start_with(data_dir: &Path, flags: &[String]) -> Result<ChildServer> {
            let binary = env!("CARGO_BIN_EXE_child_server");
            let mut command = Command::new(binary);
            super::without_client_malloc_settings(&mut command);
            let mut child = command
                .arg("--data-dir")
                .arg(data_dir)
                .args(flags)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {binary}"))?;
            let Some(stdout) = child.stdout.take() else {
                bail!("{binary}: no stdout pipe");
            };
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let bootstrap = match (read, line.trim().strip_prefix("listening ")) {
                (Ok(_), Some(address)) => address.to_owned(),
                (read, _) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    bail!("{binary} did not start (read {read:?}, line {line:?}, exit {status:?})");
                }
            };
            eprintln!("steadfast: child process {binary} on {bootstrap}");
            Ok(ChildServer { child, bootstrap })
        }

        /// `bootstrap.servers` for the clients.
        pub(crate) fn bootstrap(&self) -> &str {
            &self.bootstrap
        }

        /// The server's process id.
        pub(crate) fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Kills the server at once (SIGKILL: no shutdown, no final fsync) and reaps it.
        pub(crate) fn kill(mut self) -> Result<()> {
            self.child.kill().context("killing the server")?;
            self.child.wait().context("reaping the server")?;
            Ok(())
        }
    }

    impl Drop for ChildServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tansu, a second Kafka-protocol server, as a child process
// ---------------------------------------------------------------------------------------------

/// Runs the tansu broker as a child process with memory storage — benchmark-only code.
mod tansu {
    use std::fs::File;
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context as _, Result};

    /// How long tansu may take to accept connections after it is started.
    const START_TIMEOUT: Duration = Duration::from_secs(30);

    /// A running tansu broker; killed when dropped.
    #[derive(Debug)]
    pub(crate) struct Tansu {
        /// The broker process.
        child: Child,
        /// The port it listens on (127.0.0.1).
        port: u16,
        /// tansu's stdout and stderr.
        log_path: PathBuf,
    }

    impl Tansu {
        /// Starts `binary broker` with memory storage on a free local port and waits until
        /// the port accepts connections.
        pub(crate) fn start(binary: &Path) -> Result<Tansu> {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("finding a free port for tansu")?
                .port();
            let url = format!("tcp://127.0.0.1:{port}");
            // Kept after the run (overwritten by the next one on this port), to read on failure.
            let log_path = std::env::temp_dir().join(format!("steadfast-bench-tansu-{port}.log"));
            let log = File::create(&log_path).context("creating tansu's log file")?;
            let mut command = Command::new(binary);
            super::without_client_malloc_settings(&mut command);
            let child = command
                .args(["broker", "--storage-engine", "memory://tansu/"])
                .args(["--listener-url", &url, "--advertised-listener-url", &url])
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("tansu's log file")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting tansu from {}", binary.display()))?;
            let mut tansu = Tansu {
                child,
                port,
                log_path,
            };
            let deadline = Instant::now() + START_TIMEOUT;
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = tansu.child.try_wait().context("waiting for tansu")? {
                    let log = std::fs::read_to_string(&tansu.log_path).unwrap_or_default();
                    bail!("tansu exited at start ({status}); its output:\n{log}");
                }
                if Instant::now() > deadline {
                    bail!("tansu did not listen on port {port} within {START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "tansu: {} on 127.0.0.1:{port}, memory storage",
                binary.display()
            );
            Ok(tansu)
        }

        /// `bootstrap.servers` for the clients.
        pub(crate) fn bootstrap(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        /// tansu's process id.
        pub(crate) fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Where tansu's output goes, for error messages.
        pub(crate) fn log_path(&self) -> &Path {
            &self.log_path
        }
    }

    impl Drop for Tansu {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// `1234567.8` -> `1,234,568`.
fn group_digits(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `100` -> `100 B`, `1024` -> `1 KiB`.
fn format_size(size: usize) -> String {
    if size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// `(msg/s, MB/s)` cells for a result, `-` when there is none; `mark` follows each number.
fn rate_cells(m: Option<&Measured>, mark: &str) -> [String; 2] {
    match m {
        Some(m) => [
            format!("{}{mark}", group_digits(m.msgs_per_sec())),
            format!("{:.1}{mark}", m.mb_per_sec()),
        ],
        None => ["-".into(), "-".into()],
    }
}

/// `ours / theirs` in msg/s, `-` unless both ran.
fn ratio_cell(ours: Option<&Measured>, theirs: Option<&Measured>, mark: &str) -> String {
    match (ours, theirs) {
        (Some(s), Some(t)) => format!("{:.2}{mark}", s.msgs_per_sec() / t.msgs_per_sec()),
        _ => "-".into(),
    }
}

/// The results as a Markdown table, with its notes. The Redis and tansu columns appear only
/// for the peers that ran.
fn render_table(
    rows: &[Row],
    args: &Args,
    repeat: usize,
    redis_persistence: &str,
    tansu_ran: bool,
) -> String {
    let mut header = vec![
        "workload",
        "size",
        "partitions",
        "steadfast msg/s",
        "steadfast MB/s",
    ];
    if !args.no_redis {
        header.extend(["redis msg/s", "redis MB/s", "ratio (steadfast/redis)"]);
    }
    if tansu_ran {
        header.extend(["tansu msg/s", "tansu MB/s", "ratio (steadfast/tansu)"]);
    }
    let mut cells: Vec<Vec<String>> = Vec::new();
    for row in rows {
        let mut line = vec![
            row.workload.label().to_owned(),
            format_size(row.size),
            row.partitions.to_string(),
        ];
        line.extend(rate_cells(row.steadfast.as_ref(), ""));
        if !args.no_redis {
            let mark = if row.redis_substituted { " *" } else { "" };
            line.extend(rate_cells(row.redis.as_ref(), mark));
            line.push(ratio_cell(row.steadfast.as_ref(), row.redis.as_ref(), mark));
        }
        if tansu_ran {
            line.extend(rate_cells(row.tansu.as_ref(), ""));
            line.push(ratio_cell(row.steadfast.as_ref(), row.tansu.as_ref(), ""));
        }
        cells.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, values: &[&str]| {
        out.push('|');
        for (c, v) in values.iter().enumerate() {
            // Text columns left-aligned, numbers right-aligned.
            if c < 3 {
                let _ = write!(out, " {v:<w$} |", w = widths[c]);
            } else {
                let _ = write!(out, " {v:>w$} |", w = widths[c]);
            }
        }
        out.push('\n');
    };
    line(&mut out, &header);
    out.push('|');
    for (c, w) in widths.iter().enumerate() {
        let dashes = "-".repeat(*w);
        if c < 3 {
            let _ = write!(out, " {dashes} |");
        } else {
            let _ = write!(out, "{dashes}-:|");
        }
    }
    out.push('\n');
    for row in &cells {
        let values: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &values);
    }
    out.push('\n');
    let mut counts: Vec<(usize, u64)> = rows.iter().map(|r| (r.size, r.messages)).collect();
    counts.sort_unstable();
    counts.dedup();
    let counts: Vec<String> = counts
        .iter()
        .map(|(size, n)| format!("{} x {}", group_digits(*n as f64), format_size(*size)))
        .collect();
    let _ = writeln!(
        out,
        "Messages per run: {}; each figure is the median of {repeat} run{}.",
        counts.join(", "),
        if repeat == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "MB/s = 10^6 payload bytes per second. steadfast: {}, default fsync \
         policy {:?} (acks=-1 is answered after fsync), librdkafka client.",
        if args.steadfast_process {
            "child process (child_server)"
        } else {
            "embedded server"
        },
        FsyncPolicy::default()
    );
    let _ = writeln!(
        out,
        "Redis: XADD pipelined {} per round trip, XRANGE COUNT {}; partitions = stream keys; \
         persistence on this server: {redis_persistence}.",
        args.redis_pipeline, args.redis_batch
    );
    let _ = writeln!(
        out,
        "* Redis has no acks=-1 equivalent (no fsync on acknowledgement): its acks=1 XADD \
         numbers are repeated."
    );
    let _ = writeln!(
        out,
        "Consumer reads: {}.",
        if args.consume_batch > 1 {
            format!(
                "up to {} messages at a time (rd_kafka_consume_batch_queue)",
                args.consume_batch
            )
        } else {
            "one BaseConsumer::poll per message (--consume-batch 1)".to_owned()
        }
    );
    if !args.consumer_set.is_empty() || !args.producer_set.is_empty() {
        let list = |set: &[(String, String)]| {
            set.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "Client settings over the defaults: producer [{}], consumer [{}].",
            list(&args.producer_set),
            list(&args.consumer_set)
        );
    }
    match std::env::var_os("LD_PRELOAD") {
        Some(preload) => {
            let _ = writeln!(
                out,
                "Client allocator: LD_PRELOAD={} ({}; child server processes run without it).",
                preload.to_string_lossy(),
                if args.steadfast_process {
                    "the benchmark process, the client alone"
                } else {
                    "the benchmark process, with the embedded server in it"
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "Client allocator: the system's (glibc) malloc{}.",
                if args.system_malloc {
                    " (--system-malloc)"
                } else if !args.steadfast_process {
                    " (the server is embedded in this process: jemalloc is preloaded only with --steadfast-process)"
                } else {
                    "; install libjemalloc2 for the benchmark to preload jemalloc into the client"
                }
            );
        }
    }
    if let Some(tunables) = std::env::var_os("GLIBC_TUNABLES") {
        let _ = writeln!(
            out,
            "Client malloc settings: GLIBC_TUNABLES={} (the benchmark process, with an embedded \
             server in it; child server processes run without them).",
            tunables.to_string_lossy()
        );
    }
    if tansu_ran {
        let _ = writeln!(
            out,
            "tansu: child process, memory storage (memory://tansu/), same librdkafka client \
             and settings; its runs alternate with steadfast's, each going first in every \
             other round; acks=-1 is not run on it."
        );
    }
    out
}
