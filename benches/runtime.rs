//! Runtime benchmarks against the embedded server, printed as Markdown tables:
//!
//! - **overhead**: a no-op handler through the full worker vs a raw rdkafka consumer loop on
//!   the same backlog of 100-byte messages, as a ratio;
//! - **keys**: Parallel Consumer's published case: 10,000 messages on one partition, handler
//!   latency uniform 0–5 ms, concurrency 100, with 1, 10, 100 and 10,000 keys, a Zipf(s=1)
//!   draw over 10,000 keys, and the partition-ordered baseline (concurrency 1);
//! - **memory**: peak RSS of a worker process over 1,000,000 distinct keys vs 1,000 keys;
//! - **delays**: delayed messages: 10,000 sent with `send_record_at`, due 1–30 s later,
//!   handed to the handler of a worker that relays them; lateness (handler start minus due
//!   time) p50/p99/max, beside the common Redis recipe (a sorted set scored by due time,
//!   polled every 10 ms) with the same due times, in the same run.
//!
//! `cargo bench --bench runtime` runs the full sizes; without cargo bench's `--bench` flag
//! (as under `cargo test`) it runs a quick smoke pass. `-- --only overhead|keys|memory|delays`.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use steadfast::message::RawBytes;
use steadfast::{Context, Handler, HandlerError, Message, Retry, Worker};
use tokio_util::sync::CancellationToken;

/// A payload as raw bytes; its first byte is the handler's sleep in milliseconds.
#[derive(Debug)]
struct Payload(Vec<u8>);

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Self {
        Payload(bytes.to_vec())
    }
}
impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
impl Message for Payload {
    const TOPIC: &'static str = "bench";
    type Codec = RawBytes;
    fn key(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// Counts calls; sleeps as long as the payload's first byte says when `sleep` is set; records
/// the first start and last end.
#[derive(Debug, Clone)]
struct Bench {
    done: Arc<AtomicU64>,
    sleep: bool,
    span: Arc<Mutex<Option<(Instant, Instant)>>>,
    /// Measured handler time per key (sleeping cases only).
    busy: Arc<Mutex<std::collections::HashMap<Vec<u8>, Duration>>>,
}

impl Bench {
    fn new(sleep: bool) -> Self {
        Bench {
            done: Arc::new(AtomicU64::new(0)),
            sleep,
            span: Arc::new(Mutex::new(None)),
            busy: Arc::new(Mutex::new(std::collections::HashMap::new())),
        }
    }
}

impl Handler for Bench {
    type Message = Payload;
    const GROUP: &'static str = "bench";
    fn handle_message(
        &self,
        msg: Payload,
        cx: &Context,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
        let this = self.clone();
        let key = if self.sleep {
            cx.key().map(|k| k.to_vec())
        } else {
            None
        };
        async move {
            let start = Instant::now();
            if this.sleep {
                let ms = msg.0.first().copied().unwrap_or(0);
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                }
            }
            if let Some(key) = key {
                *this.busy.lock().entry(key).or_default() += start.elapsed();
            }
            {
                let mut span = this.span.lock();
                let end = Instant::now();
                *span = Some(match *span {
                    Some((first, _)) => (first, end),
                    None => (start, end),
                });
            }
            this.done.fetch_add(1, AtomicOrdering::Relaxed);
            Ok(())
        }
    }
}

struct Env {
    bootstrap: String,
    quick: bool,
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// Produces `count` records with keys from `key_of` and payloads from `payload_of`.
fn produce(
    bootstrap: &str,
    topic: &str,
    count: u64,
    partition: Option<i32>,
    key_of: impl Fn(u64) -> String,
    payload_of: impl Fn(u64) -> Vec<u8>,
) -> anyhow::Result<()> {
    let producer: BaseProducer = client(bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    for i in 0..count {
        let key = key_of(i);
        let payload = payload_of(i);
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let mut record = Some(record);
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

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Runs a worker over `topic` until `count` messages are handled; returns the elapsed time
/// from the start of `run` (group join included) and the handler's first-start-to-last-end span.
async fn run_worker(
    env: &Env,
    topic: &str,
    count: u64,
    handler: Bench,
    concurrency: usize,
    observed: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let done = handler.done.clone();
    let span = handler.span.clone();
    let mut builder = Worker::builder();
    if observed {
        // Serving /metrics installs the Prometheus recorder: every metric records from then on.
        builder = builder.observe_listener(std::net::TcpListener::bind("127.0.0.1:0")?);
    }
    let worker = builder
        .brokers(env.bootstrap.clone())
        .topic(topic)
        .group(unique("bench-group"))
        .concurrency(concurrency)
        .max_per_key(1_000_000)
        .retry(Retry::none())
        .handler(handler)
        .build()?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn(worker.run(stop.clone()));
    while done.load(AtomicOrdering::Relaxed) < count {
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "worker handled {} of {count} in 600 s",
                done.load(AtomicOrdering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    run.await??;
    let (first, last) = span.lock().context("no handler call")?;
    Ok((elapsed, last.duration_since(first)))
}

/// A raw rdkafka consumer loop: subscribe in a fresh group, receive `count` records, store each
/// offset (as a careful at-least-once loop does).
async fn run_raw(env: &Env, topic: &str, count: u64) -> anyhow::Result<Duration> {
    let consumer: StreamConsumer = client(&env.bootstrap)
        .set("group.id", unique("raw-group"))
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?;
    let started = Instant::now();
    consumer.subscribe(&[topic])?;
    let mut seen = 0u64;
    while seen < count {
        let m = consumer.recv().await?;
        consumer.store_offset_from_message(&m)?;
        seen += 1;
    }
    Ok(started.elapsed())
}

async fn overhead(env: &Env) -> anyhow::Result<()> {
    let count: u64 = if env.quick { 20_000 } else { 1_000_000 };
    let topic = unique("overhead");
    create_topic(&env.bootstrap, &topic, 4).await?;
    let bootstrap = env.bootstrap.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        produce(
            &bootstrap,
            &t,
            count,
            None,
            |i| format!("k{}", i % 10_000),
            |_| vec![0u8; 100],
        )
    })
    .await??;
    let raw = run_raw(env, &topic, count).await?;
    let (steadfast, _) = run_worker(env, &topic, count, Bench::new(false), 256, false).await?;
    // Another group reads the same records, now with the metrics recorded.
    let (observed, _) = run_worker(env, &topic, count, Bench::new(false), 256, true).await?;
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    println!("\n### (a) overhead: no-op handler vs raw rdkafka loop, {count} x 100 B, 4 partitions, 10,000 keys\n");
    println!("| consumer | elapsed s | msg/s |");
    println!("|---|---:|---:|");
    println!(
        "| raw rdkafka StreamConsumer loop (store_offset per message) | {:.2} | {:.0} |",
        raw.as_secs_f64(),
        rate(raw)
    );
    println!(
        "| steadfast worker, no-op handler, concurrency 256 | {:.2} | {:.0} |",
        steadfast.as_secs_f64(),
        rate(steadfast)
    );
    println!(
        "| steadfast worker, same, serving /metrics (Prometheus recorder installed) | {:.2} | {:.0} |",
        observed.as_secs_f64(),
        rate(observed)
    );
    println!(
        "\nsteadfast / raw throughput: {:.2} (both timed from subscribe to the last message)",
        rate(steadfast) / rate(raw)
    );
    println!(
        "with metrics / without: {:.2}",
        rate(observed) / rate(steadfast)
    );
    Ok(())
}

/// Keys for Parallel Consumer's case.
#[derive(Debug, Clone, Copy)]
enum Keys {
    Distinct(u64),
    Zipf,
}

fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for k in 1..=n {
        total += 1.0 / k as f64;
        cdf.push(total);
    }
    cdf.iter().map(|c| c / total).collect()
}

async fn keys(env: &Env) -> anyhow::Result<()> {
    let count: u64 = if env.quick { 1_000 } else { 10_000 };
    let cases: Vec<(&str, Keys, usize, &str)> = vec![
        ("1 key", Keys::Distinct(1), 100, "26.7"),
        ("10 keys", Keys::Distinct(10), 100, "3.3"),
        ("100 keys", Keys::Distinct(100), 100, "2.18"),
        ("10,000 keys", Keys::Distinct(10_000), 100, "2.13"),
        ("Zipf(s=1) over 10,000 keys", Keys::Zipf, 100, "-"),
        (
            "partition order (concurrency 1)",
            Keys::Distinct(10_000),
            1,
            "22.2",
        ),
    ];
    println!(
        "\n### (b) key-parallel speed: {count} messages on 1 partition, handler 0-5 ms uniform\n"
    );
    println!("| case | concurrency | elapsed s | handler span s | ideal (drawn) s | ideal (measured) s | span / measured ideal | Parallel Consumer s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let cdf = zipf_cdf(10_000);
    for (name, keys, concurrency, pc) in cases {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let draws: Vec<(u64, u8)> = (0..count)
            .map(|_| {
                let key = match keys {
                    Keys::Distinct(n) => rng.random_range(0..n),
                    Keys::Zipf => {
                        let u: f64 = rng.random();
                        cdf.partition_point(|c| *c < u) as u64
                    }
                };
                (key, rng.random_range(0..=5u8))
            })
            .collect();
        // Ideal: total handler time over the concurrency, or the busiest key's total.
        let total_ms: u64 = draws.iter().map(|(_, ms)| u64::from(*ms)).sum();
        let mut per_key = std::collections::HashMap::<u64, u64>::new();
        for (k, ms) in &draws {
            *per_key.entry(*k).or_default() += u64::from(*ms);
        }
        let longest_key = per_key.values().copied().max().unwrap_or(0);
        let ideal_ms = (total_ms as f64 / concurrency as f64).max(if concurrency == 1 {
            total_ms as f64
        } else {
            longest_key as f64
        });
        let topic = unique("keys");
        create_topic(&env.bootstrap, &topic, 1).await?;
        let bootstrap = env.bootstrap.clone();
        let t = topic.clone();
        let d = Arc::new(draws);
        let d2 = d.clone();
        let d3 = d.clone();
        tokio::task::spawn_blocking(move || {
            produce(
                &bootstrap,
                &t,
                count,
                Some(0),
                move |i| format!("k{}", d2[i as usize].0),
                move |i| vec![d3[i as usize].1; 16],
            )
        })
        .await??;
        let bench = Bench::new(true);
        let busy = bench.busy.clone();
        let (elapsed, span) = run_worker(env, &topic, count, bench, concurrency, false).await?;
        // The same ideal from the handler times measured in this run (tokio's timer rounds a
        // sleep up to the next millisecond, so a handler takes a little longer than drawn).
        let busy = busy.lock();
        let measured_total: f64 = busy.values().map(Duration::as_secs_f64).sum();
        let measured_longest = busy.values().map(Duration::as_secs_f64).fold(0.0, f64::max);
        let measured_ideal = (measured_total / concurrency as f64).max(if concurrency == 1 {
            measured_total
        } else {
            measured_longest
        });
        println!(
            "| {name} | {concurrency} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {pc} |",
            elapsed.as_secs_f64(),
            span.as_secs_f64(),
            ideal_ms / 1000.0,
            measured_ideal,
            span.as_secs_f64() / measured_ideal.max(0.001)
        );
    }
    println!("\nelapsed: from the worker's start (group join included) to the last message; handler span: first handler start to last handler end. Ideal: total handler time / concurrency, or the busiest key's total when it is longer, from the drawn latencies and from the handler times measured in the run. Parallel Consumer's figures are its published ones for the same case (key order), not measured here.");
    Ok(())
}

/// Peak RSS (VmHWM) of this process in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn memory(env: &Env) -> anyhow::Result<()> {
    let count: u64 = if env.quick { 20_000 } else { 1_000_000 };
    println!("\n### (c) memory: peak RSS of a worker process over {count} messages (no-op handler, concurrency 256)\n");
    println!("| distinct keys | peak RSS MiB |");
    println!("|---:|---:|");
    let mut peaks = Vec::new();
    for distinct in [count, 1_000] {
        let topic = unique("memory");
        create_topic(&env.bootstrap, &topic, 1).await?;
        let bootstrap = env.bootstrap.clone();
        let t = topic.clone();
        tokio::task::spawn_blocking(move || {
            produce(
                &bootstrap,
                &t,
                count,
                Some(0),
                move |i| format!("key-{}", i % distinct),
                |_| vec![0u8; 100],
            )
        })
        .await??;
        let exe = std::env::current_exe()?;
        let output = tokio::process::Command::new(exe)
            .args(["--memory-child", &env.bootstrap, &topic, &count.to_string()])
            .output()
            .await?;
        if !output.status.success() {
            bail!(
                "memory child failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let kib: u64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .context("child's peak RSS")?;
        peaks.push(kib);
        println!("| {distinct} | {:.1} |", kib as f64 / 1024.0);
    }
    println!(
        "\ndifference: {:.1} MiB",
        (peaks[0] as f64 - peaks[1] as f64) / 1024.0
    );
    Ok(())
}

fn memory_child(bootstrap: &str, topic: &str, count: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let env = Env {
            bootstrap: bootstrap.to_owned(),
            quick: false,
        };
        run_worker(&env, topic, count, Bench::new(false), 256, false).await
    })?;
    println!("{}", peak_rss_kib());
    Ok(())
}

/// Milliseconds since the epoch, now.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Notes how late each delayed record reached the handler (its start minus
/// `steadfast-deliver-at`), in ms.
#[derive(Debug, Clone, Default)]
struct Lateness(Arc<Mutex<Vec<i64>>>);

impl Handler for Lateness {
    type Message = Payload;
    const GROUP: &'static str = "bench-delays";
    fn handle_message(
        &self,
        _msg: Payload,
        cx: &Context,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
        let due = cx
            .headers()
            .get_str(steadfast::message::headers::DELIVER_AT)
            .and_then(steadfast::message::headers::parse_time_ms);
        let late = due.map(|d| wall_ms() - d);
        let this = self.clone();
        async move {
            this.0.lock().push(late.unwrap_or(i64::MAX));
            Ok(())
        }
    }
}

/// p50, p99 and max of `late` (sorted here).
fn lateness_row(name: &str, late: &mut [i64]) -> (i64, i64, i64) {
    late.sort_unstable();
    let q = |f: f64| late[((late.len() - 1) as f64 * f).round() as usize];
    let (p50, p99, max) = (q(0.5), q(0.99), q(1.0));
    let early = late.iter().filter(|&&l| l < 0).count();
    println!(
        "| {name} | {} | {p50} | {p99} | {max} | {early} |",
        late.len()
    );
    (p50, p99, max)
}

/// The Redis peer: `ZADD` each record scored by its due time, one poller taking what is due
/// (`ZRANGEBYSCORE -inf now LIMIT 0 500`, then `ZREM` each) and sleeping 10 ms when nothing
/// is; returns each record's lateness in ms.
async fn redis_delays(dues: &[i64]) -> anyhow::Result<Vec<i64>> {
    let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("Redis at 127.0.0.1:6379 (start redis-server)")?;
    let key = unique("bench-delays");
    let mut pipe = redis::pipe();
    for (i, due) in dues.iter().enumerate() {
        pipe.zadd(&key, i, *due).ignore();
    }
    let () = pipe.query_async(&mut conn).await?;
    let mut late = Vec::with_capacity(dues.len());
    let deadline = Instant::now() + Duration::from_secs(120);
    while late.len() < dues.len() && Instant::now() < deadline {
        let now = wall_ms();
        let due: Vec<usize> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(500)
            .query_async(&mut conn)
            .await?;
        if due.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        for i in due {
            let removed: i64 = redis::cmd("ZREM")
                .arg(&key)
                .arg(i)
                .query_async(&mut conn)
                .await?;
            if removed == 1 {
                late.push(wall_ms() - dues[i]);
            }
        }
    }
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
    Ok(late)
}

async fn delays(env: &Env) -> anyhow::Result<()> {
    let (count, spread) = if env.quick {
        (500usize, 1_000..3_001)
    } else {
        (10_000, 1_000..30_001)
    };
    let topic = unique("delays");
    create_topic(&env.bootstrap, &topic, 4).await?;
    let handler = Lateness::default();
    let worker = Worker::builder()
        .brokers(env.bootstrap.clone())
        .topic(&topic)
        .group(unique("bench-delays"))
        .relay_delayed_messages(true)
        .handler(handler.clone())
        .build()?;
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let delays: Vec<i64> = (0..count)
        .map(|_| rng.random_range(spread.clone()))
        .collect();
    let producer = steadfast::Producer::connect(&env.bootstrap);
    let start = wall_ms();
    let dues: Vec<i64> = delays.iter().map(|d| start + d).collect();
    let sends = dues.iter().enumerate().map(|(i, due)| {
        let payload = Payload(vec![0u8; 100]);
        let record = steadfast::Record::of(&payload)
            .map(|r| r.topic(topic.clone()))
            .map_err(anyhow::Error::from);
        let when = std::time::UNIX_EPOCH + Duration::from_millis(*due as u64);
        let producer = producer.clone();
        async move {
            let record = record?.header("i", i.to_string());
            producer.send_record_at(record, when).await?;
            anyhow::Ok(())
        }
    });
    for sent in futures::future::join_all(sends).await {
        sent?;
    }
    let sent_in = wall_ms() - start;
    // The Redis recipe with the same due times, beside the worker (both run on this machine).
    let peer = tokio::spawn({
        let dues = dues.clone();
        async move { redis_delays(&dues).await }
    });
    let deadline =
        Instant::now() + Duration::from_secs(120) + Duration::from_millis(spread.end as u64);
    while handler.0.lock().len() < count {
        if Instant::now() > deadline {
            bail!(
                "{} of {count} delayed records handled",
                handler.0.lock().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    run.await??;
    let mut peer = peer.await??;
    let mut ours = handler.0.lock().clone();
    println!(
        "\n### (d) delayed messages: {count} due {}–{} s after sending (sent in {sent_in} ms), 4 partitions\n",
        spread.start / 1000,
        (spread.end - 1) / 1000
    );
    println!("| path | records | p50 late ms | p99 late ms | max late ms | early |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (_, ours_p99, _) = lateness_row(
        "steadfast: send_record_at → bucket topics → relay in the worker → handler",
        &mut ours,
    );
    let (_, peer_p99, _) = lateness_row(
        "Redis sorted set by due time, one poller (10 ms sleep when idle)",
        &mut peer,
    );
    println!(
        "\nsteadfast / Redis recipe p99 lateness: {:.2} (target: p99 ≤ 1000 ms)",
        ours_p99 as f64 / peer_p99.max(1) as f64
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--memory-child") {
        let count = args.get(4).context("count")?.parse()?;
        return memory_child(&args[2], &args[3], count);
    }
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
        let server = steadfast::server::Server::builder()
            .listen("127.0.0.1:0")
            .data_dir(dir.path())
            .start()
            .await?;
        let env = Env {
            bootstrap: server.bootstrap_servers(),
            quick,
        };
        println!(
            "## steadfast runtime benchmarks ({})",
            if quick { "quick smoke run" } else { "full run" }
        );
        let wants = |case: &str| only.as_deref().is_none_or(|o| o == case);
        if wants("overhead") {
            overhead(&env).await?;
        }
        if wants("keys") {
            keys(&env).await?;
        }
        if wants("memory") {
            memory(&env).await?;
        }
        if wants("delays") {
            delays(&env).await?;
        }
        server.shutdown().await;
        anyhow::Ok(())
    })
}
