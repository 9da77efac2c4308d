//! Fetch: reads whole batches from each requested partition within the request's byte
//! limits, and long-polls — waiting for new data up to `max_wait_ms` — only while fewer than
//! `min_bytes` are ready. Data that is ready is answered at once. The segment reads run on
//! tokio's blocking pool, never on an async worker.

use std::sync::Arc;
use std::time::Duration;

use futures::future::select_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use tokio::sync::watch;
use tokio::time::Instant;

use super::reply::{respond, Reply};
use crate::auth::rights::TopicOp;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};
use crate::storage::partition::{Partition, ReadError};

/// One requested partition, resolved.
struct Wanted {
    topic_index: usize,
    partition_index: i32,
    partition: Option<Arc<Partition>>,
    /// The user may not read the topic.
    denied: bool,
    fetch_offset: i64,
    max_bytes: usize,
}

/// Starts a fetch; the reply is computed (and possibly waited for) when the connection
/// gets to it.
pub(crate) fn handle(broker: &Arc<Broker>, frame: &RequestFrame) -> Result<Reply, RequestError> {
    let request: FetchRequest = frame.decode()?;
    let mut topic_names: Vec<TopicName> = Vec::with_capacity(request.topics.len());
    let mut wanted = Vec::new();
    for topic in &request.topics {
        let denied = !frame.access().topic(TopicOp::Read, topic.topic.0.as_str());
        let found = broker.store.topic(topic.topic.0.as_str());
        topic_names.push(topic.topic.clone());
        for p in &topic.partitions {
            wanted.push(Wanted {
                topic_index: topic_names.len() - 1,
                partition_index: p.partition,
                denied,
                partition: found
                    .as_ref()
                    .and_then(|t| t.partition(p.partition))
                    .cloned(),
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
            });
        }
    }
    let frame = frame.detached();
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    let wanted = Arc::new(wanted);
    let topic_names = Arc::new(topic_names);
    Ok(Reply::Later(Box::pin(async move {
        let deadline = Instant::now() + max_wait;
        // Subscribe before the first read so no append between read and wait is missed.
        let mut watches: Vec<watch::Receiver<i64>> = wanted
            .iter()
            .filter_map(|w| w.partition.as_ref().map(|p| p.watch_end()))
            .collect();
        loop {
            let gathered = gather_off_thread(&wanted, &topic_names, max_bytes).await;
            let done = gathered.bytes >= min_bytes
                || gathered.has_error
                || watches.is_empty()
                || Instant::now() >= deadline;
            if done {
                let response = FetchResponse::default()
                    .with_throttle_time_ms(0)
                    .with_error_code(0)
                    .with_session_id(0)
                    .with_responses(gathered.topics);
                return respond(&frame, &response);
            }
            let woke = {
                let changed = select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
                tokio::time::timeout_at(deadline, changed)
                    .await
                    .map(|(result, index, _)| (result.is_ok(), index))
            };
            match woke {
                // Deadline reached: the next round answers with what there is.
                Err(_) => continue,
                // The partition is gone (topic deleted): stop watching it.
                Ok((false, index)) => {
                    watches.swap_remove(index);
                }
                Ok((true, _)) => {}
            }
            for w in &mut watches {
                w.borrow_and_update();
            }
        }
    })))
}

/// Runs [`gather`] on the blocking pool: its reads are file I/O, which must not stall the
/// async workers (a read that misses the page cache waits on the disk).
async fn gather_off_thread(
    wanted: &Arc<Vec<Wanted>>,
    names: &Arc<Vec<TopicName>>,
    max_bytes: usize,
) -> Gathered {
    let (w, n) = (Arc::clone(wanted), Arc::clone(names));
    match tokio::task::spawn_blocking(move || gather(&w, &n, max_bytes)).await {
        Ok(gathered) => gathered,
        Err(e) => {
            tracing::error!(error = %e, "fetch read task failed");
            failed(wanted, names, ResponseError::KafkaStorageError)
        }
    }
}

/// Every partition answered with `error`.
fn failed(wanted: &[Wanted], names: &[TopicName], error: ResponseError) -> Gathered {
    let mut topics: Vec<FetchableTopicResponse> = names
        .iter()
        .map(|n| FetchableTopicResponse::default().with_topic(n.clone()))
        .collect();
    for w in wanted {
        topics[w.topic_index]
            .partitions
            .push(empty_partition(w.partition_index).with_error_code(error.code()));
    }
    Gathered {
        topics,
        bytes: 0,
        has_error: true,
    }
}

/// A partition's answer before anything is known about it.
fn empty_partition(partition_index: i32) -> PartitionData {
    PartitionData::default()
        .with_partition_index(partition_index)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_aborted_transactions(None)
        .with_preferred_read_replica((-1).into())
}

struct Gathered {
    topics: Vec<FetchableTopicResponse>,
    bytes: usize,
    has_error: bool,
}

fn gather(wanted: &[Wanted], names: &[TopicName], max_bytes: usize) -> Gathered {
    let mut topics: Vec<FetchableTopicResponse> = names
        .iter()
        .map(|n| FetchableTopicResponse::default().with_topic(n.clone()))
        .collect();
    let mut total = 0usize;
    let mut has_error = false;
    for w in wanted {
        let mut data = empty_partition(w.partition_index);
        match &w.partition {
            _ if w.denied => {
                has_error = true;
                data = data.with_error_code(ResponseError::TopicAuthorizationFailed.code());
            }
            None => {
                has_error = true;
                data = data.with_error_code(ResponseError::UnknownTopicOrPartition.code());
            }
            Some(partition) => {
                let budget = w.max_bytes.min(max_bytes.saturating_sub(total));
                match partition.read(w.fetch_offset, budget, total == 0) {
                    Ok(read) => {
                        total += read.records.len();
                        data = data
                            .with_high_watermark(read.high_watermark)
                            .with_last_stable_offset(read.high_watermark)
                            .with_log_start_offset(read.log_start_offset)
                            .with_records(Some(read.records));
                    }
                    Err(ReadError::OffsetOutOfRange {
                        log_start, log_end, ..
                    }) => {
                        has_error = true;
                        data = data
                            .with_error_code(ResponseError::OffsetOutOfRange.code())
                            .with_high_watermark(log_end)
                            .with_last_stable_offset(log_end)
                            .with_log_start_offset(log_start);
                    }
                    Err(ReadError::Io(e)) => {
                        tracing::error!(error = %e, "fetch read failed");
                        has_error = true;
                        data = data.with_error_code(ResponseError::KafkaStorageError.code());
                    }
                }
            }
        }
        topics[w.topic_index].partitions.push(data);
    }
    Gathered {
        topics,
        bytes: total,
        has_error,
    }
}
