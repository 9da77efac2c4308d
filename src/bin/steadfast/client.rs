//! Client subcommands, all through librdkafka: they work against the embedded server and
//! against any Kafka cluster alike.

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Where the server is.
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        short = 'b',
        default_value = "127.0.0.1:9092",
        env = "STEADFAST_BOOTSTRAP"
    )]
    bootstrap: String,
}

impl Connection {
    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }
}

/// Options of `steadfast topics`.
#[derive(Debug, Args)]
pub(crate) struct TopicsArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    action: TopicsAction,
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// List topics with their partition counts.
    List,
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: i32,
        /// Topic config overrides, `key=value` (retention.ms, retention.bytes, segment.bytes, max.message.bytes).
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `steadfast topics`.
pub(crate) async fn topics(args: TopicsArgs) -> anyhow::Result<()> {
    match args.action {
        TopicsAction::List => {
            let consumer: BaseConsumer = args.connection.config().create()?;
            let metadata =
                tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, TIMEOUT))
                    .await?
                    .context("fetching metadata")?;
            for topic in metadata.topics() {
                println!(
                    "{}\t{} partition(s)",
                    topic.name(),
                    topic.partitions().len()
                );
            }
        }
        TopicsAction::Create {
            name,
            partitions,
            configs,
        } => {
            let admin: AdminClient<DefaultClientContext> = args.connection.config().create()?;
            let pairs: Vec<(String, String)> = configs
                .iter()
                .map(|c| {
                    c.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .with_context(|| format!("--config `{c}`: expected key=value"))
                })
                .collect::<Result<_, _>>()?;
            let mut topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
            for (k, v) in &pairs {
                topic = topic.set(k, v);
            }
            let results = admin
                .create_topics(
                    [&topic],
                    &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
                )
                .await?;
            for result in results {
                match result {
                    Ok(name) => println!("created {name}"),
                    Err((name, code)) => bail!("creating {name}: {code}"),
                }
            }
        }
        TopicsAction::Delete { name } => {
            let admin: AdminClient<DefaultClientContext> = args.connection.config().create()?;
            for result in admin.delete_topics(&[&name], &AdminOptions::new()).await? {
                match result {
                    Ok(name) => println!("deleted {name}"),
                    Err((name, code)) => bail!("deleting {name}: {code}"),
                }
            }
        }
    }
    Ok(())
}

/// Options of `steadfast produce`.
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    #[command(flatten)]
    connection: Connection,
    /// Topic to produce to.
    #[arg(long, short = 't')]
    topic: String,
    /// Instead of reading standard input, send this many generated messages.
    #[arg(long)]
    count: Option<u64>,
    /// With lines from standard input, split each line at the first occurrence of this
    /// separator into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// Required acknowledgements: 0, 1 or all.
    #[arg(long, default_value = "all")]
    acks: String,
}

/// Runs `steadfast produce`.
pub(crate) async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let producer: FutureProducer = args
        .connection
        .config()
        .set("acks", &args.acks)
        .set("linger.ms", "5")
        .create()?;
    let messages: Vec<(Option<String>, String)> = match args.count {
        Some(n) => (0..n)
            .map(|i| (Some(format!("key-{}", i % 16)), format!("message {i}")))
            .collect(),
        None => {
            let stdin = std::io::stdin();
            let mut out = Vec::new();
            for line in stdin.lock().lines() {
                let line = line?;
                match args
                    .key_separator
                    .as_deref()
                    .and_then(|sep| line.split_once(sep))
                {
                    Some((k, v)) => out.push((Some(k.to_owned()), v.to_owned())),
                    None => out.push((None, line)),
                }
            }
            out
        }
    };
    let mut pending = Vec::with_capacity(messages.len());
    for (key, value) in &messages {
        let mut record = FutureRecord::to(&args.topic).payload(value.as_str());
        if let Some(k) = key {
            record = record.key(k.as_str());
        }
        pending.push(producer.send(record, TIMEOUT));
    }
    let mut sent = 0u64;
    for delivery in futures::future::join_all(pending).await {
        match delivery {
            Ok(_) => sent += 1,
            Err((e, _)) => bail!("delivery failed after {sent} messages: {e}"),
        }
    }
    println!("produced {sent} message(s) to {}", args.topic);
    Ok(())
}

/// Options of `steadfast consume`.
#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    #[command(flatten)]
    connection: Connection,
    /// Topic to read.
    #[arg(long, short = 't')]
    topic: String,
    /// Start at the earliest offset instead of the end.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when no message arrived for this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    idle_timeout_ms: u64,
}

/// Runs `steadfast consume`: reads every partition (no consumer group) and prints
/// `partition/offset key value` lines.
pub(crate) async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || consume_blocking(args)).await?
}

fn consume_blocking(args: ConsumeArgs) -> anyhow::Result<()> {
    let consumer: BaseConsumer = args
        .connection
        .config()
        // librdkafka needs a group id to assign partitions; no offsets are committed.
        .set("group.id", "steadfast-cli-consume")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), TIMEOUT)
        .context("fetching metadata")?;
    let topic = metadata
        .topics()
        .first()
        .with_context(|| format!("topic {} not found", args.topic))?;
    if let Some(err) = topic.error() {
        bail!("topic {}: {:?}", args.topic, err);
    }
    let start = if args.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut assignment = TopicPartitionList::new();
    for p in topic.partitions() {
        assignment.add_partition_offset(&args.topic, p.id(), start)?;
    }
    consumer.assign(&assignment)?;
    let mut seen = 0u64;
    let idle = Duration::from_millis(args.idle_timeout_ms);
    let mut last = std::time::Instant::now();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while args.count.is_none_or(|n| seen < n) && last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) => bail!("consume failed: {e}"),
            Some(Ok(m)) => {
                let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                let value = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
                writeln!(out, "{}/{}\t{}\t{}", m.partition(), m.offset(), key, value)?;
                seen += 1;
                last = std::time::Instant::now();
            }
        }
    }
    out.flush()?;
    eprintln!("consumed {seen} message(s)");
    Ok(())
}
