//! Reading length-prefixed request frames off a byte stream, with size limits: one for every
//! request, and a smaller one for the APIs that carry no record data or group assignments,
//! checked from the length prefix and the API key before the frame is allocated or decoded.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest frames a connection accepts now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameLimits {
    /// Any request.
    pub(crate) any: usize,
    /// A request of an API that is small by nature (all but Produce, Fetch, JoinGroup,
    /// SyncGroup and OffsetCommit): it bounds how many topics, partitions or groups one
    /// request can name, and so what decoding and answering it can allocate.
    pub(crate) control: usize,
}

impl FrameLimits {
    /// One limit for every API.
    pub(crate) fn uniform(max: usize) -> Self {
        FrameLimits {
            any: max,
            control: max,
        }
    }

    /// The limit of a request of API `key` (unknown keys: the control limit; they are
    /// refused once read).
    pub(crate) fn for_api(&self, key: i16) -> usize {
        match ApiKey::try_from(key) {
            Ok(
                ApiKey::Produce
                | ApiKey::Fetch
                | ApiKey::JoinGroup
                | ApiKey::SyncGroup
                | ApiKey::OffsetCommit,
            ) => self.any,
            _ => self.control.min(self.any),
        }
    }
}

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The length prefix is negative or larger than the configured maximum.
    #[error("request size {size} is outside 0..={max} bytes")]
    InvalidSize {
        /// The size the prefix announced.
        size: i64,
        /// The configured maximum.
        max: usize,
    },
    /// The length prefix is over the limit of the request's API.
    #[error("request of API key {api} of {size} bytes is over its limit of {max} bytes")]
    TooLargeForApi {
        /// The API key the frame starts with.
        api: i16,
        /// The size the prefix announced.
        size: usize,
        /// The limit of that API.
        max: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a request")]
    Truncated,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the peer went away (reset or aborted the connection) rather than sent
    /// something wrong: a client closing with data unread resets, and that is no fault.
    pub(crate) fn is_peer_gone(&self) -> bool {
        matches!(self, FrameError::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        ))
    }
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: FrameLimits,
) -> Result<Option<Bytes>, FrameError> {
    let max_size = limits.any;
    let mut prefix = [0u8; 4];
    match reader.read(&mut prefix[..1]).await? {
        0 => return Ok(None),
        _ => {
            reader
                .read_exact(&mut prefix[1..])
                .await
                .map_err(eof_is_truncation)?;
        }
    }
    let size = i32::from_be_bytes(prefix);
    if size < 0 || size as usize > max_size {
        return Err(FrameError::InvalidSize {
            size: size as i64,
            max: max_size,
        });
    }
    let size = size as usize;
    // The API key (the first two bytes) decides the limit, before the frame is allocated.
    let mut api_key = [0u8; 2];
    let key_len = size.min(2);
    reader
        .read_exact(&mut api_key[..key_len])
        .await
        .map_err(eof_is_truncation)?;
    if key_len == 2 {
        let api = i16::from_be_bytes(api_key);
        let max = limits.for_api(api);
        if size > max {
            return Err(FrameError::TooLargeForApi { api, size, max });
        }
    }
    // Read into uninitialised capacity: no zero-fill of every (up to 100 MiB) request.
    let mut body = BytesMut::with_capacity(size);
    body.put_slice(&api_key[..key_len]);
    while body.len() < size {
        let wanted = size - body.len();
        if reader.read_buf(&mut (&mut body).limit(wanted)).await? == 0 {
            return Err(FrameError::Truncated);
        }
    }
    Ok(Some(body.freeze()))
}

fn eof_is_truncation(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

#[cfg(test)]
mod peer_gone_tests {
    use super::FrameError;
    use std::io::{Error, ErrorKind};

    #[test]
    fn resets_are_a_peer_going_away_and_bad_frames_are_not() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::BrokenPipe,
        ] {
            assert!(FrameError::Io(Error::from(kind)).is_peer_gone(), "{kind:?}");
        }
        assert!(!FrameError::Io(Error::from(ErrorKind::InvalidData)).is_peer_gone());
        assert!(!FrameError::Truncated.is_peer_gone());
        assert!(!FrameError::InvalidSize { size: -1, max: 10 }.is_peer_gone());
    }

    #[test]
    fn control_apis_get_the_small_limit_and_data_apis_the_large_one() {
        use super::FrameLimits;
        use kafka_protocol::messages::ApiKey;
        let limits = FrameLimits {
            any: 1000,
            control: 10,
        };
        for api in [ApiKey::Produce, ApiKey::Fetch, ApiKey::SyncGroup] {
            assert_eq!(limits.for_api(api as i16), 1000, "{api:?}");
        }
        for api in [
            ApiKey::Metadata,
            ApiKey::ListOffsets,
            ApiKey::DescribeGroups,
        ] {
            assert_eq!(limits.for_api(api as i16), 10, "{api:?}");
        }
        assert_eq!(limits.for_api(-7), 10);
    }

    #[tokio::test]
    async fn a_frame_over_its_api_limit_is_refused_after_six_bytes() {
        use super::{read_frame, FrameLimits};
        let mut frame = 100i32.to_be_bytes().to_vec();
        frame.extend_from_slice(&3i16.to_be_bytes()); // Metadata
        frame.extend_from_slice(&[0; 98]);
        let limits = FrameLimits {
            any: 1000,
            control: 50,
        };
        let err = read_frame(&mut &frame[..], limits).await.unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLargeForApi {
                    api: 3,
                    size: 100,
                    max: 50
                }
            ),
            "{err}"
        );
        let read = read_frame(&mut &frame[..], FrameLimits::uniform(100))
            .await
            .unwrap();
        assert_eq!(read.as_deref(), Some(&frame[4..]));
    }
}
