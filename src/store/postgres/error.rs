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
        }
    } else {
        StoreError::Failed {
            backend: "postgres",
            message,
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
            }
        }
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    };
    StoreError::Unavailable {
        backend: "postgres",
        message: format!("no pooled connection: {cause}"),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    /// Classified as [`classify`] does.
    fn from(e: tokio_postgres::Error) -> Self {
        classify(&e)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use crate::store::postgres::PostgresStores;
    use crate::store::StoreError;

    /// Reads one message body of `len` bytes (its length field included).
    async fn skip(conn: &mut TcpStream, len: i32) -> std::io::Result<()> {
        let mut body = vec![0u8; usize::try_from(len - 4).unwrap_or(0)];
        conn.read_exact(&mut body).await.map(|_| ())
    }

    /// Answers one connection as a Postgres server does when the password is wrong: asks for
    /// a cleartext password, reads it, and refuses it with FATAL 28P01.
    async fn refuse(mut conn: TcpStream) -> std::io::Result<()> {
        let len = conn.read_i32().await?; // the startup message
        skip(&mut conn, len).await?;
        conn.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?; // cleartext password, please
        let _tag = conn.read_u8().await?; // `p`, the password message
        let len = conn.read_i32().await?;
        skip(&mut conn, len).await?;
        let mut fields = Vec::new();
        for (code, text) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', "password authentication failed for user \"app\""),
        ] {
            fields.push(code);
            fields.extend_from_slice(text.as_bytes());
            fields.push(0);
        }
        fields.push(0);
        let mut message = vec![b'E'];
        message.extend_from_slice(&(fields.len() as i32 + 4).to_be_bytes());
        message.extend_from_slice(&fields);
        conn.write_all(&message).await
    }

    /// A server on a free port that refuses every password.
    async fn refusing_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(refuse(conn));
            }
        });
        addr
    }

    #[tokio::test]
    async fn refused_credentials_are_not_an_outage() {
        let addr = refusing_server().await;
        let url = format!("postgres://app:s3cret@{addr}/test");
        let err = PostgresStores::connect(&url, "steadfast")
            .await
            .expect_err("a refused password");
        assert!(matches!(err, StoreError::Auth { .. }), "{err:?}");
        assert!(!err.is_unavailable());
        let text = err.to_string();
        assert!(
            text.contains("password authentication failed"),
            "the reason: {text}"
        );
        assert!(!text.contains("s3cret"), "{text}");

        // The server asks for a password and the URL has none.
        let url = format!("postgres://app@{addr}/test");
        let err = PostgresStores::connect(&url, "steadfast")
            .await
            .expect_err("no password to give");
        assert!(matches!(err, StoreError::Auth { .. }), "{err:?}");
        assert!(err.to_string().contains("password missing"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_still_an_outage() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let url = format!("postgres://app:s3cret@127.0.0.1:{port}/test");
        let err = PostgresStores::connect(&url, "steadfast")
            .await
            .expect_err("nobody listens");
        assert!(err.is_unavailable(), "{err:?}");
    }
}
