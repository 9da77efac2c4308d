//! Which Postgres errors mean "unreachable" (retry with backoff) and which a refusal.

use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// Classifies a client error: refused credentials (`refuses_credentials`) are
/// [`StoreError::Auth`]; a closed connection, an I/O failure, a connection-class SQL state
/// (08xxx), an administrator shutdown or a server that cannot take connections is
/// [`StoreError::Unavailable`]; everything else is [`StoreError::Failed`].
pub fn classify(e: &tokio_postgres::Error) -> StoreError {
    let message = describe(e);
    if refuses_credentials(e) {
        return StoreError::Auth {
            backend: "postgres",
            message,
            cause: None,
        };
    }
    let connection_state = e.code().is_some_and(|code| {
        code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS
    });
    let unavailable = e.is_closed() || connection_state || caused_by_io(e);
    if unavailable {
        StoreError::Unavailable {
            backend: "postgres",
            message,
            cause: None,
        }
    } else {
        StoreError::Failed {
            backend: "postgres",
            message,
            cause: None,
        }
    }
}

/// The error with its causes (`tokio_postgres` shows the server's message, or the I/O
/// failure, only as the error's source): `db error: ERROR: relation "x" does not exist`.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Whether an I/O error is somewhere in the error's source chain (a refused connect, a reset).
fn caused_by_io(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = e.source();
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether the server refused who the client is, or the client could not say: an
/// `invalid_authorization_specification` state (28xxx: a wrong password, an unknown role, no
/// `pg_hba.conf` entry), a failed authentication exchange, or a password the server asked for
/// and the URL does not have.
fn refuses_credentials(e: &tokio_postgres::Error) -> bool {
    if e.code().is_some_and(|code| code.code().starts_with("28")) {
        return true;
    }
    let message = describe(e);
    message.starts_with("authentication error") || message.ends_with("password missing")
}

/// A pooled connection that could not be had (no free slot in time, a connect that failed
/// or timed out, a closed pool) is [`StoreError::Unavailable`], unless the server refused the
/// credentials ([`StoreError::Auth`]).
pub(crate) fn pool_unavailable(e: &deadpool_postgres::PoolError) -> StoreError {
    let cause = match e {
        deadpool_postgres::PoolError::Backend(e) if refuses_credentials(e) => {
            return StoreError::Auth {
                backend: "postgres",
                message: describe(e),
                cause: None,
            }
        }
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    };
    StoreError::Unavailable {
        backend: "postgres",
        message: format!("no pooled connection: {cause}"),
        cause: None,
    }
}

impl From<tokio_postgres::Error> for StoreError {
    /// Classified as [`classify`] does.
    fn from(e: tokio_postgres::Error) -> Self {
        classify(&e).caused_by(e)
    }
}
