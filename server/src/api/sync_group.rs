//! SyncGroup: the leader hands in the assignment; every member gets its part.

use std::sync::Arc;

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::{respond, Reply};
use crate::broker::Broker;
use crate::group::state::SyncResult;
use crate::group::{codes, Pending};
use crate::protocol::{RequestError, RequestFrame};

fn response(result: SyncResult) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_error_code(result.error)
        .with_protocol_type(result.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(result.protocol_name.map(StrBytes::from_string))
        .with_assignment(result.assignment)
}

/// Handles SyncGroup.
pub(crate) fn handle(broker: &Arc<Broker>, frame: &RequestFrame) -> Result<Reply, RequestError> {
    let request: SyncGroupRequest = frame.decode()?;
    let assignments = request
        .assignments
        .iter()
        .map(|a| (a.member_id.as_str().to_owned(), a.assignment.clone()))
        .collect();
    let pending = broker.groups.sync(
        request.group_id.0.as_str(),
        request.generation_id,
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|s| s.as_str()),
        assignments,
    );
    match pending {
        Pending::Now(result) => Ok(Reply::Ready(respond(frame, &response(result))?)),
        Pending::Later(wait) => {
            let frame = frame.detached();
            Ok(Reply::Later(Box::pin(async move {
                let result = wait
                    .await
                    .unwrap_or_else(|_| SyncResult::error(codes::UNKNOWN_MEMBER_ID));
                respond(&frame, &response(result))
            })))
        }
    }
}
