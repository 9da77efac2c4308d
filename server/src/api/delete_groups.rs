//! DeleteGroups: removes empty groups and their committed offsets, answered once the
//! offsets log is fsynced (on a blocking thread, by the group commit).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::group_error::{authorize, error_code};
use super::reply::{respond, Reply};
use crate::auth::rights::GroupOp;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};
use crate::storage::sync::SyncTarget;

/// Answers a DeleteGroups request (NON_EMPTY_GROUP while a group has members).
pub(crate) fn handle(broker: &Arc<Broker>, frame: &RequestFrame) -> Result<Reply, RequestError> {
    let request: DeleteGroupsRequest = frame.decode()?;
    let mut to_sync: Option<Arc<dyn SyncTarget>> = None;
    let results: Vec<DeletableGroupResult> = request
        .groups_names
        .iter()
        .map(|g| {
            let deleted = authorize(frame, GroupOp::Delete, g.0.as_str())
                .and_then(|()| broker.groups.delete(g.0.as_str()));
            let code = match deleted {
                Ok(store) => {
                    to_sync = Some(store);
                    0
                }
                Err(e) => error_code(&e),
            };
            DeletableGroupResult::default()
                .with_group_id(g.clone())
                .with_error_code(code)
        })
        .collect();
    let mut response = DeleteGroupsResponse::default().with_results(results);
    let Some(store) = to_sync else {
        return Ok(Reply::Ready(respond(frame, &response)?));
    };
    let broker = broker.clone();
    let frame = frame.detached();
    Ok(Reply::Later(Box::pin(async move {
        if let Err(e) = broker.syncer.sync(store).await {
            tracing::error!(error = %e, "fsync of deleted groups failed");
            for result in &mut response.results {
                if result.error_code == 0 {
                    result.error_code = ResponseError::CoordinatorNotAvailable.code();
                }
            }
        }
        respond(&frame, &response)
    })))
}
