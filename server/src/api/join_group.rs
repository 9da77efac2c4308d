//! JoinGroup: a member joins (or rejoins) its group; the answer waits until the rebalance
//! has every member, or the rebalance timeout removes the ones that did not come back.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::{respond, Reply};
use crate::broker::Broker;
use crate::group::state::JoinResult;
use crate::group::{codes, JoinRequest, Pending};
use crate::protocol::{RequestError, RequestFrame};

fn str_bytes(s: Option<String>) -> Option<StrBytes> {
    s.map(StrBytes::from_string)
}

fn response(result: JoinResult) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation)
        .with_protocol_type(str_bytes(result.protocol_type))
        .with_protocol_name(str_bytes(result.protocol_name))
        .with_leader(StrBytes::from_string(result.leader))
        .with_member_id(StrBytes::from_string(result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(id))
                        .with_group_instance_id(str_bytes(instance))
                        .with_metadata(metadata)
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
    match broker.groups.join(join) {
        Pending::Now(result) => Ok(Reply::Ready(respond(frame, &response(result))?)),
        Pending::Later(wait) => {
            let frame = frame.detached();
            let member_id = request.member_id.as_str().to_owned();
            Ok(Reply::Later(Box::pin(async move {
                let result = wait
                    .await
                    .unwrap_or_else(|_| JoinResult::error(codes::UNKNOWN_MEMBER_ID, &member_id));
                respond(&frame, &response(result))
            })))
        }
    }
}
