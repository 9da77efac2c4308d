//! OffsetCommit: stores a group's offsets durably, fenced by generation (a member of an old
//! generation gets ILLEGAL_GENERATION); answered after the offsets log is fsynced.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::group_error::{authorize, error_code};
use super::reply::{respond, Reply};
use crate::auth::rights::{GroupOp, TopicOp};
use crate::broker::Broker;
use crate::durable::now_ms;
use crate::group::offsets::CommittedOffset;
use crate::protocol::{RequestError, RequestFrame};

/// Longest metadata string kept with an offset.
const MAX_METADATA: usize = 4096;

/// Handles OffsetCommit.
pub(crate) fn handle(broker: &Arc<Broker>, frame: &RequestFrame) -> Result<Reply, RequestError> {
    let request: OffsetCommitRequest = frame.decode()?;
    let group = request.group_id.0.as_str().to_owned();
    let commit_ms = now_ms();
    let mut accepted = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.as_str();
        let known = broker.store.topic(name);
        let readable = frame.access().topic(TopicOp::Read, name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let metadata = p.committed_metadata.as_ref().map(|m| m.as_str().to_owned());
            let error = match &known {
                _ if !readable => ResponseError::TopicAuthorizationFailed.code(),
                None => ResponseError::UnknownTopicOrPartition.code(),
                Some(t) if t.partition(p.partition_index).is_none() => {
                    ResponseError::UnknownTopicOrPartition.code()
                }
                _ if metadata.as_ref().is_some_and(|m| m.len() > MAX_METADATA) => {
                    ResponseError::OffsetMetadataTooLarge.code()
                }
                _ => {
                    accepted.push((
                        name.to_owned(),
                        p.partition_index,
                        CommittedOffset {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata,
                            commit_ms,
                        },
                    ));
                    0
                }
            };
            partitions.push(
                OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error),
            );
        }
        topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    let mut response = OffsetCommitResponse::default().with_topics(topics);
    let committed = authorize(frame, GroupOp::Use, &group).and_then(|()| {
        broker.groups.commit(
            &group,
            request.generation_id_or_member_epoch,
            request.member_id.as_str(),
            request.group_instance_id.as_ref().map(|s| s.as_str()),
            accepted,
        )
    });
    let file = match committed {
        Ok(file) => file,
        Err(e) => {
            let code = error_code(&e);
            tracing::info!(
                group = %group,
                generation = request.generation_id_or_member_epoch,
                member = %request.member_id.as_str(),
                code,
                error = %e,
                "offset commit refused"
            );
            for t in &mut response.topics {
                for p in &mut t.partitions {
                    p.error_code = code;
                }
            }
            return Ok(Reply::Ready(respond(frame, &response)?));
        }
    };
    let broker = broker.clone();
    let frame = frame.detached();
    Ok(Reply::Later(Box::pin(async move {
        if let Err(e) = broker.syncer.sync(file).await {
            tracing::error!(error = %e, "fsync of committed offsets failed");
            fail_all(&mut response, ResponseError::CoordinatorNotAvailable.code());
        }
        respond(&frame, &response)
    })))
}

fn fail_all(response: &mut OffsetCommitResponse, code: i16) {
    for t in &mut response.topics {
        for p in &mut t.partitions {
            if p.error_code == 0 {
                p.error_code = code;
            }
        }
    }
}
