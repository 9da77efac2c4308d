//! What the console reads of the cluster, blocking (run on the blocking pool): topics with
//! their log ends, and consumer groups.

use anyhow::Context as _;
use rdkafka::consumer::Consumer;

use crate::client::{Connection, TIMEOUT};
use crate::groups::tool_consumer;

/// The suffix of dead-letter topics (`orders` → `orders.dlq`, the runtime's default).
pub(crate) const DLQ_SUFFIX: &str = ".dlq";

/// A topic: its partitions' offsets summed.
#[derive(Debug, Clone)]
pub(crate) struct TopicRow {
    /// Name.
    pub(crate) name: String,
    /// Partition count.
    pub(crate) partitions: usize,
    /// Records in the log now (log ends minus log starts).
    pub(crate) records: i64,
    /// Log ends summed: what rates are measured on.
    pub(crate) log_end: i64,
}

impl TopicRow {
    /// Whether this is a dead-letter topic.
    pub(crate) fn is_dead_letter(&self) -> bool {
        self.name.ends_with(DLQ_SUFFIX)
    }
}

/// A consumer group as listed.
#[derive(Debug, Clone)]
pub(crate) struct GroupRow {
    /// Group id.
    pub(crate) name: String,
    /// State (`Stable`, `Empty`, …).
    pub(crate) state: String,
    /// Member count.
    pub(crate) members: usize,
}

/// Every topic except internal ones (`__…`), sorted by name.
pub(crate) fn topics(connection: &Connection) -> anyhow::Result<Vec<TopicRow>> {
    let admin = tool_consumer(connection, None)?;
    let metadata = admin
        .fetch_metadata(None, TIMEOUT)
        .context("fetching metadata")?;
    let mut rows = Vec::new();
    for t in metadata.topics() {
        if t.name().starts_with("__") || t.error().is_some() {
            continue;
        }
        let (mut records, mut log_end) = (0, 0);
        for p in t.partitions() {
            let (low, high) = admin
                .fetch_watermarks(t.name(), p.id(), TIMEOUT)
                .with_context(|| format!("fetching the offsets of {}/{}", t.name(), p.id()))?;
            records += (high - low).max(0);
            log_end += high.max(0);
        }
        rows.push(TopicRow {
            name: t.name().to_owned(),
            partitions: t.partitions().len(),
            records,
            log_end,
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// Every consumer group (protocol type `consumer`, or none yet), sorted by name.
pub(crate) fn groups(connection: &Connection) -> anyhow::Result<Vec<GroupRow>> {
    let admin = tool_consumer(connection, None)?;
    let list = admin
        .fetch_group_list(None, TIMEOUT)
        .context("listing groups")?;
    let mut rows: Vec<GroupRow> = list
        .groups()
        .iter()
        .filter(|g| g.protocol_type().is_empty() || g.protocol_type() == "consumer")
        .map(|g| GroupRow {
            name: g.name().to_owned(),
            state: g.state().to_owned(),
            members: g.members().len(),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows.dedup_by(|a, b| a.name == b.name);
    Ok(rows)
}
