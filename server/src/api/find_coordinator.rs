//! FindCoordinator: this node coordinates every group (transactions are not served).

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::reply::respond;
use crate::auth::rights::GroupOp;
use crate::broker::{Broker, NODE_ID};
use crate::protocol::{RequestError, RequestFrame};

/// Key type of consumer groups (1 is transactions).
const GROUP_KEY: i8 = 0;

/// Answers a FindCoordinator request.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: FindCoordinatorRequest = frame.decode()?;
    let (host, port) = frame.advertised(&broker.advertised);
    let (host, port) = (StrBytes::from_string(host.to_owned()), port as i32);
    let keys: Vec<&str> = if frame.api_version >= 4 {
        request
            .coordinator_keys
            .iter()
            .map(|k| k.as_str())
            .collect()
    } else {
        vec![request.key.as_str()]
    };
    let error = if request.key_type == GROUP_KEY {
        0
    } else {
        ResponseError::CoordinatorNotAvailable.code()
    };
    let answer = |key: &str| {
        let error = if error == 0 && !frame.access().group(GroupOp::Use, key) {
            ResponseError::GroupAuthorizationFailed.code()
        } else {
            error
        };
        if error == 0 {
            (error, NODE_ID, host.clone(), port)
        } else {
            (error, -1, StrBytes::default(), -1)
        }
    };
    let response = if frame.api_version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(
            request
                .coordinator_keys
                .iter()
                .map(|key| {
                    let (error, node, h, p) = answer(key.as_str());
                    Coordinator::default()
                        .with_key(key.clone())
                        .with_node_id(node.into())
                        .with_host(h)
                        .with_port(p)
                        .with_error_code(error)
                })
                .collect(),
        )
    } else {
        let (error, node, h, p) = answer(keys.first().copied().unwrap_or_default());
        FindCoordinatorResponse::default()
            .with_error_code(error)
            .with_node_id(node.into())
            .with_host(h)
            .with_port(p)
    };
    respond(frame, &response)
}
