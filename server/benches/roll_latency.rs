//! Roll-latency benchmark: how much a partition that rolls segments all the time slows down
//! small produces to another partition of the same embedded server.
//!
//! Run with `cargo bench -p steadfast-server --bench roll_latency` (add `-- --quick` for a
//! smoke run, `-- --help` for every flag). See `benches/README.md`.
//!
//! Topic A gets one 100-byte `acks=1` produce at a time (real librdkafka `FutureProducer`,
//! `linger.ms=0`); each produce is timed from `send` to its delivery report. That is done
//! twice: while topic B is idle, and while a second client streams 1 KiB messages to B,
//! whose `segment.bytes` is tiny, so B rolls a segment every few milliseconds. The table
//! shows p50/p99/max latency on A for both phases and the ratio rolling/idle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context as _, Result};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer as _,
    ProducerContext,
};
use rdkafka::ClientContext;
use steadfast_server::{FsyncPolicy, Server, ServerHandle};

/// Command-line flags (everything after `cargo bench --bench roll_latency --`).
#[derive(Parser, Debug)]
#[command(about = "small-produce latency on one partition while another rolls segments")]
struct Args {
    /// Timed produces to A in each phase.
    #[arg(long, default_value_t = 3000)]
    messages: usize,
    /// Smoke run: 200 produces per phase.
    #[arg(long)]
    quick: bool,
    /// `segment.bytes` of topic B.
    #[arg(long, default_value_t = 256 * 1024)]
    segment_bytes: u64,
    /// Size of the messages streamed to B.
    #[arg(long, default_value_t = 1024)]
    b_message_bytes: usize,
    /// Passed by `cargo bench`; without it (as under `cargo test --all-targets`) the
    /// benchmark does a `--quick` smoke run.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Size of the timed messages to A.
const A_MESSAGE_BYTES: usize = 100;
/// Untimed produces to A before each phase.
const WARMUP: usize = 50;

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.quick |= !args.bench;
    if args.quick {
        args.messages = args.messages.min(200);
    }
    ensure!(args.messages > 0, "--messages must be at least 1");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("steadfast-server")
        .build()
        .context("building the server's tokio runtime")?;
    // Under the target dir, on a real disk: fsync does real work there (not a tmpfs).
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .context("creating the server's data dir")?;
    let server = runtime
        .block_on(
            Server::builder()
                .listen("127.0.0.1:0")
                .data_dir(data_dir.path())
                .fsync(FsyncPolicy::default())
                .start(),
        )
        .context("starting the embedded server")?;
    let result = run(&runtime, &server, &args);
    runtime.block_on(server.shutdown());
    result
}

fn run(runtime: &tokio::runtime::Runtime, server: &ServerHandle, args: &Args) -> Result<()> {
    let bootstrap = server.bootstrap_servers();
    let suffix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let topic_a = format!("roll-latency-a-{}-{suffix}", std::process::id());
    let topic_b = format!("roll-latency-b-{}-{suffix}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .context("admin client")?;
    let segment_bytes = args.segment_bytes.to_string();
    runtime.block_on(async {
        let new = [
            NewTopic::new(&topic_a, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&topic_b, 1, TopicReplication::Fixed(1))
                .set("segment.bytes", &segment_bytes),
        ];
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
        anyhow::Ok(())
    })?;

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("client runtime")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "1")
        .set("linger.ms", "0")
        .set("enable.idempotence", "false")
        .set("compression.type", "none")
        .create()
        .context("producer for A")?;
    let payload = vec![b'a'; A_MESSAGE_BYTES];

    eprintln!(
        "roll_latency: {} timed produces per phase, B segment.bytes={}, B messages {} B",
        args.messages, args.segment_bytes, args.b_message_bytes
    );
    client.block_on(time_produces(&producer, &topic_a, &payload, WARMUP))?;
    let idle = client.block_on(time_produces(&producer, &topic_a, &payload, args.messages))?;

    let stream = BStream::start(&bootstrap, &topic_b, args.b_message_bytes)?;
    let segments_before = wait_for_rolls(server, &topic_b, &stream)?;
    client.block_on(time_produces(&producer, &topic_a, &payload, WARMUP))?;
    let phase_started = Instant::now();
    let rolling = client.block_on(time_produces(&producer, &topic_a, &payload, args.messages))?;
    let phase_secs = phase_started.elapsed().as_secs_f64();
    let segments_after = server
        .segment_base_offsets(&topic_b, 0)
        .map(|s| s.len())
        .unwrap_or(0);
    let b_delivered = stream.stop()?;
    // Rolls during the phase: segments are only added by rolls (no retention here).
    let rolls = segments_after.saturating_sub(segments_before);

    println!("| phase | produces to A | p50 µs | p99 µs | max µs | B rolls/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let (i50, i99, imax) = percentiles(&idle);
    let (r50, r99, rmax) = percentiles(&rolling);
    println!("| B idle | {} | {i50} | {i99} | {imax} | 0 |", idle.len());
    println!(
        "| B rolling | {} | {r50} | {r99} | {rmax} | {:.0} |",
        rolling.len(),
        rolls as f64 / phase_secs
    );
    println!(
        "\nrolling/idle: p50 x{:.2}, p99 x{:.2}; B: {b_delivered} messages delivered, {rolls} rolls in {phase_secs:.1} s",
        r50 as f64 / i50.max(1) as f64,
        r99 as f64 / i99.max(1) as f64,
    );
    Ok(())
}

/// Produces `n` messages one at a time; returns each one's latency in microseconds.
async fn time_produces(
    producer: &FutureProducer,
    topic: &str,
    payload: &[u8],
    n: usize,
) -> Result<Vec<u64>> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        producer
            .send(
                FutureRecord::<(), [u8]>::to(topic).payload(payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow!("produce to {topic}: {e}"))?;
        latencies.push(started.elapsed().as_micros() as u64);
    }
    Ok(latencies)
}

/// p50, p99 and max of latencies in microseconds.
fn percentiles(latencies: &[u64]) -> (u64, u64, u64) {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    (at(0.50), at(0.99), sorted.last().copied().unwrap_or(0))
}

/// Waits until B has rolled at least twice (so the timed phase sees a steady stream of
/// rolls); returns B's segment count at that point.
fn wait_for_rolls(server: &ServerHandle, topic: &str, stream: &BStream) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let segments = server
            .segment_base_offsets(topic, 0)
            .map(|s| s.len())
            .unwrap_or(0);
        if segments >= 3 {
            return Ok(segments);
        }
        ensure!(
            Instant::now() < deadline,
            "topic B did not roll within 60 s ({} delivered, {} failed)",
            stream.counts.delivered.load(Ordering::Relaxed),
            stream.counts.failed.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Delivery counts of the stream to B.
#[derive(Debug, Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct CountingContext(Arc<Counts>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.0.delivered
        } else {
            &self.0.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A thread that streams messages to B as fast as librdkafka takes them.
struct BStream {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl BStream {
    fn start(bootstrap: &str, topic: &str, message_bytes: usize) -> Result<Self> {
        let counts = Arc::new(Counts::default());
        let producer: BaseProducer<CountingContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "1")
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("enable.idempotence", "false")
            .set("compression.type", "none")
            .set("queue.buffering.max.kbytes", "65536")
            .create_with_context(CountingContext(counts.clone()))
            .context("producer for B")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (topic, flag) = (topic.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let payload = vec![b'b'; message_bytes];
            while !flag.load(Ordering::Relaxed) {
                match producer.send(BaseRecord::<(), [u8]>::to(&topic).payload(&payload)) {
                    Ok(()) => {}
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        producer.poll(Duration::ZERO);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err((e, _)) => return Err(anyhow!("produce to B: {e}")),
                }
                producer.poll(Duration::ZERO);
            }
            producer
                .flush(Duration::from_secs(30))
                .context("flushing B")?;
            Ok(())
        });
        Ok(BStream {
            stop,
            counts,
            thread,
        })
    }

    /// Stops the stream; returns how many messages B acknowledged.
    fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("the B stream thread panicked"))??;
        let failed = self.counts.failed.load(Ordering::Relaxed);
        ensure!(failed == 0, "{failed} produces to B failed");
        Ok(self.counts.delivered.load(Ordering::Relaxed))
    }
}
