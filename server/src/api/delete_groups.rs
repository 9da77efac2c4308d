//! DeleteGroups: removes empty groups and their committed offsets.

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::group_error::{authorize, result_code};
use super::respond;
use crate::auth::rights::GroupOp;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};

/// Answers a DeleteGroups request (NON_EMPTY_GROUP while a group has members).
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: DeleteGroupsRequest = frame.decode()?;
    let results = request
        .groups_names
        .iter()
        .map(|g| {
            DeletableGroupResult::default()
                .with_group_id(g.clone())
                .with_error_code(result_code(
                    &authorize(frame, GroupOp::Delete, g.0.as_str())
                        .and_then(|()| broker.groups.delete(g.0.as_str())),
                ))
        })
        .collect();
    respond(
        frame,
        &DeleteGroupsResponse::default().with_results(results),
    )
}
