//! Client subcommands, all through librdkafka: they work against the embedded server and
//! against any Kafka cluster alike.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Where the server is.
#[derive(Debug, Clone, Args)]
pub(crate) struct Connection {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        short = 'b',
        default_value = "127.0.0.1:9092",
        env = "STEADFAST_BOOTSTRAP",
        global = true
    )]
    bootstrap: String,
    /// A librdkafka property, `key=value` (repeatable), such as
    /// `-X security.protocol=SASL_SSL -X sasl.mechanisms=SCRAM-SHA-512`. Environment
    /// variables `STEADFAST_KAFKA_<NAME>` set them too (`STEADFAST_KAFKA_SASL_PASSWORD` is
    /// `sasl.password`); flags win.
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE", value_parser = parse_property, global = true)]
    properties: Vec<(String, String)>,
}

/// Parses `key=value`.
fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{text}`: expected KEY=VALUE")),
    }
}

/// librdkafka properties from `STEADFAST_KAFKA_<NAME>` variables.
fn env_properties() -> Vec<(String, String)> {
    std::env::vars()
        .filter_map(|(var, value)| {
            let name = var.strip_prefix(steadfast::config::KAFKA_ENV_PREFIX)?;
            Some((name.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect()
}

impl Connection {
    /// A client configuration with `bootstrap.servers` and the given properties set.
    pub(crate) fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in self.properties() {
            config.set(key, value);
        }
        config
    }

    /// The librdkafka properties given (`STEADFAST_KAFKA_*` first, then `-X`, so flags win).
    pub(crate) fn properties(&self) -> Vec<(String, String)> {
        let mut all = env_properties();
        all.extend(self.properties.iter().cloned());
        all
    }

    /// The bootstrap servers, as given.
    pub(crate) fn bootstrap(&self) -> &str {
        &self.bootstrap
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

/// Timeout of metadata and admin requests.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// For each partition, the first offset whose timestamp is at or after `ms`; `None` where
/// there is none.
pub(crate) fn offsets_at_time<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[(String, i32)],
    ms: i64,
) -> anyhow::Result<HashMap<(String, i32), Option<i64>>> {
    let mut query = TopicPartitionList::new();
    for (topic, p) in partitions {
        query
            .add_partition_offset(topic, *p, Offset::Offset(ms))
            .with_context(|| format!("querying {topic}/{p}"))?;
    }
    let found = consumer
        .offsets_for_times(query, TIMEOUT)
        .context("looking up offsets by time")?;
    let mut out = HashMap::new();
    for e in found.elements() {
        if let Err(err) = e.error() {
            bail!("offset by time of {}/{}: {err}", e.topic(), e.partition());
        }
        let offset = match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        };
        out.insert((e.topic().to_owned(), e.partition()), offset);
    }
    Ok(out)
}

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

/// How long `steadfast produce` waits for a message's acknowledgement by default.
const PRODUCE_TIMEOUT_MS: &str = "10000";

/// The producer settings of `steadfast produce`: the connection's, with a message timeout of
/// [`PRODUCE_TIMEOUT_MS`] unless one is given. librdkafka's default is 300 s; like every
/// other command, `produce` fails within seconds when the broker cannot be reached.
fn producer_config(connection: &Connection) -> ClientConfig {
    let mut config = connection.config();
    if config.get("message.timeout.ms").is_none() && config.get("delivery.timeout.ms").is_none() {
        config.set("message.timeout.ms", PRODUCE_TIMEOUT_MS);
    }
    config
}

/// Runs `steadfast produce`.
pub(crate) async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let producer: FutureProducer = producer_config(&args.connection)
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
    /// Start at the earliest offset instead of the end. With --group, this applies to
    /// partitions the group has no committed offset for.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when no message arrived for this many milliseconds (0: never stop for idleness).
    #[arg(long, default_value_t = 5000)]
    idle_timeout_ms: u64,
    /// Consume as a member of this consumer group: partitions are assigned by the group,
    /// each printed message's offset is stored and committed automatically, and the
    /// consumer resumes from the group's committed offsets. Without it, every partition is
    /// read and nothing is committed.
    #[arg(long, short = 'g')]
    group: Option<String>,
    /// Session timeout of the group member in milliseconds (heartbeats are sent every
    /// third of it).
    #[arg(long, requires = "group")]
    session_timeout_ms: Option<u32>,
    /// Static membership: the `group.instance.id` of this member. A static member that
    /// restarts within its session timeout gets its partitions back without a rebalance.
    #[arg(long, requires = "group")]
    instance_id: Option<String>,
    /// Interval of automatic offset commits in milliseconds (default: librdkafka's, 5000).
    #[arg(long, requires = "group")]
    auto_commit_interval_ms: Option<u32>,
    /// Partition assignment strategy: `range`, `roundrobin` or `cooperative-sticky`
    /// (default: librdkafka's, `range,roundrobin`).
    #[arg(long, requires = "group")]
    assignment_strategy: Option<String>,
}

/// Runs `steadfast consume`: prints `partition/offset<TAB>key<TAB>value` lines, one per
/// message, flushing each line. Without `--group` it reads every partition; with `--group`
/// it subscribes as a group member and commits what it printed. Ctrl-C or SIGTERM stops it
/// cleanly (with `--group`: final commit, then the member leaves the group).
pub(crate) async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    // Installed before the first message, so a signal never kills the process mid-way.
    let mut shutdown = ShutdownSignals::install()?;
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.recv().await;
            stop.store(true, Ordering::SeqCst);
        })
    };
    let result = tokio::task::spawn_blocking(move || consume_blocking(args, &stop)).await;
    signals.abort();
    result?
}

/// Logs group events of the CLI consumer to standard error.
#[derive(Debug, Default)]
struct GroupLog {
    /// Consumes without a group of the user's (assigned partitions, nothing committed): the
    /// tool's own group id is only what librdkafka needs to assign, and errors about it
    /// (a user without rights to it) do not matter.
    group_unused: bool,
}

impl GroupLog {
    /// Whether `error` is about the group this consumer does not use.
    fn is_unused_group_error(&self, error: &KafkaError) -> bool {
        self.group_unused && steadfast::dlq::is_group_error(error)
    }
}

impl rdkafka::ClientContext for GroupLog {
    fn error(&self, error: KafkaError, reason: &str) {
        if self.is_unused_group_error(&error) {
            tracing::debug!(%error, reason, "kafka client error about the unused group");
        } else {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for GroupLog {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => eprintln!("assigned: {}", partition_list(tpl)),
            Rebalance::Revoke(tpl) => eprintln!("revoked: {}", partition_list(tpl)),
            Rebalance::Error(e) => eprintln!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => eprintln!("warning: offset commit failed: {e}"),
        }
    }
}

/// `topic[0,1,2] other[3]`, for assignment logs.
pub(crate) fn partition_list(tpl: &TopicPartitionList) -> String {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for e in tpl.elements() {
        by_topic
            .entry(e.topic().to_owned())
            .or_default()
            .push(e.partition());
    }
    if by_topic.is_empty() {
        return "(none)".to_owned();
    }
    by_topic
        .into_iter()
        .map(|(topic, mut ps)| {
            ps.sort_unstable();
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{topic}[{}]", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn consume_blocking(args: ConsumeArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut config = args.connection.config();
    config
        .set("enable.partition.eof", "false")
        .set("enable.auto.offset.store", "false");
    match &args.group {
        Some(group) => {
            config
                .set("group.id", group)
                .set("enable.auto.commit", "true")
                .set(
                    "auto.offset.reset",
                    if args.from_beginning {
                        "earliest"
                    } else {
                        "latest"
                    },
                );
            if let Some(ms) = args.session_timeout_ms {
                config
                    .set("session.timeout.ms", ms.to_string())
                    .set("heartbeat.interval.ms", (ms / 3).max(1).to_string());
            }
            if let Some(id) = &args.instance_id {
                config.set("group.instance.id", id);
            }
            if let Some(ms) = args.auto_commit_interval_ms {
                config.set("auto.commit.interval.ms", ms.to_string());
            }
            if let Some(strategy) = &args.assignment_strategy {
                config.set("partition.assignment.strategy", strategy);
            }
        }
        None => {
            // librdkafka needs a group id to assign partitions; no offsets are committed.
            config
                .set("group.id", "steadfast-cli-consume")
                .set("enable.auto.commit", "false");
        }
    }
    let consumer: BaseConsumer<GroupLog> = config
        .create_with_context(GroupLog {
            group_unused: args.group.is_none(),
        })
        .context("creating the consumer")?;
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
    if let Some(group) = &args.group {
        consumer
            .subscribe(&[&args.topic])
            .with_context(|| format!("subscribing to {} as a member of {group}", args.topic))?;
    } else {
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
    }
    let outcome = consume_loop(&consumer, &args, stop);
    let mut result = outcome.map(|seen| eprintln!("consumed {seen} message(s)"));
    if let Some(group) = &args.group {
        // Commit what was printed, then close (the member leaves the group on drop).
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("final commit for group {group}"));
                result = result.and(Err(e));
            }
        }
        drop(consumer);
        match &args.instance_id {
            // Static members do not leave: a restart within the session timeout keeps the
            // assignment without a rebalance.
            Some(id) => eprintln!(
                "closed; static member {id} keeps its place in group {group} until its session times out"
            ),
            None => eprintln!("left group {group}"),
        }
    }
    result
}

/// Polls and prints until the count, the idle timeout or a stop signal; returns how many
/// messages were printed.
fn consume_loop(
    consumer: &BaseConsumer<GroupLog>,
    args: &ConsumeArgs,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut seen = 0u64;
    let idle = (args.idle_timeout_ms > 0).then(|| Duration::from_millis(args.idle_timeout_ms));
    let mut last = std::time::Instant::now();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while args.count.is_none_or(|n| seen < n) && idle.is_none_or(|idle| last.elapsed() < idle) {
        if stop.load(Ordering::SeqCst) {
            eprintln!("stopping on signal");
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) if consumer.context().is_unused_group_error(&e) => {}
            Some(Err(e)) if args.group.is_some() && !is_fatal(consumer, &e) => {
                eprintln!("warning: {e}");
            }
            Some(Err(e)) => bail!("consume failed: {e}"),
            Some(Ok(m)) => {
                // Escaped and hex where needed, so that a record cannot drive the terminal
                // nor add a column or a line.
                let key = m.key().map(crate::text::shown).unwrap_or_default();
                let value = m.payload().map(crate::text::shown).unwrap_or_default();
                writeln!(out, "{}/{}\t{}\t{}", m.partition(), m.offset(), key, value)
                    .and_then(|()| out.flush())
                    .context("writing to standard output")?;
                if args.group.is_some() {
                    // Stored only once printed: the group's commit never runs ahead of output.
                    if let Err(e) = consumer.store_offset_from_message(&m) {
                        eprintln!(
                            "warning: storing offset {}/{}: {e}",
                            m.partition(),
                            m.offset()
                        );
                    }
                }
                seen += 1;
                last = std::time::Instant::now();
            }
        }
    }
    Ok(seen)
}

/// Whether a consume error means the client cannot go on.
fn is_fatal(consumer: &BaseConsumer<GroupLog>, error: &KafkaError) -> bool {
    consumer.client().fatal_error().is_some()
        || matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::Authentication)
        )
}

/// Ctrl-C and (on Unix) SIGTERM, registered when installed.
pub(crate) struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Registers the handlers (the default actions no longer apply from here on).
    pub(crate) fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignals {
                interrupt: signal(SignalKind::interrupt())
                    .context("installing a SIGINT handler")?,
                terminate: signal(SignalKind::terminate())
                    .context("installing a SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(ShutdownSignals {})
        }
    }

    /// Waits for the first signal.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(properties: &[(&str, &str)]) -> Connection {
        Connection {
            bootstrap: "127.0.0.1:9".to_owned(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn produce_gives_up_within_seconds_unless_told_otherwise() {
        let default = producer_config(&connection(&[]));
        assert_eq!(default.get("message.timeout.ms"), Some(PRODUCE_TIMEOUT_MS));
        let given = producer_config(&connection(&[("message.timeout.ms", "60000")]));
        assert_eq!(given.get("message.timeout.ms"), Some("60000"));
        let other_name = producer_config(&connection(&[("delivery.timeout.ms", "60000")]));
        assert_eq!(other_name.get("message.timeout.ms"), None);
    }
}
