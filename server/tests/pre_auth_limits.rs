//! What a client can make the server hold before it authenticates, and how long it may hold
//! a connection, over real TCP: a 64 MiB frame before authentication is refused before it is
//! read, a connection that does not authenticate in time is closed, an idle connection is
//! closed after its timeout, and a connection over the per-address or total limit is closed
//! at once.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiVersionsRequest, MetadataRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;
use steadfast_server::users::{Rights, User, UsersFile};
use steadfast_server::{SecurityProtocol, ServerBuilder};
use steadfast_testkit::{server_on, unique_topic, RawClient};

use crate::child_server::ServerProcess;
use crate::support::{temp_server, wait_for, with_clients};

/// Peak resident memory the 100 refused connections may add to the server.
const RSS_BOUND_BYTES: u64 = 50 * 1000 * 1000;

/// A users file with one user of random name and password, who may do everything.
fn write_users(path: &Path) -> (String, String) {
    let user = unique_topic("user");
    let password = unique_topic("pw");
    let mut file = UsersFile::default();
    file.users.insert(
        user.clone(),
        User::with_password(&password, Rights::everything()).expect("credential"),
    );
    file.save(path).expect("save users file");
    (user, password)
}

/// Whether the server closes `stream` (EOF or reset) before `deadline`; bytes it sends
/// meanwhile are skipped.
fn closed_before(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// SaslHandshake v1 and SaslAuthenticate with a PLAIN token; panics unless both succeed.
fn authenticate_plain(raw: &mut RawClient, user: &str, password: &str) {
    let handshake = raw.call(
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        1,
    );
    assert_eq!(handshake.error_code, 0, "SaslHandshake");
    let token = format!("\0{user}\0{password}").into_bytes();
    let answer = raw.call(
        &SaslAuthenticateRequest::default().with_auth_bytes(token.into()),
        2,
    );
    assert_eq!(answer.error_code, 0, "SaslAuthenticate");
}

/// A server on a SASL_PLAINTEXT listener with a fresh users file in `dir`.
fn sasl_server(dir: &Path) -> (ServerBuilder, String, String) {
    let users = dir.join("users.toml");
    let (user, password) = write_users(&users);
    let builder = server_on(&dir.join("data"))
        .security_protocol(SecurityProtocol::SaslPlaintext)
        .users_file(&users);
    (builder, user, password)
}

/// 100 unauthenticated connections each announce a 64 MiB request (under the 100 MiB
/// request limit, over the 512 KiB pre-authentication one) and send 2 MiB of it: each is
/// closed long before the 10 s authentication deadline, and the server process's peak
/// resident memory grows by less than 50 MB (reading those bodies would take 200 MiB).
#[test]
fn unauthenticated_64_mib_frames_are_refused_without_holding_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users.toml");
    write_users(&users);
    let server = ServerProcess::spawn_with(
        &dir.path().join("data"),
        &[
            OsStr::new("--users-file"),
            users.as_os_str(),
            OsStr::new("--security-protocol"),
            OsStr::new("SASL_PLAINTEXT"),
        ],
    );
    let addr = server.addr();
    // One ordinary exchange first, so that what the server sets up once is in the baseline.
    let versions = RawClient::connect(addr).call(&ApiVersionsRequest::default(), 3);
    assert_eq!(versions.error_code, 0);
    let before = server.peak_rss();

    let started = Instant::now();
    let mut connections: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let announced = (64i32 << 20).to_be_bytes();
    let body = vec![0x5a_u8; 2 << 20];
    for stream in &mut connections {
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .expect("write timeout");
        // The server may close (and reset) the connection before all of it is written.
        let _ = stream
            .write_all(&announced)
            .and_then(|_| stream.write_all(&body));
    }
    let grown = server.peak_rss().saturating_sub(before);
    let deadline = started + Duration::from_secs(5);
    let still_open = connections
        .iter_mut()
        .filter_map(|stream| (!closed_before(stream, deadline)).then_some(()))
        .count();
    eprintln!(
        "server peak RSS grew by {:.1} MB over 100 refused 64 MiB frames",
        grown as f64 / 1e6
    );
    assert_eq!(still_open, 0, "connections left open by the server");
    assert!(
        grown < RSS_BOUND_BYTES,
        "peak RSS grew by {grown} bytes (bound {RSS_BOUND_BYTES})"
    );
    // The server still serves.
    let versions = RawClient::connect(addr).call(&ApiVersionsRequest::default(), 3);
    assert_eq!(versions.error_code, 0);
    server.stop();
}

/// A connection that keeps sending requests stays open past the idle timeout; once it is
/// silent it is closed after the timeout, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_its_timeout() {
    const IDLE: Duration = Duration::from_millis(600);
    let (_dir, server) = temp_server(|server| server.connections_max_idle(IDLE)).await;
    with_clients(server, move |addr| {
        let mut raw = RawClient::connect(addr);
        let busy_until = Instant::now() + IDLE * 3;
        while Instant::now() < busy_until {
            let versions = raw
                .client()
                .call(&ApiVersionsRequest::default(), 3)
                .expect("an active connection is served past the idle timeout");
            assert_eq!(versions.error_code, 0);
            std::thread::sleep(IDLE / 6);
        }
        let silent_from = Instant::now();
        let stream = raw.client().stream();
        assert!(
            closed_before(stream, silent_from + Duration::from_secs(10)),
            "an idle connection is still open 10 s later"
        );
        let after = silent_from.elapsed();
        // The server counts from its last response, a little before `silent_from`.
        assert!(
            after >= IDLE - IDLE / 4,
            "closed {after:?} after the last request, before the {IDLE:?} timeout"
        );
    })
    .await;
}

/// On a SASL listener, a connection that keeps sending ApiVersions but never authenticates
/// is closed at the authentication deadline; one that authenticated keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_connection_is_closed_at_the_authentication_deadline() {
    const DEADLINE: Duration = Duration::from_millis(800);
    let dir = tempfile::tempdir().expect("tempdir");
    let (builder, user, password) = sasl_server(dir.path());
    let server = builder
        .authentication_timeout(DEADLINE)
        .start()
        .await
        .expect("server starts");
    with_clients(server, move |addr| {
        let connected = Instant::now();
        let mut lingering = RawClient::connect(addr);
        let mut authenticated = RawClient::connect(addr);
        authenticate_plain(&mut authenticated, &user, &password);
        let give_up = connected + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < give_up,
                "an unauthenticated connection was served for 10 s"
            );
            if lingering
                .client()
                .call(&ApiVersionsRequest::default(), 3)
                .is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let closed_after = connected.elapsed();
        assert!(
            closed_after >= DEADLINE,
            "closed after {closed_after:?}, before the {DEADLINE:?} deadline"
        );
        let metadata = authenticated
            .client()
            .call(&MetadataRequest::default().with_topics(None), 12)
            .expect("the authenticated connection is served past the deadline");
        assert_eq!(metadata.brokers.len(), 1);
    })
    .await;
}

/// Opens `limit` served connections, then one more, which the server closes at once; once
/// one of the first is closed, a new connection is served again.
fn the_connection_over_the_limit_is_closed_at_once(addr: SocketAddr, limit: usize) {
    let mut open: Vec<RawClient> = (0..limit)
        .map(|_| {
            let mut raw = RawClient::connect(addr);
            let versions = raw.call(&ApiVersionsRequest::default(), 3);
            assert_eq!(versions.error_code, 0);
            raw
        })
        .collect();
    let mut over = TcpStream::connect(addr).expect("the kernel accepts the connection");
    assert!(
        closed_before(&mut over, Instant::now() + Duration::from_secs(5)),
        "connection {} was not closed",
        limit + 1
    );
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    wait_for(
        deadline,
        Duration::from_millis(20),
        "no connection served 10 s after one of the first closed",
        || {
            let mut raw = RawClient::connect(addr);
            if let Ok(versions) = raw.client().call(&ApiVersionsRequest::default(), 3) {
                assert_eq!(versions.error_code, 0);
                return true;
            }
            false
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_the_per_address_limit_is_closed_at_once() {
    let (_dir, server) = temp_server(|server| server.max_connections_per_ip(3)).await;
    with_clients(server, move |addr| {
        the_connection_over_the_limit_is_closed_at_once(addr, 3)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_the_total_limit_is_closed_at_once() {
    let (_dir, server) = temp_server(|server| server.max_connections(2)).await;
    with_clients(server, move |addr| {
        the_connection_over_the_limit_is_closed_at_once(addr, 2)
    })
    .await;
}
