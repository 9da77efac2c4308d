//! Produce: validates and appends record batches as the client sent them (compressed stays
//! compressed), then answers — at once, or after an fsync when the data must be durable.
//! A failed write or fsync answers KAFKA_STORAGE_ERROR for the partitions it touched.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::reply::{respond, Reply};
use crate::auth::rights::TopicOp;
use crate::broker::Broker;
use crate::config::FsyncPolicy;
use crate::protocol::{RequestError, RequestFrame};
use crate::storage::batch::{split_batches, BatchError};
use crate::storage::partition::{AppendError, Partition};
use crate::storage::producer_state::SequenceError;

fn error_code(error: &AppendError) -> ResponseError {
    match error {
        AppendError::Corrupt(BatchError::UnsupportedMagic(_)) => {
            ResponseError::UnsupportedForMessageFormat
        }
        AppendError::Corrupt(_) => ResponseError::CorruptMessage,
        AppendError::TooLarge { .. } => ResponseError::MessageTooLarge,
        AppendError::Sequence(SequenceError::OutOfOrder { .. }) => {
            ResponseError::OutOfOrderSequenceNumber
        }
        AppendError::Sequence(SequenceError::StaleEpoch { .. }) => {
            ResponseError::InvalidProducerEpoch
        }
        AppendError::Transactional => ResponseError::InvalidTxnState,
        AppendError::Io(_) => ResponseError::KafkaStorageError,
    }
}

/// Appends every partition's batches now; the reply may wait for an fsync.
pub(crate) fn handle(broker: &Arc<Broker>, frame: &RequestFrame) -> Result<Reply, RequestError> {
    let request: ProduceRequest = frame.decode()?;
    let acks = request.acks;
    // (topic index, partition index, partition, epoch after the append)
    let mut to_sync: Vec<(usize, usize, Arc<Partition>, u64)> = Vec::new();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for topic_data in &request.topic_data {
        let name = topic_data.name.0.as_str();
        let topic = broker.store.topic(name);
        let mut partitions = Vec::with_capacity(topic_data.partition_data.len());
        for data in &topic_data.partition_data {
            let mut response = PartitionProduceResponse::default()
                .with_index(data.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let partition = topic.as_ref().and_then(|t| t.partition(data.index));
            let outcome = if !(-1..=1).contains(&acks) {
                Err(ResponseError::InvalidRequiredAcks)
            } else if request.transactional_id.is_some() {
                Err(ResponseError::TransactionalIdAuthorizationFailed)
            } else if !frame.access().topic(TopicOp::Write, name) {
                Err(ResponseError::TopicAuthorizationFailed)
            } else if let Some(partition) = partition {
                let appended = split_batches(data.records.as_ref().unwrap_or(&bytes::Bytes::new()))
                    .map_err(AppendError::from)
                    .and_then(|batches| partition.append(&batches));
                appended.map_err(|e| {
                    tracing::warn!(topic = name, partition = data.index, error = %e, "produce refused");
                    error_code(&e)
                })
            } else {
                tracing::debug!(
                    topic = name,
                    partition = data.index,
                    "produce to unknown topic or partition"
                );
                Err(ResponseError::UnknownTopicOrPartition)
            };
            response = match outcome {
                Ok(appended) => {
                    if let Some(partition) = partition {
                        let at = (responses.len(), partitions.len());
                        to_sync.push((at.0, at.1, partition.clone(), appended.epoch));
                    }
                    response
                        .with_base_offset(appended.base_offset)
                        .with_log_start_offset(appended.log_start_offset)
                }
                Err(code) => response.with_error_code(code.code()),
            };
            partitions.push(response);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic_data.name.clone())
                .with_partition_responses(partitions),
        );
    }
    if acks == 0 {
        return Ok(Reply::Nothing);
    }
    let must_sync = match broker.config.fsync {
        FsyncPolicy::Always => true,
        FsyncPolicy::Interval(_) => acks == -1,
        FsyncPolicy::Never => false,
    };
    let response = ProduceResponse::default().with_responses(responses);
    if !must_sync || to_sync.is_empty() {
        return Ok(Reply::Ready(respond(frame, &response)?));
    }
    let broker = broker.clone();
    let frame = frame.detached();
    Ok(Reply::Later(Box::pin(async move {
        let mut response = response;
        let syncs = to_sync.iter().map(|(_, _, partition, _)| {
            let syncer = broker.syncer.clone();
            let partition = partition.clone();
            async move { syncer.sync(partition).await }
        });
        let results = futures::future::join_all(syncs).await;
        for ((topic, index, partition, epoch), result) in to_sync.iter().zip(results) {
            // Durable only if the fsync succeeded and no failed fsync cut the data since.
            let failure = match result {
                Err(e) => Some(e.to_string()),
                Ok(()) if partition.epoch() != *epoch => {
                    Some("the data was dropped after a failed fsync".to_owned())
                }
                Ok(()) => None,
            };
            if let Some(reason) = failure {
                tracing::error!(error = %reason, "fsync failed; failing the produce");
                if let Some(p) = response
                    .responses
                    .get_mut(*topic)
                    .and_then(|t| t.partition_responses.get_mut(*index))
                {
                    p.error_code = ResponseError::KafkaStorageError.code();
                    p.base_offset = -1;
                }
            }
        }
        respond(&frame, &response)
    })))
}
