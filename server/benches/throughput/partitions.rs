//! `--case partitions`: the embedded server with many partitions (1, 64, 1,000 and 10,000 by
//! default). For each count, a fresh server in a child process, under an open-file limit
//! of 1,024 (soft and hard, so it cannot raise it), gets one topic of that many
//! partitions; then 100-byte messages with distinct keys (the client's partitioner spreads
//! them over every partition) are produced with `acks=1`, then as many with `acks=-1`,
//! first by librdkafka, then by a client that sends requests encoded beforehand (see
//! [`super::raw_produce`]: it measures the server where librdkafka's own cost per
//! partition would), and the whole topic is read back from offset 0. The same librdkafka
//! produce then goes to librdkafka's own mock broker (in memory, nothing written) with a
//! topic of as many partitions: what one producer reaches whatever the server does, the
//! client's ceiling at that count. Meanwhile the server's resident memory and
//! open descriptors are sampled every 50 ms (peaks shown). Then the server is killed
//! (SIGKILL) and started again on the same data: the table shows how long until it served
//! again, and every message is checked to be there (the sum of the partitions' log ends).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use steadfast_server::client::Client;

use super::child::ChildServer;
use super::{
    consume, create_topics, group_digits, produce, report, Args, Case, Measured, Payloads, Workload,
};

/// Payload size of every message.
const MESSAGE_BYTES: usize = 100;
/// Messages per produce workload (each of `acks=1` and `acks=-1`), unless `--messages`.
const DEFAULT_MESSAGES: u64 = 200_000;
/// The same with `--quick`.
const QUICK_MESSAGES: u64 = 5_000;
/// How often the server's memory and descriptors are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// What one partition count measured.
#[derive(Debug)]
struct ScalingRow {
    partitions: i32,
    create: Duration,
    produce_acks1: Measured,
    produce_acks_all: Measured,
    raw_acks1: Measured,
    raw_acks_all: Measured,
    /// librdkafka `acks=1` into its in-memory mock broker: the client's ceiling.
    mock_acks1: Measured,
    consume: Measured,
    peak_rss: u64,
    peak_fds: usize,
    restart: Duration,
    rss_after_restart: u64,
    fds_after_restart: usize,
}

/// Runs every partition count and prints the table to stdout.
pub(crate) fn run(args: &Args) -> Result<()> {
    let messages = args.messages.unwrap_or(if args.quick {
        QUICK_MESSAGES
    } else {
        DEFAULT_MESSAGES
    });
    ensure!(
        args.scaling_partitions.iter().all(|&p| p > 0),
        "partition counts must be positive"
    );
    let payloads = Payloads::new(MESSAGE_BYTES);
    let mut flags = vec!["--nofile-limit".to_owned(), args.nofile_limit.to_string()];
    if let Some(files) = args.max_open_files {
        flags.extend(["--max-open-files".to_owned(), files.to_string()]);
    }
    eprintln!(
        "steadfast with many partitions: {:?} partitions, {messages} messages of {MESSAGE_BYTES} B per produce, server flags {flags:?}",
        args.scaling_partitions
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the admin client's runtime")?;
    let mut rows = Vec::new();
    for &partitions in &args.scaling_partitions {
        let row = run_one(args, &runtime, &flags, &payloads, partitions, messages)
            .with_context(|| format!("{partitions} partitions"))?;
        rows.push(row);
    }
    println!("{}", render(&rows, messages, &flags));
    Ok(())
}

fn run_one(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    flags: &[String],
    payloads: &Payloads,
    partitions: i32,
    messages: u64,
) -> Result<ScalingRow> {
    let dir = tempfile::tempdir().context("creating the server's data dir")?;
    let server = ChildServer::start_with(dir.path(), flags)?;
    let sampler = Sampler::start(server.pid());
    let bootstrap = server.bootstrap().to_owned();
    let topic = format!("scaling-{partitions}p");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .context("creating the admin client")?;
    let started = Instant::now();
    runtime.block_on(create_topics(&admin, &[&topic], partitions))?;
    let create = started.elapsed();
    eprintln!(
        "  created {partitions} partitions in {:.2} s",
        create.as_secs_f64()
    );

    let mut case = Case {
        size: MESSAGE_BYTES,
        partitions,
        messages,
        payloads,
        repetition: 1,
        keyed: true,
    };
    let produce_acks1 = produce(&bootstrap, &topic, "1", &case, &args.producer_set)?;
    report("steadfast", Workload::ProduceAcks1, &case, &produce_acks1);
    let produce_acks_all = produce(&bootstrap, &topic, "all", &case, &args.producer_set)?;
    report(
        "steadfast",
        Workload::ProduceAcksAll,
        &case,
        &produce_acks_all,
    );
    let raw_acks1 =
        super::raw_produce::produce(&bootstrap, &topic, partitions, messages, payloads, 1)?;
    report_raw("acks=1", partitions, &raw_acks1);
    let raw_acks_all =
        super::raw_produce::produce(&bootstrap, &topic, partitions, messages, payloads, -1)?;
    report_raw("acks=-1", partitions, &raw_acks_all);
    case.messages = 4 * messages;
    let (consume, _) = consume(
        &bootstrap,
        &topic,
        &case,
        &args.consumer_set,
        args.consume_batch,
    )?;
    report("steadfast", Workload::ConsumeBacklog, &case, &consume);
    let (peak_rss, peak_fds) = sampler.stop();
    drop(admin);
    case.messages = messages;
    let mock_acks1 = client_ceiling(&topic, &case, &args.producer_set)?;
    eprintln!(
        "  librdkafka acks=1 into its mock broker ({partitions} partitions): {} msg/s",
        group_digits(mock_acks1.msgs_per_sec())
    );

    server.kill()?;
    let started = Instant::now();
    let server = ChildServer::start_with(dir.path(), flags)?;
    let restart = started.elapsed();
    let (rss_after_restart, fds_after_restart) = (
        rss(server.pid()).unwrap_or(0),
        fds(server.pid()).unwrap_or(0),
    );
    let total = log_end_total(server.bootstrap(), &topic, partitions)?;
    ensure!(
        total == 4 * messages as i64,
        "after the restart the partitions hold {total} messages, expected {}",
        4 * messages
    );
    eprintln!(
        "  restarted after SIGKILL in {:.2} s; all {total} messages there",
        restart.as_secs_f64()
    );
    drop(server);
    Ok(ScalingRow {
        partitions,
        create,
        produce_acks1,
        produce_acks_all,
        raw_acks1,
        raw_acks_all,
        mock_acks1,
        consume,
        peak_rss,
        peak_fds,
        restart,
        rss_after_restart,
        fds_after_restart,
    })
}

/// The same librdkafka `acks=1` produce into librdkafka's mock broker (one broker, in
/// memory) with a topic of `case.partitions` partitions: the producer's own rate at that
/// partition count, with a server that stores nothing on disk.
fn client_ceiling(
    topic: &str,
    case: &Case<'_>,
    overrides: &[(String, String)],
) -> Result<Measured> {
    let cluster = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
    cluster
        .create_topic(topic, case.partitions, 1)
        .context("creating the topic in the mock cluster")?;
    produce(&cluster.bootstrap_servers(), topic, "1", case, overrides)
}

/// Prints a finished raw-client measurement to stderr, as progress.
fn report_raw(acks: &str, partitions: i32, m: &Measured) {
    eprintln!(
        "  run 1 raw client produce {acks:<7} {MESSAGE_BYTES:>5} B x {partitions} partitions: {:>10} msg/s {:>8.1} MB/s ({:.2} s)",
        group_digits(m.msgs_per_sec()),
        m.mb_per_sec(),
        m.elapsed.as_secs_f64()
    );
}

/// The sum of the log end offsets of `topic`'s partitions, in one ListOffsets request.
fn log_end_total(bootstrap: &str, topic: &str, partitions: i32) -> Result<i64> {
    let mut client = Client::connect(bootstrap, Duration::from_secs(30))
        .context("connecting to list offsets")?;
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(
                (0..partitions)
                    .map(|p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(p)
                            .with_timestamp(-1)
                    })
                    .collect(),
            )]);
    let response = client.call(&request, 1).context("ListOffsets")?;
    let mut total = 0;
    let mut seen = 0;
    for t in &response.topics {
        for p in &t.partitions {
            ensure!(
                p.error_code == 0,
                "ListOffsets of partition {}: error {}",
                p.partition_index,
                p.error_code
            );
            total += p.offset;
            seen += 1;
        }
    }
    ensure!(
        seen == partitions,
        "ListOffsets answered for {seen} of {partitions} partitions"
    );
    Ok(total)
}

/// Resident memory of process `pid` in bytes (`VmRSS`).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Samples a process's resident memory and open descriptors on a thread of its own,
/// keeping the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, usize)>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak_rss, mut peak_fds) = (0, 0);
            loop {
                peak_rss = peak_rss.max(rss(pid).unwrap_or(0));
                peak_fds = peak_fds.max(fds(pid).unwrap_or(0));
                if flag.load(Ordering::Relaxed) {
                    return (peak_rss, peak_fds);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Sampler { stop, thread }
    }

    /// Stops sampling; the peak resident memory (bytes) and peak descriptors.
    fn stop(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn render(rows: &[ScalingRow], messages: u64, flags: &[String]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "steadfast with many partitions: {messages} messages of {MESSAGE_BYTES} B per produce \
         workload, keyed over every partition (librdkafka, then the raw client); the consume \
         reads all four ({}); server flags {}\n\n",
        group_digits(4.0 * messages as f64),
        flags.join(" ")
    ));
    out.push_str(
        "| partitions | create topic | produce acks=1 msg/s | produce acks=-1 msg/s | raw produce acks=1 msg/s | raw produce acks=-1 msg/s | librdkafka acks=1 into its mock broker msg/s | consume msg/s | peak RSS | peak fds | restart after SIGKILL | RSS after restart | fds after restart |\n",
    );
    out.push_str(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.2} s | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} s | {} | {} |\n",
            group_digits(r.partitions as f64),
            r.create.as_secs_f64(),
            group_digits(r.produce_acks1.msgs_per_sec()),
            group_digits(r.produce_acks_all.msgs_per_sec()),
            group_digits(r.raw_acks1.msgs_per_sec()),
            group_digits(r.raw_acks_all.msgs_per_sec()),
            group_digits(r.mock_acks1.msgs_per_sec()),
            group_digits(r.consume.msgs_per_sec()),
            mib(r.peak_rss),
            r.peak_fds,
            r.restart.as_secs_f64(),
            mib(r.rss_after_restart),
            r.fds_after_restart,
        ));
    }
    if let Some(base) = rows.iter().find(|r| r.partitions == 64) {
        for r in rows.iter().filter(|r| r.partitions > 64) {
            let ratio =
                |m: fn(&ScalingRow) -> &Measured| m(r).msgs_per_sec() / m(base).msgs_per_sec();
            out.push_str(&format!(
                "\n{} partitions vs 64: librdkafka produce acks=1 {:.2}x, acks=-1 {:.2}x; raw produce acks=1 {:.2}x, acks=-1 {:.2}x; librdkafka into its mock broker {:.2}x, and against this server's 64-partition acks=1 row {:.2}x",
                group_digits(r.partitions as f64),
                ratio(|r| &r.produce_acks1),
                ratio(|r| &r.produce_acks_all),
                ratio(|r| &r.raw_acks1),
                ratio(|r| &r.raw_acks_all),
                ratio(|r| &r.mock_acks1),
                r.mock_acks1.msgs_per_sec() / base.produce_acks1.msgs_per_sec(),
            ));
        }
    }
    out
}
