//! SaslHandshake v0, which older clients (librdkafka 2.0, Debian's kcat) want in the
//! advertised range: after it the SASL tokens travel as raw length-prefixed frames instead of
//! SaslAuthenticate requests. A raw-socket client authenticates with PLAIN and with
//! SCRAM-SHA-256 that way and is then served; a wrong password closes the connection
//! without an answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, MetadataRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use ring::{digest, hmac, pbkdf2};
use steadfast_server::users::{Rights, User, UsersFile};
use steadfast_server::{SecurityProtocol, ServerHandle};
use steadfast_testkit::{server_on, unique_topic, RawClient};

/// Writes one raw SASL token frame.
fn send_token(stream: &mut TcpStream, token: &[u8]) {
    let mut frame = (token.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(token);
    stream.write_all(&frame).expect("write token");
}

/// Reads one raw SASL token frame; `None` if the server closed the connection instead.
fn receive_token(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return None
        }
        Err(e) => panic!("reading a token: {e}"),
    }
    let mut token = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut token).expect("token body");
    Some(token)
}

/// A SASL_PLAINTEXT server whose users file holds one user of random name and password.
async fn start(dir: &Path) -> (ServerHandle, String, String) {
    let users = dir.join("users.toml");
    let (user, password) = (unique_topic("v0user"), unique_topic("pw"));
    let mut file = UsersFile::default();
    file.users.insert(
        user.clone(),
        User::with_password(&password, Rights::everything()).expect("credential"),
    );
    file.save(&users).expect("save users file");
    let server = server_on(&dir.join("data"))
        .security_protocol(SecurityProtocol::SaslPlaintext)
        .users_file(&users)
        .start()
        .await
        .expect("server starts");
    (server, user, password)
}

/// Connects and sends SaslHandshake v0 for `mechanism`; panics unless it is accepted.
fn handshake_v0(addr: std::net::SocketAddr, mechanism: &'static str) -> RawClient {
    let mut raw = RawClient::connect(addr);
    let handshake = raw.call(
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
        0,
    );
    assert_eq!(handshake.error_code, 0, "SaslHandshake v0 {mechanism}");
    assert!(handshake.mechanisms.iter().any(|m| m.as_str() == mechanism));
    raw
}

fn assert_served(raw: &mut RawClient) {
    let metadata = raw
        .client()
        .call(&MetadataRequest::default().with_topics(None), 12)
        .expect("Metadata after a v0 authentication");
    assert_eq!(metadata.brokers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_after_a_v0_handshake_uses_raw_tokens_and_a_wrong_password_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, user, password) = start(dir.path()).await;
    let addr = server.local_addr();
    tokio::task::spawn_blocking(move || {
        let mut probe = RawClient::connect(addr);
        let versions = probe.call(&ApiVersionsRequest::default(), 3);
        let handshake = versions
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::SaslHandshake as i16)
            .expect("SaslHandshake advertised");
        assert_eq!((handshake.min_version, handshake.max_version), (0, 1));

        let mut raw = handshake_v0(addr, "PLAIN");
        send_token(
            raw.client().stream(),
            format!("\0{user}\0{password}").as_bytes(),
        );
        let answer = receive_token(raw.client().stream()).expect("an answer to the token");
        assert!(
            answer.is_empty(),
            "PLAIN answers an empty token: {answer:?}"
        );
        assert_served(&mut raw);

        let mut wrong = handshake_v0(addr, "PLAIN");
        send_token(
            wrong.client().stream(),
            format!("\0{user}\0not-{password}").as_bytes(),
        );
        assert_eq!(
            receive_token(wrong.client().stream()),
            None,
            "a wrong password is closed without an answer"
        );
        let mut unknown = handshake_v0(addr, "PLAIN");
        send_token(
            unknown.client().stream(),
            format!("\0{}\0{password}", unique_topic("nobody")).as_bytes(),
        );
        assert_eq!(receive_token(unknown.client().stream()), None);
    })
    .await
    .expect("client thread");
    server.shutdown().await;
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// Runs a SCRAM-SHA-256 client over raw tokens; `Some(())` when the server's final message
/// proves it knows the credential, `None` when it closes the connection instead.
fn scram_sha_256(stream: &mut TcpStream, user: &str, password: &str) -> Option<()> {
    let client_nonce = unique_topic("nonce");
    let client_first_bare = format!("n={user},r={client_nonce}");
    send_token(stream, format!("n,,{client_first_bare}").as_bytes());
    let server_first = String::from_utf8(receive_token(stream)?).expect("UTF-8");
    let field = |name: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {server_first:?}"))
            .to_owned()
    };
    let (nonce, salt, iterations) = (field("r="), field("s="), field("i="));
    assert!(nonce.starts_with(&client_nonce));
    let salt = B64.decode(salt).expect("salt");
    let iterations: u32 = iterations.parse().expect("iterations");
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations.try_into().expect("iterations > 0"),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, &client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac_sha256(stored_key.as_ref(), auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    send_token(
        stream,
        format!("{without_proof},p={}", B64.encode(proof)).as_bytes(),
    );
    let server_final = String::from_utf8(receive_token(stream)?).expect("UTF-8");
    let server_key = hmac_sha256(&salted, b"Server Key");
    let expected = B64.encode(hmac_sha256(&server_key, auth_message.as_bytes()));
    assert_eq!(server_final, format!("v={expected}"), "server signature");
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_after_a_v0_handshake_uses_raw_tokens_and_a_wrong_password_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, user, password) = start(dir.path()).await;
    let addr = server.local_addr();
    tokio::task::spawn_blocking(move || {
        let mut raw = handshake_v0(addr, "SCRAM-SHA-256");
        assert_eq!(
            scram_sha_256(raw.client().stream(), &user, &password),
            Some(()),
            "SCRAM over raw tokens"
        );
        assert_served(&mut raw);

        let mut wrong = handshake_v0(addr, "SCRAM-SHA-256");
        assert_eq!(
            scram_sha_256(wrong.client().stream(), &user, "not-the-password"),
            None,
            "a wrong password is closed without a server-final message"
        );
    })
    .await
    .expect("client thread");
    server.shutdown().await;
}
