//! DeleteTopics: removes topics and their data, by name or (v6) by topic id.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::reply::respond;
use crate::auth::rights::TopicOp;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};

/// Answers a DeleteTopics request.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: DeleteTopicsRequest = frame.decode()?;
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.0.as_str().to_owned()), uuid::Uuid::nil()))
        .collect();
    targets.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.as_str().to_owned()), t.topic_id)),
    );
    let mut results = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let name = name.or_else(|| broker.store.topic_by_id(id).map(|t| t.name.clone()));
        let result = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))))
            .with_topic_id(id);
        let Some(name) = name else {
            results.push(result.with_error_code(ResponseError::UnknownTopicId.code()));
            continue;
        };
        if !frame.access().topic(TopicOp::Delete, &name) {
            tracing::info!(topic = %name, "delete topic not authorized");
            results.push(result.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
            continue;
        }
        results.push(match broker.store.delete_topic(&name) {
            Ok(Some(topic)) => result.with_topic_id(topic.id),
            Ok(None) => result.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
            Err(e) => {
                tracing::error!(topic = %name, error = %e, "deleting topic failed");
                result
                    .with_error_code(ResponseError::KafkaStorageError.code())
                    .with_error_message(Some(StrBytes::from_string(e.to_string())))
            }
        });
    }
    respond(
        frame,
        &DeleteTopicsResponse::default().with_responses(results),
    )
}
