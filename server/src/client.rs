//! A small blocking Kafka-protocol client over [`std::net::TcpStream`]: one connection,
//! requests sent one at a time and answered in order.
//!
//! It is meant for tooling and tests that must speak the protocol directly (such as a
//! DescribeGroups request for what librdkafka does not report), not for producing or
//! consuming at volume.
//!
//! ```no_run
//! # fn demo() -> Result<(), steadfast_server::client::ClientError> {
//! use std::time::Duration;
//! use kafka_protocol::messages::{ApiKey, MetadataRequest};
//! use steadfast_server::client::Client;
//!
//! let mut client = Client::connect("127.0.0.1:9092", Duration::from_secs(10))?;
//! let served = client.api_versions()?;
//! let version = served.negotiate(ApiKey::Metadata, 1, 12)?;
//! let metadata = client.call(&MetadataRequest::default().with_topics(None), version)?;
//! println!("{} broker(s)", metadata.brokers.len());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Why a request could not be made or its response not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address could not be resolved.
    #[error("resolving {addr}: {source}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// The address resolved to nothing.
    #[error("{addr} resolves to no address")]
    NoAddress {
        /// The address as given.
        addr: String,
    },
    /// No resolved address accepted a connection (the error is the last one's).
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// Why the last attempt failed.
        source: std::io::Error,
    },
    /// Reading from or writing to the connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The request header or body did not encode at this version.
    #[error("encoding API {api_key} v{version}: {reason}")]
    Encode {
        /// API key of the request.
        api_key: i16,
        /// Version it was encoded at.
        version: i16,
        /// What the encoder said.
        reason: String,
    },
    /// The encoded request is larger than a frame's length prefix can say.
    #[error("request of {0} bytes is too large for one frame")]
    RequestTooLarge(usize),
    /// The response frame's length prefix is negative.
    #[error("response length {0} is invalid")]
    InvalidLength(i32),
    /// The response header or body did not decode at the version asked for.
    #[error("decoding the API {api_key} v{version} response: {reason}")]
    Decode {
        /// API key of the request answered.
        api_key: i16,
        /// Version it was decoded at.
        version: i16,
        /// What the decoder said.
        reason: String,
    },
    /// The response answers another request than the one waited for.
    #[error("response correlation id {actual} does not match the request's {expected}")]
    CorrelationMismatch {
        /// Correlation id of the last request sent.
        expected: i32,
        /// Correlation id in the response header.
        actual: i32,
    },
    /// Bytes were left over after the response decoded.
    #[error("{0} unexpected byte(s) after the response")]
    TrailingBytes(usize),
    /// The response carries a Kafka error code.
    #[error("{what}: {error}")]
    Response {
        /// Which request or entity the error is about.
        what: String,
        /// The error the code stands for.
        error: ResponseError,
    },
    /// The server does not serve this API at any version in the asked range.
    #[error("API {api_key} is not served at a version in {min}..={max}")]
    UnsupportedApi {
        /// The API key.
        api_key: i16,
        /// Lowest version acceptable to the caller.
        min: i16,
        /// Highest version the caller speaks.
        max: i16,
    },
}

/// `Ok` for error code 0, else [`ClientError::Response`] naming `what` the code is about.
pub fn check_error_code(code: i16, what: &str) -> Result<(), ClientError> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(ClientError::Response {
            what: what.to_owned(),
            error,
        }),
    }
}

/// Encodes one request frame: the length prefix, the request header (with `correlation_id`
/// and `client_id`) and `request` at `version`.
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<Vec<u8>, ClientError> {
    let encode_error = |e: anyhow::Error| ClientError::Encode {
        api_key: R::KEY,
        version,
        reason: format!("{e:#}"),
    };
    let mut header = RequestHeader::default();
    header.request_api_key = R::KEY;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_string(client_id.to_owned()));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, R::header_version(version))
        .map_err(encode_error)?;
    request.encode(&mut body, version).map_err(encode_error)?;
    let len = i32::try_from(body.len()).map_err(|_| ClientError::RequestTooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.put_i32(len);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes a response frame (the bytes after its length prefix) to a request of type `R`
/// sent at `version` with `correlation_id`.
///
/// ApiVersions responses always have a version 0 header, whatever the request's version, so
/// that a client can read the server's answer to a version it does not speak.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response, ClientError> {
    let decode_error = |e: anyhow::Error| ClientError::Decode {
        api_key: R::KEY,
        version,
        reason: format!("{e:#}"),
    };
    let header_version = if R::KEY == ApiKey::ApiVersions as i16 {
        0
    } else {
        R::Response::header_version(version)
    };
    let header = ResponseHeader::decode(&mut frame, header_version).map_err(decode_error)?;
    if header.correlation_id != correlation_id {
        return Err(ClientError::CorrelationMismatch {
            expected: correlation_id,
            actual: header.correlation_id,
        });
    }
    let response = R::Response::decode(&mut frame, version).map_err(decode_error)?;
    if frame.has_remaining() {
        return Err(ClientError::TrailingBytes(frame.remaining()));
    }
    Ok(response)
}

/// The API versions a server serves, from its ApiVersions response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedVersions {
    ranges: HashMap<i16, (i16, i16)>,
}

impl ServedVersions {
    /// The served ranges of an ApiVersions response (its error code is not looked at).
    pub fn from_response(response: &ApiVersionsResponse) -> Self {
        ServedVersions {
            ranges: response
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect(),
        }
    }

    /// Served ranges given directly, as (API, lowest version, highest version).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (ApiKey, i16, i16)>) -> Self {
        ServedVersions {
            ranges: ranges
                .into_iter()
                .map(|(api, min, max)| (api as i16, (min, max)))
                .collect(),
        }
    }

    /// The lowest and highest served version of `api`, if it is served at all.
    pub fn range(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.ranges.get(&(api as i16)).copied()
    }

    /// The highest version of `api` in `min..=max` that the server also serves, if any.
    pub fn highest_common(&self, api: ApiKey, min: i16, max: i16) -> Option<i16> {
        let (served_min, served_max) = self.range(api)?;
        let version = max.min(served_max);
        (version >= min.max(served_min)).then_some(version)
    }

    /// [`Self::highest_common`], with [`ClientError::UnsupportedApi`] where there is none.
    pub fn negotiate(&self, api: ApiKey, min: i16, max: i16) -> Result<i16, ClientError> {
        self.highest_common(api, min, max)
            .ok_or(ClientError::UnsupportedApi {
                api_key: api as i16,
                min,
                max,
            })
    }
}

/// Client id sent when none is set with [`Client::with_client_id`].
pub const DEFAULT_CLIENT_ID: &str = "steadfast";

/// One blocking connection to a Kafka-protocol server.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
    client_id: String,
}

impl Client {
    /// Connects to `addr` (`host:port`), trying each address it resolves to in turn, each
    /// within `timeout`; reads and writes then time out after `timeout` too.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let resolved = addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve {
                addr: addr.to_owned(),
                source,
            })?;
        let mut last = None;
        for candidate in resolved {
            match TcpStream::connect_timeout(&candidate, timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    return Ok(Client::from_stream(stream));
                }
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(source) => Err(ClientError::Connect {
                addr: addr.to_owned(),
                source,
            }),
            None => Err(ClientError::NoAddress {
                addr: addr.to_owned(),
            }),
        }
    }

    /// A client on an already connected stream (its timeouts are left as they are).
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            correlation_id: 0,
            client_id: DEFAULT_CLIENT_ID.to_owned(),
        }
    }

    /// Sets the client id sent in request headers.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Client {
        self.client_id = client_id.into();
        self
    }

    /// The connection, for timeouts, shutting down a direction, or reading raw bytes.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Correlation id of the last request encoded (0 before the first).
    pub fn correlation_id(&self) -> i32 {
        self.correlation_id
    }

    /// Encodes a frame for `request` at `version` with the next correlation id, without
    /// sending it; [`Self::receive`] then expects the response to this frame.
    pub fn encode_request<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<Vec<u8>, ClientError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        encode_request(request, version, self.correlation_id, &self.client_id)
    }

    /// Writes `bytes` to the connection as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one response frame and decodes it as the response to the last request encoded,
    /// sent at `version`.
    pub fn receive<R: Request>(&mut self, version: i16) -> Result<R::Response, ClientError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = i32::from_be_bytes(len);
        let expected = usize::try_from(len).map_err(|_| ClientError::InvalidLength(len))?;
        // Grows with the bytes that actually arrive rather than trusting the prefix up front.
        let mut body = Vec::new();
        (&mut self.stream)
            .take(expected as u64)
            .read_to_end(&mut body)?;
        if body.len() < expected {
            return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        decode_response::<R>(Bytes::from(body), version, self.correlation_id)
    }

    /// Sends `request` at `version` and waits for its response.
    pub fn call<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        let frame = self.encode_request(request, version)?;
        self.send_raw(&frame)?;
        self.receive::<R>(version)
    }

    /// Asks which API versions the server serves (ApiVersions v0, which every server
    /// answers), failing on an error code in the answer.
    pub fn api_versions(&mut self) -> Result<ServedVersions, ClientError> {
        let response = self.call(&ApiVersionsRequest::default(), 0)?;
        check_error_code(response.error_code, "ApiVersions")?;
        Ok(ServedVersions::from_response(&response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

    #[test]
    fn served_ranges_are_read_from_the_response() {
        let response = ApiVersionsResponse::default().with_api_keys(vec![ApiVersion::default()
            .with_api_key(ApiKey::Fetch as i16)
            .with_min_version(4)
            .with_max_version(12)]);
        let served = ServedVersions::from_response(&response);
        assert_eq!(
            served,
            ServedVersions::from_ranges([(ApiKey::Fetch, 4, 12)])
        );
        assert_eq!(served.range(ApiKey::Fetch), Some((4, 12)));
        assert_eq!(served.range(ApiKey::Produce), None);
    }

    #[test]
    fn the_highest_version_both_sides_speak_is_picked() {
        let served =
            ServedVersions::from_ranges([(ApiKey::DescribeGroups, 0, 5), (ApiKey::Fetch, 4, 12)]);
        assert_eq!(served.highest_common(ApiKey::DescribeGroups, 4, 5), Some(5));
        assert_eq!(served.highest_common(ApiKey::DescribeGroups, 0, 9), Some(5));
        assert_eq!(served.highest_common(ApiKey::Fetch, 0, 3), None);
        assert_eq!(served.highest_common(ApiKey::Fetch, 0, 4), Some(4));
        assert_eq!(served.highest_common(ApiKey::Metadata, 0, 12), None);
        let old = ServedVersions::from_ranges([(ApiKey::DescribeGroups, 0, 3)]);
        assert_eq!(old.highest_common(ApiKey::DescribeGroups, 4, 5), None);
        assert!(matches!(
            old.negotiate(ApiKey::DescribeGroups, 4, 5),
            Err(ClientError::UnsupportedApi {
                api_key: 15,
                min: 4,
                max: 5
            })
        ));
    }

    #[test]
    fn a_request_frame_carries_its_length_and_header() {
        let frame = encode_request(&MetadataRequest::default(), 1, 7, "me").expect("encodes");
        let len = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(len as usize, frame.len() - 4);
        assert_eq!(&frame[4..6], &(ApiKey::Metadata as i16).to_be_bytes());
        assert_eq!(&frame[6..8], &1i16.to_be_bytes());
        assert_eq!(&frame[8..12], &7i32.to_be_bytes());
        assert_eq!(&frame[12..16], &[0, 2, b'm', b'e']);
    }

    fn response_frame(correlation_id: i32, version: i16, extra: &[u8]) -> Bytes {
        let mut header = ResponseHeader::default();
        header.correlation_id = correlation_id;
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, MetadataResponse::header_version(version))
            .expect("header encodes");
        MetadataResponse::default()
            .encode(&mut buf, version)
            .expect("response encodes");
        buf.extend_from_slice(extra);
        buf.freeze()
    }

    #[test]
    fn responses_are_checked_for_their_correlation_id_and_leftovers() {
        let ok = decode_response::<MetadataRequest>(response_frame(3, 1, &[]), 1, 3);
        assert!(ok.is_ok(), "{ok:?}");
        assert!(matches!(
            decode_response::<MetadataRequest>(response_frame(4, 1, &[]), 1, 3),
            Err(ClientError::CorrelationMismatch {
                expected: 3,
                actual: 4
            })
        ));
        assert!(matches!(
            decode_response::<MetadataRequest>(response_frame(3, 1, &[0, 0]), 1, 3),
            Err(ClientError::TrailingBytes(2))
        ));
        assert!(matches!(
            decode_response::<MetadataRequest>(Bytes::from_static(&[0, 0]), 1, 3),
            Err(ClientError::Decode { .. })
        ));
    }

    #[test]
    fn error_codes_become_errors_naming_their_subject() {
        assert!(check_error_code(0, "x").is_ok());
        let err = check_error_code(16, "FindCoordinator").expect_err("code 16");
        assert!(matches!(
            err,
            ClientError::Response {
                error: ResponseError::NotCoordinator,
                ..
            }
        ));
        assert!(err.to_string().starts_with("FindCoordinator: "));
    }
}
