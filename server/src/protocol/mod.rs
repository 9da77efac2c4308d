//! The Kafka wire protocol as the server sees it: length-prefixed frames, request headers
//! and response encoding. Knows nothing of sockets or storage.

pub(crate) mod frame;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Why a request frame could not be understood.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// The frame is shorter than a request header.
    #[error("request frame of {0} bytes is too short for a header")]
    TooShort(usize),
    /// The API key is not a Kafka API.
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    /// The header or body does not decode.
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        /// The API of the request.
        api: ApiKey,
        /// Its version.
        version: i16,
        /// What the decoder said.
        reason: String,
    },
}

/// A request whose header is decoded and whose body is still bytes.
#[derive(Debug)]
pub(crate) struct RequestFrame {
    pub(crate) api_key: ApiKey,
    pub(crate) api_version: i16,
    pub(crate) correlation_id: i32,
    pub(crate) client_id: Option<String>,
    pub(crate) body: Bytes,
    /// The client's address, when known.
    pub(crate) peer: Option<std::net::SocketAddr>,
    /// Who sent it and through which listener; `None` outside a connection (everything
    /// allowed, the main listener's address).
    pub(crate) context: Option<std::sync::Arc<crate::auth::RequestContext>>,
}

impl RequestFrame {
    /// Decodes the request header of a frame (the bytes after the length prefix).
    pub(crate) fn parse(mut frame: Bytes) -> Result<Self, RequestError> {
        if frame.len() < 8 {
            return Err(RequestError::TooShort(frame.len()));
        }
        let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
        let api_version = i16::from_be_bytes([frame[2], frame[3]]);
        let api_key =
            ApiKey::try_from(raw_key).map_err(|_| RequestError::UnknownApiKey(raw_key))?;
        let header_version = api_key.request_header_version(api_version);
        let header = RequestHeader::decode(&mut frame, header_version).map_err(|e| {
            RequestError::Malformed {
                api: api_key,
                version: api_version,
                reason: e.to_string(),
            }
        })?;
        Ok(RequestFrame {
            api_key,
            api_version,
            correlation_id: header.correlation_id,
            client_id: header.client_id.map(|c| c.as_str().to_owned()),
            body: frame,
            peer: None,
            context: None,
        })
    }

    /// What a deferred response needs of the request: its API, version and correlation id.
    pub(crate) fn detached(&self) -> RequestFrame {
        RequestFrame {
            api_key: self.api_key,
            api_version: self.api_version,
            correlation_id: self.correlation_id,
            client_id: None,
            body: Bytes::new(),
            peer: self.peer,
            context: self.context.clone(),
        }
    }

    /// What the sender may do.
    pub(crate) fn access(&self) -> &crate::auth::rights::Access {
        const EVERYTHING: &crate::auth::rights::Access = &crate::auth::rights::Access::Everything;
        self.context.as_ref().map_or(EVERYTHING, |c| &c.access)
    }

    /// The host and port of the listener the request came through.
    pub(crate) fn advertised<'a>(&'a self, fallback: &'a (String, u16)) -> (&'a str, u16) {
        let (host, port) = self.context.as_ref().map_or(fallback, |c| &c.advertised);
        (host, *port)
    }

    /// The client host as Kafka reports it (`/127.0.0.1`).
    pub(crate) fn client_host(&self) -> String {
        self.peer
            .map(|p| format!("/{}", p.ip()))
            .unwrap_or_default()
    }

    /// Decodes the body as request type `R`. Bytes after the decoded body are ignored, as
    /// Kafka brokers do (clients may append fields of newer schema revisions).
    pub(crate) fn decode<R: Decodable>(&self) -> Result<R, RequestError> {
        let mut body = self.body.clone();
        let request =
            R::decode(&mut body, self.api_version).map_err(|e| self.malformed(e.to_string()))?;
        if !body.is_empty() {
            tracing::trace!(api = ?self.api_key, version = self.api_version, trailing = body.len(), "ignoring trailing request bytes");
        }
        Ok(request)
    }

    fn malformed(&self, reason: String) -> RequestError {
        RequestError::Malformed {
            api: self.api_key,
            version: self.api_version,
            reason,
        }
    }
}

/// Encodes a whole response frame: length prefix, response header, body.
pub(crate) fn encode_response<R: Encodable>(
    correlation_id: i32,
    header_version: i16,
    body: &R,
    body_version: i16,
) -> anyhow::Result<Bytes> {
    let size = body.compute_size(body_version)?;
    let mut buf = BytesMut::with_capacity(size + 16);
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, body_version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}
