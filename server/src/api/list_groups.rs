//! ListGroups: every group with its protocol type (and state, v4+, with a state filter).

use bytes::Bytes;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::reply::respond;
use crate::auth::rights::GroupOp;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};

/// Answers a ListGroups request.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: ListGroupsRequest = frame.decode()?;
    let wanted: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.as_str().to_ascii_lowercase())
        .collect();
    let groups = broker
        .groups
        .list()
        .into_iter()
        .filter(|g| wanted.is_empty() || wanted.contains(&g.state.as_str().to_ascii_lowercase()))
        .filter(|g| frame.access().group(GroupOp::Use, &g.group_id))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(g.group_id)))
                .with_protocol_type(StrBytes::from_string(g.protocol_type))
                .with_group_state(StrBytes::from_static_str(g.state.as_str()))
        })
        .collect();
    respond(frame, &ListGroupsResponse::default().with_groups(groups))
}
