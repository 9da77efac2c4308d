//! ListOffsets: the earliest offset, the latest offset, or the first offset whose record has
//! a timestamp at or after a given time (found through the time index).

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::reply::respond;
use crate::auth::rights::TopicOp;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};

/// Special timestamp asking for the next offset to be written.
const LATEST: i64 = -1;
/// Special timestamp asking for the first offset kept.
const EARLIEST: i64 = -2;

/// Answers a ListOffsets request.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: ListOffsetsRequest = frame.decode()?;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let allowed = frame
            .access()
            .topic(TopicOp::Describe, topic.name.0.as_str());
        let found = broker.store.topic(topic.name.0.as_str());
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let response = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_leader_epoch(-1)
                .with_timestamp(-1)
                .with_offset(-1);
            if !allowed {
                partitions
                    .push(response.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
                continue;
            }
            let Some(partition) = found.as_ref().and_then(|t| t.partition(p.partition_index))
            else {
                partitions
                    .push(response.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            };
            let response = match p.timestamp {
                LATEST => response.with_offset(partition.log_end_offset()),
                EARLIEST => response.with_offset(partition.log_start_offset()),
                ts if ts >= 0 => match partition.offset_for_timestamp(ts) {
                    Ok(Some((offset, timestamp))) => {
                        response.with_offset(offset).with_timestamp(timestamp)
                    }
                    Ok(None) => response,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        // A stored batch that does not decode, or inflates past the bound.
                        tracing::warn!(error = %e, "offset lookup by timestamp hit a bad batch");
                        response.with_error_code(ResponseError::CorruptMessage.code())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "offset lookup by timestamp failed");
                        response.with_error_code(ResponseError::KafkaStorageError.code())
                    }
                },
                _ => response.with_error_code(ResponseError::InvalidRequest.code()),
            };
            partitions.push(response);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    respond(frame, &ListOffsetsResponse::default().with_topics(topics))
}
