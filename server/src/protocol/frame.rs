//! Reading length-prefixed request frames off a byte stream, with a size limit.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

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
    max_size: usize,
) -> Result<Option<Bytes>, FrameError> {
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
    // Read into uninitialised capacity: no zero-fill of every (up to 100 MiB) request.
    let size = size as usize;
    let mut body = BytesMut::with_capacity(size);
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
}
