//! Which Redis errors mean "unreachable" (retry with backoff) and which a refusal.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::store::StoreError;

/// Classifies a client error: an I/O failure (refused, dropped or timed-out connection), a
/// server that is loading its data set, busy running a script, down as a cluster or a
/// read-only replica after a failover, or a script cache lost in a restart (`NOSCRIPT`, which
/// `redis::Script` otherwise answers by loading the script) is [`StoreError::Unavailable`];
/// everything else is [`StoreError::Failed`].
pub fn classify(e: &RedisError) -> StoreError {
    let message = e.to_string();
    let unavailable = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::NoScript
                )
        )
        || matches!(e.code(), Some("BUSY" | "LOADING" | "NOSCRIPT"));
    if unavailable {
        StoreError::Unavailable {
            backend: "redis",
            message,
        }
    } else {
        StoreError::Failed {
            backend: "redis",
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable_and_refusals_failed() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(classify(&refused).is_unavailable());
        let timed_out = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(classify(&timed_out).is_unavailable());
        let loading =
            RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
        assert!(classify(&loading).is_unavailable());
        let busy = redis::make_extension_error("BUSY".into(), Some("script running".into()));
        assert!(classify(&busy).is_unavailable());
        let wrong_type = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE",
        ));
        assert!(!classify(&wrong_type).is_unavailable());
        let parse = RedisError::from((ErrorKind::UnexpectedReturnType, "not a number"));
        assert!(!classify(&parse).is_unavailable());
    }
}
