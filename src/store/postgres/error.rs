//! Which Postgres errors mean "unreachable" (retry with backoff) and which a refusal.

use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// Classifies a client error: a closed connection, an I/O failure, a connection-class SQL
/// state (08xxx), an administrator shutdown or a server that cannot take connections is
/// [`StoreError::Unavailable`]; everything else is [`StoreError::Failed`].
pub fn classify(e: &tokio_postgres::Error) -> StoreError {
    let message = e.to_string();
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
        }
    } else {
        StoreError::Failed {
            backend: "postgres",
            message,
        }
    }
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
