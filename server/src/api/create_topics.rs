//! CreateTopics: creates topics with a partition count and optional config overrides.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;

use super::reply::respond;
use crate::auth::rights::TopicOp;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};
use crate::storage::CreateTopicError;

fn error_code(error: &CreateTopicError) -> ResponseError {
    match error {
        CreateTopicError::InvalidName(_) => ResponseError::InvalidTopicException,
        CreateTopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
        CreateTopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        CreateTopicError::InvalidConfig(_) => ResponseError::InvalidConfig,
        CreateTopicError::Storage(_) => ResponseError::KafkaStorageError,
    }
}

/// Answers a CreateTopics request.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: CreateTopicsRequest = frame.decode()?;
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.as_str();
        let partitions = match (topic.num_partitions, topic.assignments.len()) {
            (-1, 0) => broker.config.default_partitions,
            (-1, assigned) => assigned as i32,
            (n, _) => n,
        };
        let configs: BTreeMap<String, String> = topic
            .configs
            .iter()
            .filter_map(|c| {
                Some((
                    c.name.as_str().to_owned(),
                    c.value.as_ref()?.as_str().to_owned(),
                ))
            })
            .collect();
        let result = CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(None);
        let outcome = if !frame.access().topic(TopicOp::Create, name) {
            Err((
                ResponseError::TopicAuthorizationFailed,
                format!("not authorized to create topic `{name}`"),
            ))
        } else if !matches!(topic.replication_factor, -1 | 1) {
            Err((
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {} is impossible on a single node; use 1 or -1",
                    topic.replication_factor
                ),
            ))
        } else if request.validate_only {
            broker
                .store
                .validate_create(name, partitions, &configs)
                .map(|_| uuid::Uuid::nil())
                .map_err(|e| (error_code(&e), e.to_string()))
        } else {
            broker
                .store
                .create_topic(name, partitions, configs)
                .map(|t| t.id)
                .map_err(|e| (error_code(&e), e.to_string()))
        };
        results.push(match outcome {
            Ok(id) => result.with_topic_id(id),
            Err((code, message)) => {
                tracing::info!(topic = name, error = %message, "create topic refused");
                result
                    .with_error_code(code.code())
                    .with_error_message(Some(StrBytes::from_string(message)))
            }
        });
    }
    respond(frame, &CreateTopicsResponse::default().with_topics(results))
}
