//! Heartbeat: keeps a member's session alive and tells it when to rejoin.

use bytes::Bytes;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::group_error::{authorize, result_code};
use super::reply::respond;
use crate::auth::rights::GroupOp;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};

/// Answers a Heartbeat request.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: HeartbeatRequest = frame.decode()?;
    let group = request.group_id.0.as_str();
    let outcome = authorize(frame, GroupOp::Use, group).and_then(|()| {
        broker.groups.heartbeat(
            group,
            request.generation_id,
            request.member_id.as_str(),
            request.group_instance_id.as_ref().map(|s| s.as_str()),
        )
    });
    respond(
        frame,
        &HeartbeatResponse::default().with_error_code(result_code(&outcome)),
    )
}
