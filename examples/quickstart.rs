//! Quickstart: the embedded Kafka-protocol server in-process, a burst of order events (poison
//! pills, duplicates, out-of-order versions, a flaky payment dependency), a steadfast worker
//! with in-place retries, a retry tier and a dead-letter topic, and a summary at the end.
//!
//! `cargo run --release --example quickstart` — finishes by itself in a few seconds.
//! Set `STEADFAST_DATA_DIR` to keep the server's data somewhere other than a temp directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use steadfast::server::Server;
use steadfast::{Context, HandlerError, Message as _, Retry, Worker};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = order_id, version = updated_at, id = event_id)]
struct OrderUpdated {
    event_id: String,
    order_id: String,
    updated_at: i64,
    amount_cents: i64,
}

#[derive(Debug, Default)]
struct Tally {
    handled: u64,
    retried_in_place: u64,
    duplicates: u64,
    stale: u64,
    seen_ids: HashSet<String>,
    versions: HashMap<String, i64>,
}

/// Bills orders; the payment dependency fails now and then, and negative amounts are invalid.
#[derive(steadfast::Handler)]
#[handler(message = OrderUpdated, group = "billing")]
struct Billing {
    tally: Arc<Mutex<Tally>>,
}

impl Billing {
    async fn handle(&self, msg: OrderUpdated, cx: &Context) -> Result<(), HandlerError> {
        if msg.amount_cents < 0 {
            return Err(HandlerError::permanent(format!(
                "negative amount {}",
                msg.amount_cents
            )));
        }
        // A flaky payment provider: every 7th order fails on its first attempt, and order 13
        // keeps failing until its retry tier gives up.
        let n: u64 = msg
            .order_id
            .trim_start_matches("order-")
            .parse()
            .unwrap_or(0);
        if (n % 7 == 3 && cx.attempt() == 1) || n == 13 {
            self.tally.lock().retried_in_place += 1;
            return Err(HandlerError::transient("payment provider timed out"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut t = self.tally.lock();
        if let Some(id) = msg.id() {
            if !t.seen_ids.insert(id) {
                t.duplicates += 1;
                return Ok(());
            }
        }
        let version = msg.version().unwrap_or_default();
        let last = t.versions.entry(msg.order_id.clone()).or_insert(i64::MIN);
        if version <= *last {
            t.stale += 1;
            return Ok(());
        }
        *last = version;
        t.handled += 1;
        Ok(())
    }
}

/// The burst: 500 updates over 50 orders, with duplicates, out-of-order versions and two
/// kinds of poison pill (an invalid amount and bytes that are not JSON).
fn burst() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..500i64 {
        let order = i % 50;
        let mut event = OrderUpdated {
            event_id: format!("evt-{i}"),
            order_id: format!("order-{order}"),
            updated_at: 1_000 + i,
            amount_cents: 100 + i,
        };
        if i % 97 == 5 {
            event.amount_cents = -1; // poison pill
        }
        let bytes = serde_json::to_vec(&event).unwrap_or_default();
        out.push((event.order_id.clone(), bytes.clone()));
        if i % 41 == 0 {
            out.push((event.order_id.clone(), bytes)); // a duplicate delivery
        }
        if i % 53 == 10 {
            let old = OrderUpdated {
                updated_at: event.updated_at - 200,
                event_id: format!("evt-{i}-late"),
                ..event
            };
            out.push((
                old.order_id.clone(),
                serde_json::to_vec(&old).unwrap_or_default(),
            )); // out of order
        }
    }
    out.push(("order-7".into(), b"{\"order_id\": oops".to_vec())); // not JSON
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let temp = tempfile::tempdir()?;
    let data_dir = std::env::var("STEADFAST_DATA_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| temp.path().to_path_buf());
    let server = Server::builder()
        .listen("127.0.0.1:0")
        .data_dir(&data_dir)
        .start()
        .await
        .context("starting the embedded server")?;
    let bootstrap = server.bootstrap_servers();
    println!(
        "embedded server on {bootstrap} (data in {})",
        data_dir.display()
    );

    let topic = OrderUpdated::TOPIC;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        if let Err((name, code)) = result {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating {name}: {code}");
            }
        }
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    let events = burst();
    for (key, payload) in &events {
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    println!(
        "produced {} order events to {topic} (4 partitions)",
        events.len()
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let worker = Worker::builder()
        .brokers(bootstrap.clone())
        .handler(Billing {
            tally: tally.clone(),
        })
        .concurrency(32)
        .retry(Retry::exponential(
            2,
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
        .retry_topics([Duration::from_millis(500)])
        .dead_letter_topic("orders.dlq")
        .commit_interval(Duration::from_millis(200))
        .build()?;
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));

    let reader: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "quickstart-dlq-reader")
        .create()?;
    // Every event ends handled, routed to the DLQ, or seen as duplicate or stale.
    let started = Instant::now();
    let expected = events.len() as u64;
    loop {
        let finished = {
            let t = tally.lock();
            t.handled + t.duplicates + t.stale
        };
        let dead_total = dead_letter_count(&reader);
        if finished + dead_total >= expected {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {finished} handled and {dead_total} dead-lettered of {expected} after 60 s"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let stats = run.await??;
    let dead = dead_letters_by_class(&reader, dead_letter_count(&reader))?;
    let took = started.elapsed();
    // Every client is closed while the server still answers: a librdkafka client that outlives
    // its broker keeps reconnecting (and logging errors) until it is destroyed, and a
    // consumer's close leaves its group through the broker. Destroying a client waits on the
    // broker, which runs on this runtime: off the async worker thread.
    tokio::task::block_in_place(|| {
        drop(reader);
        drop(producer);
        drop(admin);
    });
    server.shutdown().await;

    let t = std::mem::take(&mut *tally.lock());
    println!("\nfinished in {:.1} s\n", took.as_secs_f64());
    println!("| outcome                          | count |");
    println!("|----------------------------------|------:|");
    println!("| handled                          | {:>5} |", t.handled);
    println!(
        "| retried in place (failed tries)  | {:>5} |",
        t.retried_in_place
    );
    println!(
        "| sent to orders.billing.retry.1   | {:>5} |",
        stats.routed_to_tier
    );
    for (reason, n) in &dead {
        println!("| dead-lettered: {reason:<17} | {n:>5} |");
    }
    println!("| duplicates seen                  | {:>5} |", t.duplicates);
    println!("| stale versions seen              | {:>5} |", t.stale);
    Ok(())
}

/// How many records the dead-letter topic holds.
fn dead_letter_count(reader: &rdkafka::consumer::BaseConsumer) -> u64 {
    use rdkafka::consumer::Consumer;
    (0..4)
        .filter_map(|p| {
            reader
                .fetch_watermarks("orders.dlq", p, Duration::from_secs(5))
                .ok()
        })
        .map(|(low, high)| u64::try_from(high - low).unwrap_or(0))
        .sum()
}

/// The dead-lettered records, counted by error class.
fn dead_letters_by_class(
    reader: &rdkafka::consumer::BaseConsumer,
    total: u64,
) -> anyhow::Result<BTreeMap<String, u64>> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::{Headers, Message};
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset("orders.dlq", p, rdkafka::Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let mut counts = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while seen < total && Instant::now() < deadline {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            seen += 1;
            let class = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == steadfast::policy::headers::ERROR_CLASS)
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
                .unwrap_or_default();
            *counts.entry(class).or_default() += 1;
        }
    }
    Ok(counts)
}
