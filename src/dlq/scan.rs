//! Blocking reads through librdkafka: partition counts, watermarks, and reading partitions
//! from a start offset up to the high watermark seen when the read began, with an assigned
//! consumer (no group membership, nothing committed). Call from a blocking thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::error::DlqError;
use super::record::DlqRecord;
use crate::message::Headers;

/// Timeout of one metadata or watermark request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read may go without a record or an end-of-partition before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// A topic and partition.
pub(crate) type Tp = (String, i32);

/// The consumer of the tooling's reads.
pub(crate) type Reader = BaseConsumer<ReaderContext>;

/// The group a reader that reads no group's offsets is in: librdkafka assigns partitions only
/// to a consumer with a `group.id`, and looks up that group's coordinator, which a user
/// without rights to the group is refused (see [`ReaderContext::is_unused_group_error`]).
const UNUSED_GROUP: &str = "steadfast-dlq-reader";

/// Logs client errors through `tracing`, except the end-of-partition events the reads ask
/// for (`enable.partition.eof`), which are not errors here, and, for a reader whose group is
/// not used, the errors about that group.
#[derive(Debug, Default)]
pub(crate) struct ReaderContext {
    /// Reads no group's offsets and commits nothing: errors about its group do not matter.
    group_unused: bool,
}

impl ReaderContext {
    /// Whether `error` is about a group this reader does not use (its coordinator lookup
    /// refused or failing): fetching assigned partitions goes on regardless.
    fn is_unused_group_error(&self, error: &KafkaError) -> bool {
        self.group_unused && is_group_error(error)
    }
}

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if self.is_unused_group_error(&error) {
            tracing::debug!(%error, reason, "kafka client error about the unused group");
        } else if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// A consumer for reads: assigned partitions only, no commits. In `group` when it reads or
/// commits a group's offsets (a replay's progress); with `None` it uses no group, so a
/// listing needs no rights to any group.
pub(crate) fn reader(config: &ClientConfig, group: Option<&str>) -> Result<Reader, DlqError> {
    let mut config = config.clone();
    config
        .set("group.id", group.unwrap_or(UNUSED_GROUP))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    config
        .create_with_context(ReaderContext {
            group_unused: group.is_none(),
        })
        .map_err(|e| DlqError::broker("creating a consumer", e))
}

/// The partitions of `topic`, or [`DlqError::UnknownTopic`]; another error of the topic
/// (not authorized, leader not available) is named as it is (like the CLI's
/// `partitions_of`, which the group tools use).
pub(crate) fn partitions(consumer: &Reader, topic: &str) -> Result<Vec<i32>, DlqError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| DlqError::broker(format!("fetching the metadata of {topic}"), e))?;
    let unknown = || DlqError::UnknownTopic(topic.to_owned());
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(unknown)?;
    match t.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Err(unknown()),
        Some(code) => {
            return Err(DlqError::broker(
                format!("fetching the metadata of {topic}"),
                KafkaError::MetadataFetch(code),
            ))
        }
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if ps.is_empty() {
        return Err(unknown());
    }
    ps.sort_unstable();
    Ok(ps)
}

/// The low and high watermarks of a partition.
pub(crate) fn watermarks(
    consumer: &Reader,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), DlqError> {
    consumer
        .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
        .map_err(|e| DlqError::broker(format!("reading the watermarks of {topic}/{partition}"), e))
}

/// The headers of a delivered record, owned (a null value as an empty one).
pub(crate) fn headers_of(message: &BorrowedMessage<'_>) -> Headers {
    crate::broker::headers_of(message, std::borrow::Cow::Borrowed)
}

/// The positions (in order) of a delivered record's headers that have no value (null).
fn null_headers_of(message: &BorrowedMessage<'_>) -> Vec<usize> {
    message.headers().map_or_else(Vec::new, |borrowed| {
        borrowed
            .iter()
            .enumerate()
            .filter(|(_, h)| h.value.is_none())
            .map(|(i, _)| i)
            .collect()
    })
}

/// A delivered dead-letter record, decoded; null headers stay marked null.
pub(crate) fn record_of(message: &BorrowedMessage<'_>) -> DlqRecord {
    DlqRecord::decode(
        message.topic(),
        message.partition(),
        message.offset(),
        message.timestamp().to_millis(),
        message.key().map(Bytes::copy_from_slice),
        message.payload().map(Bytes::copy_from_slice),
        headers_of(message),
    )
    .with_null_headers(null_headers_of(message))
}

/// Reads every partition in `starts` from its start offset (`None`: the beginning) up to the
/// high watermark it has when the read begins, calling `each` for every record below it.
/// Returns those high watermarks.
pub(crate) fn read_to_end(
    consumer: &Reader,
    starts: &BTreeMap<Tp, Option<i64>>,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<BTreeMap<Tp, i64>, DlqError> {
    let mut highs = BTreeMap::new();
    let mut remaining: BTreeMap<Tp, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), start) in starts {
        let (low, high) = watermarks(consumer, topic, *partition)?;
        highs.insert((topic.clone(), *partition), high);
        let from = start.map_or(low, |s| s.max(low));
        if from >= high {
            continue;
        }
        remaining.insert((topic.clone(), *partition), high);
        assignment
            .add_partition_offset(topic, *partition, Offset::Offset(from))
            .map_err(|e| DlqError::broker("building the assignment", e))?;
    }
    if remaining.is_empty() {
        return Ok(highs);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| DlqError::broker("assigning partitions", e))?;
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        if last_progress.elapsed() > STALL_LIMIT {
            let left: Vec<String> = remaining.keys().map(|(t, p)| format!("{t}/{p}")).collect();
            return Err(DlqError::Timeout(format!(
                "reading {}: nothing arrived for {STALL_LIMIT:?}",
                left.join(", ")
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let tp = (m.topic().to_owned(), m.partition());
                let Some(high) = remaining.get(&tp).copied() else {
                    continue;
                };
                if m.offset() < high {
                    each(&m);
                }
                if m.offset() + 1 >= high {
                    remaining.remove(&tp);
                }
            }
            Some(Err(e)) if consumer.context().is_unused_group_error(&e) => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // The event does not name the topic: ask where every partition stands. A gap
                // before the watermark (compaction, transaction markers) ends here.
                last_progress = Instant::now();
                let positions = consumer
                    .position()
                    .map_err(|e| DlqError::broker("reading positions", e))?;
                for e in positions.elements() {
                    let tp = (e.topic().to_owned(), e.partition());
                    if let (Some(high), Offset::Offset(at)) = (remaining.get(&tp), e.offset()) {
                        if at >= *high {
                            remaining.remove(&tp);
                        }
                    }
                }
            }
            Some(Err(e)) => return Err(DlqError::broker("reading records", e)),
        }
    }
    consumer
        .unassign()
        .map_err(|e| DlqError::broker("unassigning partitions", e))?;
    Ok(highs)
}

/// The record at `offset` of `topic`/`partition` (which must be below the high watermark),
/// or `None` when the log has a gap there.
pub(crate) fn read_one(
    consumer: &Reader,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<DlqRecord>, DlqError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| DlqError::broker("building the assignment", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| DlqError::broker("assigning the partition", e))?;
    let deadline = Instant::now() + STALL_LIMIT;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Ok(m)) if m.offset() == offset => return Ok(Some(record_of(&m))),
            Some(Ok(_)) => return Ok(None),
            Some(Err(e)) => return Err(DlqError::broker("reading the record", e)),
        }
    }
    Err(DlqError::Timeout(format!(
        "reading {topic}/{partition}/{offset}"
    )))
}

/// Whether `error` is about the consumer group only (no right on it, no coordinator yet):
/// harmless to a reader that assigns its partitions itself and never commits, which
/// librdkafka still reports through its group machinery.
pub fn is_group_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
        )
    )
}
