//! Which Redis errors mean "unreachable" (retry with backoff) and which a refusal.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::store::StoreError;

/// Whether Redis refused who the client is, or wants it to say: a failed `AUTH` (a wrong
/// password or user, `WRONGPASS`), a command sent without one to a Redis that requires it
/// (`NOAUTH`), or a user without the right to run it (`NOPERM`).
fn refuses_credentials(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm)
    ) || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// Classifies a client error: refused credentials (`refuses_credentials`) are
/// [`StoreError::Auth`]; an I/O failure (refused, dropped or timed-out connection), a
/// server that is loading its data set, busy running a script, down as a cluster or a
/// read-only replica after a failover, or a script cache lost in a restart (`NOSCRIPT`, which
/// `redis::Script` otherwise answers by loading the script) is [`StoreError::Unavailable`];
/// everything else is [`StoreError::Failed`].
pub fn classify(e: &RedisError) -> StoreError {
    classified(e)
}

impl From<RedisError> for StoreError {
    /// Classified as [`classify`] does, with the client's error as the source.
    fn from(e: RedisError) -> Self {
        classified(&e).caused_by(e)
    }
}

fn classified(e: &RedisError) -> StoreError {
    let message = e.to_string();
    if refuses_credentials(e) {
        return StoreError::Auth {
            backend: "redis",
            message,
            cause: None,
        };
    }
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
            cause: None,
        }
    } else {
        StoreError::Failed {
            backend: "redis",
            message,
            cause: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_error_stays_the_source() {
        let refused = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "nobody listens",
        ));
        let err = StoreError::from(refused);
        assert!(err.is_unavailable(), "{err:?}");
        let source = std::error::Error::source(&err).expect("the client error as the source");
        assert!(source.to_string().contains("nobody listens"), "{source}");
        assert!(
            std::error::Error::source(&classify(&RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "x"
            ))))
            .is_none(),
            "classify, from a reference, has none"
        );
    }

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

    #[test]
    fn refused_credentials_are_auth_failures() {
        for e in [
            RedisError::from((
                ErrorKind::AuthenticationFailed,
                "Password authentication failed",
            )),
            redis::make_extension_error("NOAUTH".into(), Some("Authentication required.".into())),
            redis::make_extension_error("WRONGPASS".into(), Some("invalid password".into())),
            RedisError::from((ErrorKind::Server(ServerErrorKind::NoPerm), "no rights")),
        ] {
            let classified = classify(&e);
            assert!(
                matches!(classified, StoreError::Auth { .. }),
                "{e:?}: {classified:?}"
            );
        }
    }
}
