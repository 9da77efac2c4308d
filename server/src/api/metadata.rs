//! Metadata: this node as the only broker and leader of every partition; topics, created on
//! first use when auto-creation is on.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::reply::respond;
use crate::auth::rights::TopicOp;
use crate::broker::{Broker, NODE_ID};
use crate::protocol::{RequestError, RequestFrame};
use crate::storage::{is_valid_topic_name, CreateTopicError, Topic};

/// "Authorized operations not requested".
const NO_AUTHORIZED_OPERATIONS: i32 = i32::MIN;

pub(crate) fn topic_entry(topic: &Topic) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(0)
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_is_internal(false)
        .with_topic_authorized_operations(NO_AUTHORIZED_OPERATIONS)
        .with_partitions(
            (0..topic.partitions.len() as i32)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_error_code(0)
                        .with_partition_index(p)
                        .with_leader_id(NODE_ID.into())
                        .with_leader_epoch(-1)
                        .with_replica_nodes(vec![NODE_ID.into()])
                        .with_isr_nodes(vec![NODE_ID.into()])
                        .with_offline_replicas(vec![])
                })
                .collect(),
        )
}

fn error_entry(
    name: Option<String>,
    topic_id: uuid::Uuid,
    error: ResponseError,
) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error.code())
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
        .with_topic_id(topic_id)
        .with_topic_authorized_operations(NO_AUTHORIZED_OPERATIONS)
}

/// Answers a Metadata request.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: MetadataRequest = frame.decode()?;
    let version = frame.api_version;
    let all_topics = match &request.topics {
        None => true,
        Some(list) => version == 0 && list.is_empty(),
    };
    let may_create =
        broker.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    let access = frame.access();
    let topics = if all_topics {
        broker
            .store
            .topics()
            .iter()
            .filter(|t| access.topic(TopicOp::Describe, &t.name))
            .map(|t| topic_entry(t))
            .collect()
    } else {
        let mut out = Vec::new();
        // Each topic is answered once however often it is named: a request naming one big
        // topic many times must not multiply the response.
        let mut seen = HashSet::new();
        for wanted in request.topics.unwrap_or_default() {
            let name = wanted.name.as_ref().map(|n| n.0.as_str().to_owned());
            if !seen.insert((name.clone(), name.is_none().then_some(wanted.topic_id))) {
                continue;
            }
            let found = match &name {
                Some(name) => broker.store.topic(name),
                None => broker.store.topic_by_id(wanted.topic_id),
            };
            let visible = |name: &str| access.topic(TopicOp::Describe, name);
            let entry = match (found, name) {
                (Some(topic), _) if !visible(&topic.name) => error_entry(
                    Some(topic.name.clone()).filter(|_| wanted.name.is_some()),
                    wanted.topic_id,
                    ResponseError::TopicAuthorizationFailed,
                ),
                (None, Some(name)) if !visible(&name) => error_entry(
                    Some(name),
                    wanted.topic_id,
                    ResponseError::TopicAuthorizationFailed,
                ),
                (Some(topic), _) => topic_entry(&topic),
                (None, Some(name)) if !is_valid_topic_name(&name) => error_entry(
                    Some(name),
                    wanted.topic_id,
                    ResponseError::InvalidTopicException,
                ),
                (None, Some(name)) if may_create && access.topic(TopicOp::Create, &name) => {
                    match broker.store.create_topic(
                        &name,
                        broker.config.default_partitions,
                        BTreeMap::new(),
                    ) {
                        Ok(topic) => topic_entry(&topic),
                        Err(CreateTopicError::AlreadyExists(_)) => {
                            match broker.store.topic(&name) {
                                Some(topic) => topic_entry(&topic),
                                None => error_entry(
                                    Some(name),
                                    wanted.topic_id,
                                    ResponseError::UnknownTopicOrPartition,
                                ),
                            }
                        }
                        Err(e) => {
                            tracing::warn!(topic = %name, error = %e, "auto-creating topic failed");
                            error_entry(
                                Some(name),
                                wanted.topic_id,
                                ResponseError::UnknownServerError,
                            )
                        }
                    }
                }
                (None, name) => {
                    let error = if name.is_some() {
                        ResponseError::UnknownTopicOrPartition
                    } else {
                        ResponseError::UnknownTopicId
                    };
                    error_entry(name, wanted.topic_id, error)
                }
            };
            out.push(entry);
        }
        out
    };
    let (host, port) = frame.advertised(&broker.advertised);
    let response = MetadataResponse::default()
        .with_throttle_time_ms(0)
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(NODE_ID.into())
            .with_host(StrBytes::from_string(host.to_owned()))
            .with_port(port as i32)
            .with_rack(None)])
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.clone())))
        .with_controller_id(NODE_ID.into())
        .with_topics(topics)
        .with_cluster_authorized_operations(NO_AUTHORIZED_OPERATIONS);
    respond(frame, &response)
}
