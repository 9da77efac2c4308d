//! LeaveGroup: members leave at once instead of waiting out their session.

use bytes::Bytes;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::group_error::{authorize, error_code, result_code};
use super::reply::respond;
use crate::auth::rights::GroupOp;
use crate::broker::Broker;
use crate::group::LeavingMember;
use crate::protocol::{RequestError, RequestFrame};

/// Answers a LeaveGroup request (v0-2: one member id; v3+: a batch of members).
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: LeaveGroupRequest = frame.decode()?;
    let group = request.group_id.0.as_str();
    if let Err(e) = authorize(frame, GroupOp::Use, group) {
        return respond(
            frame,
            &LeaveGroupResponse::default().with_error_code(error_code(&e)),
        );
    }
    if frame.api_version < 3 {
        let leaving = LeavingMember {
            member_id: request.member_id.as_str().to_owned(),
            instance_id: None,
        };
        let results = broker.groups.leave(group, &[leaving]);
        let error = results.first().map_or(0, result_code);
        return respond(frame, &LeaveGroupResponse::default().with_error_code(error));
    }
    let leaving: Vec<LeavingMember> = request
        .members
        .iter()
        .map(|m| LeavingMember {
            member_id: m.member_id.as_str().to_owned(),
            instance_id: m.group_instance_id.as_ref().map(|s| s.as_str().to_owned()),
        })
        .collect();
    let results = broker.groups.leave(group, &leaving);
    let members = leaving
        .into_iter()
        .zip(results)
        .map(|(member, outcome)| {
            MemberResponse::default()
                .with_member_id(StrBytes::from_string(member.member_id))
                .with_group_instance_id(member.instance_id.map(StrBytes::from_string))
                .with_error_code(result_code(&outcome))
        })
        .collect();
    respond(frame, &LeaveGroupResponse::default().with_members(members))
}
