//! Request routing by API key, one file per API.

pub(crate) mod api_versions;
pub(crate) mod create_topics;
pub(crate) mod delete_groups;
pub(crate) mod delete_topics;
pub(crate) mod describe_groups;
pub(crate) mod fetch;
pub(crate) mod find_coordinator;
pub(crate) mod group_error;
pub(crate) mod heartbeat;
pub(crate) mod init_producer_id;
pub(crate) mod join_group;
pub(crate) mod leave_group;
pub(crate) mod list_groups;
pub(crate) mod list_offsets;
pub(crate) mod metadata;
pub(crate) mod offset_commit;
pub(crate) mod offset_fetch;
pub(crate) mod produce;
pub(crate) mod reply;
pub(crate) mod sync_group;

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;

use super::broker::Broker;
use super::protocol::{RequestError, RequestFrame};

pub(crate) use self::reply::{respond, Reply};

/// Why a request could not be answered; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DispatchError {
    /// The request does not decode.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The API is known but not served, or not at this version.
    #[error("{api:?} v{version} is not supported (served: {served})")]
    Unsupported {
        /// The API.
        api: ApiKey,
        /// The version asked for.
        version: i16,
        /// What is served, for the log line.
        served: String,
    },
}

/// Handles one request: the synchronous part (appends, topic changes) happens before this
/// returns, so requests of a connection take effect in the order they were sent.
pub(crate) fn dispatch(broker: &Arc<Broker>, frame: RequestFrame) -> Result<Reply, DispatchError> {
    if let Some(reply) = check_served(&frame)? {
        return Ok(reply);
    }
    let reply = match frame.api_key {
        ApiKey::ApiVersions => Reply::Ready(api_versions::handle(&frame)?),
        ApiKey::Metadata => Reply::Ready(metadata::handle(broker, &frame)?),
        ApiKey::Produce => produce::handle(broker, &frame)?,
        ApiKey::Fetch => fetch::handle(broker, &frame)?,
        ApiKey::ListOffsets => Reply::Ready(list_offsets::handle(broker, &frame)?),
        ApiKey::CreateTopics => Reply::Ready(create_topics::handle(broker, &frame)?),
        ApiKey::DeleteTopics => Reply::Ready(delete_topics::handle(broker, &frame)?),
        ApiKey::InitProducerId => Reply::Ready(init_producer_id::handle(broker, &frame)?),
        ApiKey::FindCoordinator => Reply::Ready(find_coordinator::handle(broker, &frame)?),
        ApiKey::JoinGroup => join_group::handle(broker, &frame)?,
        ApiKey::SyncGroup => sync_group::handle(broker, &frame)?,
        ApiKey::Heartbeat => Reply::Ready(heartbeat::handle(broker, &frame)?),
        ApiKey::LeaveGroup => Reply::Ready(leave_group::handle(broker, &frame)?),
        ApiKey::OffsetCommit => offset_commit::handle(broker, &frame)?,
        ApiKey::OffsetFetch => Reply::Ready(offset_fetch::handle(broker, &frame)?),
        ApiKey::DescribeGroups => Reply::Ready(describe_groups::handle(broker, &frame)?),
        ApiKey::ListGroups => Reply::Ready(list_groups::handle(broker, &frame)?),
        ApiKey::DeleteGroups => delete_groups::handle(broker, &frame)?,
        other => {
            return Err(DispatchError::Unsupported {
                api: other,
                version: frame.api_version,
                served: "none".to_owned(),
            })
        }
    };
    Ok(reply)
}

/// Checks that the request's API and version are served: `Ok(None)` when they are, a reply
/// for an ApiVersions request of an unknown version, an error otherwise.
pub(crate) fn check_served(frame: &RequestFrame) -> Result<Option<Reply>, DispatchError> {
    let Some(range) = api_versions::served_range(frame.api_key) else {
        return Err(DispatchError::Unsupported {
            api: frame.api_key,
            version: frame.api_version,
            served: "none".to_owned(),
        });
    };
    if !range.contains(&frame.api_version) {
        if frame.api_key == ApiKey::ApiVersions {
            return Ok(Some(Reply::Ready(api_versions::unsupported_version(
                frame,
            )?)));
        }
        return Err(DispatchError::Unsupported {
            api: frame.api_key,
            version: frame.api_version,
            served: format!("v{}..=v{}", range.start(), range.end()),
        });
    }
    Ok(None)
}
