//! Reading for `steadfast find`: which offsets of each partition to read (from the low to the
//! high watermark read at start, narrowed by the time index when a time range is given) and
//! reading them in offset order with an assigned consumer: no group membership, nothing
//! committed, plain librdkafka, so any Kafka serves. Blocking: call from a blocking thread.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::client::{offsets_at_time, Connection, TIMEOUT};

/// How long a read may go without a record or an end-of-partition event before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// The group id librdkafka needs before it fetches assigned partitions. Nothing is committed
/// under it, and errors about it (no rights to it) are ignored.
const UNUSED_GROUP: &str = "steadfast-cli-find";

/// The consumer of `find`.
pub(crate) type Reader = BaseConsumer<ReaderContext>;

/// Logs client errors, except end-of-partition events (which the read asks for) and errors
/// about the group it does not use.
#[derive(Debug, Default)]
pub(crate) struct ReaderContext;

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if steadfast::dlq::is_group_error(&error) {
            tracing::debug!(%error, reason, "kafka client error about the unused group");
        } else if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer that reads assigned partitions and never commits.
pub(crate) fn reader(connection: &Connection) -> anyhow::Result<Reader> {
    let mut config = connection.config();
    config
        .set("group.id", UNUSED_GROUP)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    config
        .create_with_context(ReaderContext)
        .context("creating the consumer")
}

/// The partitions of `topic`, sorted; an error naming the topic when it does not exist.
pub(crate) fn partitions(consumer: &Reader, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("fetching the metadata of {topic}"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic} not found");
    };
    match t.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => bail!("topic {topic} not found"),
        Some(code) => bail!("topic {topic}: {code}"),
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if ids.is_empty() {
        bail!("topic {topic} not found");
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The offsets `[start, end)` of one partition that a `find` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    /// The partition.
    pub(crate) partition: i32,
    /// The first offset read.
    pub(crate) start: i64,
    /// The offset the read stops before.
    pub(crate) end: i64,
}

impl Range {
    /// How many offsets the range spans.
    pub(crate) fn len(&self) -> u64 {
        u64::try_from(self.end - self.start).unwrap_or(0)
    }
}

/// The range of one partition from its watermarks and, for each end of a time range given,
/// the first offset whose timestamp is at or after that time (`Some(None)`: no such offset).
/// Before the `from` offset every record is older than `from`; the read stops at the
/// `until` offset (the first record at or after `until`).
fn bound(
    partition: i32,
    (low, high): (i64, i64),
    from: Option<Option<i64>>,
    until: Option<Option<i64>>,
) -> Range {
    let start = match from {
        None => low,
        Some(None) => high,
        Some(Some(at)) => at.clamp(low, high),
    };
    let end = match until {
        None | Some(None) => high,
        Some(Some(at)) => at.clamp(start, high),
    };
    Range {
        partition,
        start,
        end: end.max(start),
    }
}

/// The ranges to read of `partitions` of `topic`: from the low to the high watermark read
/// now, narrowed by the time index (ListOffsets by timestamp) to `[from, until)`.
pub(crate) fn ranges(
    consumer: &Reader,
    topic: &str,
    partitions: &[i32],
    from: Option<i64>,
    until: Option<i64>,
) -> anyhow::Result<Vec<Range>> {
    let mut watermarks = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let marks = consumer
            .fetch_watermarks(topic, p, TIMEOUT)
            .with_context(|| format!("reading the watermarks of {topic}/{p}"))?;
        watermarks.push((p, marks));
    }
    let at_from = from
        .map(|ms| partition_offsets_at_time(consumer, topic, partitions, ms))
        .transpose()?;
    let at_until = until
        .map(|ms| partition_offsets_at_time(consumer, topic, partitions, ms))
        .transpose()?;
    let lookup = |found: &Option<HashMap<i32, Option<i64>>>, p: i32| {
        found.as_ref().map(|f| f.get(&p).copied().flatten())
    };
    Ok(watermarks
        .into_iter()
        .map(|(p, marks)| bound(p, marks, lookup(&at_from, p), lookup(&at_until, p)))
        .collect())
}

/// [`offsets_at_time`] of `partitions` of `topic`, by partition.
fn partition_offsets_at_time(
    consumer: &Reader,
    topic: &str,
    partitions: &[i32],
    ms: i64,
) -> anyhow::Result<HashMap<i32, Option<i64>>> {
    let pairs: Vec<(String, i32)> = partitions.iter().map(|&p| (topic.to_owned(), p)).collect();
    Ok(offsets_at_time(consumer, &pairs, ms)?
        .into_iter()
        .map(|((_, p), offset)| (p, offset))
        .collect())
}

/// Whether a read goes on after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Read the next record.
    Continue,
    /// Stop reading (the limit is reached).
    Stop,
}

/// Reads `range` of `topic` in offset order, calling `each` for every record in it, until
/// the range ends or `each` says [`Flow::Stop`]. Returns the last flow.
pub(crate) fn read_range(
    consumer: &Reader,
    topic: &str,
    range: Range,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<Flow>,
) -> anyhow::Result<Flow> {
    if range.start >= range.end {
        return Ok(Flow::Continue);
    }
    let p = range.partition;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, p, Offset::Offset(range.start))
        .with_context(|| format!("assigning {topic}/{p}"))?;
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning {topic}/{p}"))?;
    let mut flow = Flow::Continue;
    let mut last_progress = Instant::now();
    loop {
        if last_progress.elapsed() > STALL_LIMIT {
            bail!(
                "reading {topic}/{p}: nothing arrived for {}s",
                STALL_LIMIT.as_secs()
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.partition() != p || m.offset() < range.start {
                    continue;
                }
                if m.offset() >= range.end {
                    break;
                }
                flow = each(&m)?;
                if flow == Flow::Stop || m.offset() + 1 >= range.end {
                    break;
                }
            }
            // At the log end, which is at or past the high watermark read at start, so past
            // the range's end (a gap in the log, such as transaction markers, can end a range
            // before its last offset is seen).
            Some(Err(KafkaError::PartitionEOF(eof))) if eof == p => break,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) if steadfast::dlq::is_group_error(&e) => {}
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {topic}/{p}")),
        }
    }
    consumer
        .unassign()
        .with_context(|| format!("unassigning {topic}/{p}"))?;
    Ok(flow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_index_offsets_narrow_the_watermarks() {
        let r = |start, end| Range {
            partition: 3,
            start,
            end,
        };
        // No time range: low to high.
        assert_eq!(bound(3, (5, 50), None, None), r(5, 50));
        // From and until found.
        assert_eq!(bound(3, (5, 50), Some(Some(10)), Some(Some(20))), r(10, 20));
        // Nothing at or after `from`: nothing to read.
        assert_eq!(bound(3, (5, 50), Some(None), None), r(50, 50));
        // Nothing at or after `until`: read to the high watermark.
        assert_eq!(bound(3, (5, 50), Some(Some(10)), Some(None)), r(10, 50));
        // Offsets outside the watermarks (written meanwhile, deleted meanwhile) are clamped.
        assert_eq!(bound(3, (5, 50), Some(Some(2)), Some(Some(60))), r(5, 50));
        assert_eq!(bound(3, (5, 50), Some(Some(40)), Some(Some(30))), r(40, 40));
        assert_eq!(r(40, 40).len(), 0);
        assert_eq!(r(10, 20).len(), 10);
    }
}
