//! ApiVersions: advertises exactly the APIs and versions this server implements.

use std::ops::RangeInclusive;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

use super::reply::respond_with_header;
use crate::protocol::{encode_response, RequestError, RequestFrame};

/// Every API served, with the versions implemented.
pub(crate) const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    // After v0 the SASL tokens follow as raw frames (older clients, such as librdkafka 2.0,
    // want v0 in the range); after v1 they come in SaslAuthenticate requests.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The versions served for an API, if it is served.
pub(crate) fn served_range(api: ApiKey) -> Option<RangeInclusive<i16>> {
    SERVED
        .iter()
        .find(|(key, _, _)| *key == api)
        .map(|(_, min, max)| *min..=*max)
}

fn response(error: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(
            SERVED
                .iter()
                .map(|(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(*key as i16)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        )
}

/// Answers a supported ApiVersions request.
pub(crate) fn handle(frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let _request: ApiVersionsRequest = frame.decode()?;
    // ApiVersions responses always use header v0, so that a client can read them before it
    // knows which versions the server speaks.
    respond_with_header(frame, 0, &response(0))
}

/// Answers an ApiVersions request of a version this server does not speak: a v0 response
/// with UNSUPPORTED_VERSION and the served ranges, so the client retries with one it knows.
pub(crate) fn unsupported_version(frame: &RequestFrame) -> Result<Bytes, RequestError> {
    tracing::debug!(
        version = frame.api_version,
        "ApiVersions version not served; answering v0"
    );
    encode_response(
        frame.correlation_id,
        0,
        &response(ResponseError::UnsupportedVersion.code()),
        0,
    )
    .map_err(|e| RequestError::Malformed {
        api: ApiKey::ApiVersions,
        version: 0,
        reason: e.to_string(),
    })
}
