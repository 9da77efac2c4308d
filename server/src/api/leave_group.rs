//! LeaveGroup: members leave at once instead of waiting out their session.

use bytes::Bytes;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::respond;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};

/// Answers a LeaveGroup request (v0-2: one member id; v3+: a batch of members).
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: LeaveGroupRequest = frame.decode()?;
    let group = request.group_id.0.as_str();
    if frame.api_version < 3 {
        let results = broker
            .groups
            .leave(group, &[(request.member_id.as_str().to_owned(), None)]);
        return respond(
            frame,
            &LeaveGroupResponse::default().with_error_code(results[0]),
        );
    }
    let leaving: Vec<(String, Option<String>)> = request
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.as_str().to_owned(),
                m.group_instance_id.as_ref().map(|s| s.as_str().to_owned()),
            )
        })
        .collect();
    let results = broker.groups.leave(group, &leaving);
    let members = leaving
        .into_iter()
        .zip(results)
        .map(|((id, instance), error)| {
            MemberResponse::default()
                .with_member_id(StrBytes::from_string(id))
                .with_group_instance_id(instance.map(StrBytes::from_string))
                .with_error_code(error)
        })
        .collect();
    respond(frame, &LeaveGroupResponse::default().with_members(members))
}
