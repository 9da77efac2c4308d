//! SyncGroup: the leader hands in the assignment; every member gets its part.

use std::sync::Arc;

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::group_error::{authorize, error_code};
use super::reply::{respond, Reply};
use crate::auth::rights::GroupOp;
use crate::broker::Broker;
use crate::group::state::SyncOutcome;
use crate::group::{GroupError, Pending};
use crate::protocol::{RequestError, RequestFrame};

/// The answer to a SyncGroup: the member's assignment, or why not.
fn response(outcome: SyncOutcome) -> SyncGroupResponse {
    match outcome {
        Ok(synced) => SyncGroupResponse::default()
            .with_error_code(0)
            .with_protocol_type(synced.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(synced.protocol_name.map(StrBytes::from_string))
            .with_assignment(synced.assignment),
        Err(e) => SyncGroupResponse::default().with_error_code(error_code(&e)),
    }
}

/// Handles SyncGroup.
pub(crate) fn handle(broker: &Arc<Broker>, frame: &RequestFrame) -> Result<Reply, RequestError> {
    let request: SyncGroupRequest = frame.decode()?;
    let assignments = request
        .assignments
        .iter()
        .map(|a| (a.member_id.as_str().to_owned(), a.assignment.clone()))
        .collect();
    if let Err(e) = authorize(frame, GroupOp::Use, request.group_id.0.as_str()) {
        return Ok(Reply::Ready(respond(frame, &response(Err(e)))?));
    }
    let pending = broker.groups.sync(
        request.group_id.0.as_str(),
        request.generation_id,
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|s| s.as_str()),
        assignments,
    );
    match pending {
        Pending::Now(outcome) => Ok(Reply::Ready(respond(frame, &response(outcome))?)),
        Pending::Later { answer, .. } => {
            let frame = frame.detached();
            Ok(Reply::Later(Box::pin(async move {
                // A request the coordinator dropped without answering is refused.
                let outcome = answer.await.unwrap_or(Err(GroupError::UnknownMemberId));
                respond(&frame, &response(outcome))
            })))
        }
    }
}
