//! Produce: validates and appends record batches as the client sent them (compressed stays
//! compressed), then answers — at once, or after an fsync when the data must be durable.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::{respond, Reply};
use crate::auth::rights::TopicOp;
use crate::broker::Broker;
use crate::config::FsyncPolicy;
use crate::protocol::{RequestError, RequestFrame};
use crate::storage::batch::{split_batches, BatchError};
use crate::storage::partition::AppendError;
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
    let mut to_sync: HashMap<usize, Arc<File>> = HashMap::new();
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
                    if let Some(file) = appended.written_to {
                        to_sync.insert(Arc::as_ptr(&file) as usize, file);
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
        for file in to_sync.into_values() {
            if let Err(e) = broker.syncer.sync(file).await {
                tracing::error!(error = %e, "fsync failed; failing the produce");
                for topic in &mut response.responses {
                    for p in &mut topic.partition_responses {
                        if p.error_code == 0 {
                            p.error_code = ResponseError::KafkaStorageError.code();
                        }
                    }
                }
                break;
            }
        }
        respond(&frame, &response)
    })))
}
