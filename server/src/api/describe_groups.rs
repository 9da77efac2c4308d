//! DescribeGroups: state, protocol and members (with assignments) of groups.

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::group_error::{authorize, error_code};
use super::reply::respond;
use crate::auth::rights::GroupOp;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};

/// Answers a DescribeGroups request; unknown groups are described as Dead.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: DescribeGroupsRequest = frame.decode()?;
    // Each group is described once however often it is named: a request naming one big
    // group many times must not multiply the response.
    let mut seen = std::collections::HashSet::new();
    let groups = request
        .groups
        .iter()
        .filter(|id| seen.insert(id.0.as_str()))
        .map(|id| {
            if let Err(e) = authorize(frame, GroupOp::Use, id.0.as_str()) {
                return DescribedGroup::default()
                    .with_group_id(id.clone())
                    .with_error_code(error_code(&e))
                    .with_authorized_operations(i32::MIN);
            }
            let d = broker.groups.describe(id.0.as_str());
            DescribedGroup::default()
                .with_group_id(id.clone())
                .with_group_state(StrBytes::from_static_str(d.state.as_str()))
                .with_protocol_type(StrBytes::from_string(d.protocol_type))
                .with_protocol_data(StrBytes::from_string(d.protocol_name))
                .with_authorized_operations(i32::MIN)
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(StrBytes::from_string(m.member_id))
                                .with_group_instance_id(m.instance_id.map(StrBytes::from_string))
                                .with_client_id(StrBytes::from_string(m.client_id))
                                .with_client_host(StrBytes::from_string(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                )
        })
        .collect();
    respond(
        frame,
        &DescribeGroupsResponse::default().with_groups(groups),
    )
}
