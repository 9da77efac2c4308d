//! Connecting to a Postgres that refuses the credentials: reported as such, at once.

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
