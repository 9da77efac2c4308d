//! JoinGroup: a member joins (or rejoins) its group; the answer waits until the rebalance
//! has every member, or the rebalance timeout removes the ones that did not come back.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::group_error::{authorize, error_code};
use super::reply::{respond, Reply};
use crate::auth::rights::GroupOp;
use crate::broker::Broker;
use crate::group::state::{JoinOutcome, Joined};
use crate::group::{GroupError, JoinRequest, Pending};
use crate::protocol::{RequestError, RequestFrame};

fn str_bytes(s: Option<String>) -> Option<StrBytes> {
    s.map(StrBytes::from_string)
}

/// The answer to a JoinGroup; a refusal names `member_id` (the request's, or the one the
/// coordinator gave a new member), or the id MEMBER_ID_REQUIRED hands out.
fn response(outcome: JoinOutcome, member_id: &str) -> JoinGroupResponse {
    match outcome {
        Ok(joined) => joined_response(joined),
        Err(e) => {
            let member_id = match &e {
                GroupError::MemberIdRequired { member_id } => member_id.clone(),
                _ => member_id.to_owned(),
            };
            // Protocol type and name are null, not the defaults (the name defaults to "").
            JoinGroupResponse::default()
                .with_error_code(error_code(&e))
                .with_generation_id(-1)
                .with_protocol_type(None)
                .with_protocol_name(None)
                .with_leader(StrBytes::default())
                .with_member_id(StrBytes::from_string(member_id))
                .with_members(Vec::new())
        }
    }
}

/// The answer to a member that joined a generation.
fn joined_response(joined: Joined) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(0)
        .with_generation_id(joined.generation)
        .with_protocol_type(str_bytes(joined.protocol_type))
        .with_protocol_name(str_bytes(joined.protocol_name))
        .with_leader(StrBytes::from_string(joined.leader))
        .with_member_id(StrBytes::from_string(joined.member_id))
        .with_members(
            joined
                .members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(m.member_id))
                        .with_group_instance_id(str_bytes(m.instance_id))
                        .with_metadata(m.metadata)
                })
                .collect(),
        )
}

/// Handles JoinGroup.
pub(crate) fn handle(broker: &Arc<Broker>, frame: &RequestFrame) -> Result<Reply, RequestError> {
    let request: JoinGroupRequest = frame.decode()?;
    let session_timeout = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    let rebalance_timeout = if frame.api_version >= 1 {
        Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
    } else {
        session_timeout
    };
    let join = JoinRequest {
        group_id: request.group_id.0.as_str().to_owned(),
        member_id: request.member_id.as_str().to_owned(),
        instance_id: request
            .group_instance_id
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        client_id: frame.client_id.clone().unwrap_or_default(),
        client_host: frame.client_host(),
        session_timeout,
        rebalance_timeout,
        protocol_type: request.protocol_type.as_str().to_owned(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_owned(), p.metadata.clone()))
            .collect(),
        require_known_member_id: frame.api_version >= 4,
    };
    let requested_id = request.member_id.as_str();
    if let Err(e) = authorize(frame, GroupOp::Use, &join.group_id) {
        return Ok(Reply::Ready(respond(
            frame,
            &response(Err(e), requested_id),
        )?));
    }
    match broker.groups.join(join) {
        Pending::Now(outcome) => Ok(Reply::Ready(respond(
            frame,
            &response(outcome, requested_id),
        )?)),
        Pending::Later { member_id, answer } => {
            let frame = frame.detached();
            let requested_id = requested_id.to_owned();
            Ok(Reply::Later(Box::pin(async move {
                let response = match answer.await {
                    Ok(outcome) => response(outcome, &member_id),
                    // The coordinator dropped the request without answering it.
                    Err(_) => response(Err(GroupError::UnknownMemberId), &requested_id),
                };
                respond(&frame, &response)
            })))
        }
    }
}
