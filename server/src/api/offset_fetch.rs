//! OffsetFetch: a group's committed offsets (-1 where nothing is committed).

use bytes::Bytes;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use kafka_protocol::error::ResponseError;

use super::group_error::{authorize, error_code};
use super::reply::respond;
use crate::auth::rights::{GroupOp, TopicOp};
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};

fn partition(
    index: i32,
    committed: Option<(i64, i32, Option<String>)>,
) -> OffsetFetchResponsePartition {
    let (offset, epoch, metadata) = committed.unwrap_or((-1, -1, Some(String::new())));
    OffsetFetchResponsePartition::default()
        .with_partition_index(index)
        .with_committed_offset(offset)
        .with_committed_leader_epoch(epoch)
        .with_metadata(Some(StrBytes::from_string(metadata.unwrap_or_default())))
        .with_error_code(0)
}

/// Answers an OffsetFetch request (v1-7: one group; topics null = all committed).
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: OffsetFetchRequest = frame.decode()?;
    let group = request.group_id.0.as_str();
    if let Err(e) = authorize(frame, GroupOp::Use, group) {
        let code = error_code(&e);
        // v1 has no top-level error: each asked-for partition carries it.
        let topics = request
            .topics
            .iter()
            .flatten()
            .map(|t| {
                OffsetFetchResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|&p| partition(p, None).with_error_code(code))
                            .collect(),
                    )
            })
            .collect();
        return respond(
            frame,
            &OffsetFetchResponse::default()
                .with_topics(topics)
                .with_error_code(code),
        );
    }
    let access = frame.access();
    let offsets = &broker.groups.offsets;
    let topics = match &request.topics {
        Some(topics) => topics
            .iter()
            .map(|t| {
                let name = t.name.0.as_str();
                let denied = (!access.topic(TopicOp::Describe, name))
                    .then_some(ResponseError::TopicAuthorizationFailed.code());
                OffsetFetchResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|&p| match denied {
                                Some(code) => partition(p, None).with_error_code(code),
                                None => partition(
                                    p,
                                    offsets
                                        .get(group, name, p)
                                        .map(|c| (c.offset, c.leader_epoch, c.metadata)),
                                ),
                            })
                            .collect(),
                    )
            })
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<
                String,
                Vec<OffsetFetchResponsePartition>,
            > = Default::default();
            for (topic, p, c) in offsets.all(group) {
                if !access.topic(TopicOp::Describe, &topic) {
                    continue;
                }
                by_topic
                    .entry(topic)
                    .or_default()
                    .push(partition(p, Some((c.offset, c.leader_epoch, c.metadata))));
            }
            by_topic
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name)))
                        .with_partitions(partitions)
                })
                .collect()
        }
    };
    respond(
        frame,
        &OffsetFetchResponse::default()
            .with_topics(topics)
            .with_error_code(0),
    )
}
