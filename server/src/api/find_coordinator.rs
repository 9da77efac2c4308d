//! FindCoordinator: this node coordinates every group (transactions are not served).

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::respond;
use crate::broker::{Broker, NODE_ID};
use crate::protocol::{RequestError, RequestFrame};

/// Key type of consumer groups (1 is transactions).
const GROUP_KEY: i8 = 0;

/// Answers a FindCoordinator request.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: FindCoordinatorRequest = frame.decode()?;
    let host = StrBytes::from_string(broker.advertised_host.clone());
    let port = broker.advertised_port as i32;
    let error = if request.key_type == GROUP_KEY {
        0
    } else {
        ResponseError::CoordinatorNotAvailable.code()
    };
    let (node, h, p) = if error == 0 {
        (NODE_ID, host.clone(), port)
    } else {
        (-1, StrBytes::default(), -1)
    };
    let response = if frame.api_version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(
            request
                .coordinator_keys
                .iter()
                .map(|key| {
                    Coordinator::default()
                        .with_key(key.clone())
                        .with_node_id(node.into())
                        .with_host(h.clone())
                        .with_port(p)
                        .with_error_code(error)
                })
                .collect(),
        )
    } else {
        FindCoordinatorResponse::default()
            .with_error_code(error)
            .with_node_id(node.into())
            .with_host(h)
            .with_port(p)
    };
    respond(frame, &response)
}
