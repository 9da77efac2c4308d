//! What a handler gives back to the connection, and the encoding of a response with the
//! header version that belongs to its API and version.

use bytes::Bytes;
use futures::future::BoxFuture;
use kafka_protocol::protocol::{Encodable, HeaderVersion};

use crate::protocol::{encode_response, RequestError, RequestFrame};

/// What a handled request gives back to the connection.
pub(crate) enum Reply {
    /// No response is sent (produce with acks=0).
    Nothing,
    /// A response frame ready to send.
    Ready(Bytes),
    /// A response that is ready later (a long-poll fetch, a produce waiting for fsync).
    Later(BoxFuture<'static, Result<Bytes, RequestError>>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Nothing => f.write_str("Reply::Nothing"),
            Reply::Ready(b) => write!(f, "Reply::Ready({} bytes)", b.len()),
            Reply::Later(_) => f.write_str("Reply::Later"),
        }
    }
}

/// Encodes a response with the header version that belongs to its API and version.
pub(crate) fn respond<R: Encodable + HeaderVersion>(
    frame: &RequestFrame,
    body: &R,
) -> Result<Bytes, RequestError> {
    respond_with_header(frame, R::header_version(frame.api_version), body)
}

/// Encodes a response with an explicit response-header version.
pub(crate) fn respond_with_header<R: Encodable>(
    frame: &RequestFrame,
    header_version: i16,
    body: &R,
) -> Result<Bytes, RequestError> {
    encode_response(
        frame.correlation_id,
        header_version,
        body,
        frame.api_version,
    )
    .map_err(|e| RequestError::Malformed {
        api: frame.api_key,
        version: frame.api_version,
        reason: format!("response does not encode: {e}"),
    })
}
