//! A client cannot tell which users exist from SCRAM's answers: the salt an unknown user gets
//! is the same for the same name across a restart of the server (as a real user's salt is)
//! and differs between names. Runs the server as a child process, so that a restart is a
//! new process. (PLAIN's timing for unknown and known users is printed by the
//! `sasl_timing` benchmark, not asserted here.)

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;

use base64::Engine as _;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use steadfast_server::users::{Rights, User, UsersFile};
use steadfast_testkit::{unique_topic, RawClient};

use crate::child_server::ServerProcess;

/// The salt (base64) the server's first SCRAM message gives `user` for `mechanism`.
fn scram_salt(addr: SocketAddr, mechanism: &'static str, user: &str) -> String {
    let mut raw = RawClient::connect(addr);
    let handshake = raw.call(
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
        1,
    );
    assert_eq!(handshake.error_code, 0, "SaslHandshake {mechanism}");
    let nonce = unique_topic("nonce");
    let client_first = format!("n,,n={user},r={nonce}").into_bytes();
    let server_first = raw.call(
        &SaslAuthenticateRequest::default().with_auth_bytes(client_first.into()),
        2,
    );
    assert_eq!(server_first.error_code, 0, "client-first for {user}");
    let text = String::from_utf8(server_first.auth_bytes.to_vec()).expect("UTF-8");
    let salt = text
        .split(',')
        .find_map(|a| a.strip_prefix("s="))
        .unwrap_or_else(|| panic!("no salt in {text:?}"))
        .to_owned();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&salt)
        .expect("salt is base64");
    assert!(decoded.len() >= 16, "salt of {} bytes", decoded.len());
    salt
}

fn start(data: &Path, users: &Path) -> ServerProcess {
    ServerProcess::spawn_with(
        data,
        &[
            OsStr::new("--users-file"),
            users.as_os_str(),
            OsStr::new("--security-protocol"),
            OsStr::new("SASL_PLAINTEXT"),
        ],
    )
}

#[test]
fn decoy_salts_of_unknown_users_are_stable_across_a_restart_and_differ_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users.toml");
    let mut file = UsersFile::default();
    let known = unique_topic("known");
    file.users.insert(
        known.clone(),
        User::with_password(&unique_topic("pw"), Rights::everything()).expect("credential"),
    );
    file.save(&users).expect("save users file");
    let data = dir.path().join("data");
    let (first, second) = (unique_topic("nobody"), unique_topic("nobody"));
    let salts = |server: &ServerProcess| {
        let addr = server.addr();
        [
            scram_salt(addr, "SCRAM-SHA-512", &first),
            scram_salt(addr, "SCRAM-SHA-512", &second),
            scram_salt(addr, "SCRAM-SHA-256", &first),
            scram_salt(addr, "SCRAM-SHA-512", &known),
        ]
    };

    let server = start(&data, &users);
    let before = salts(&server);
    assert_eq!(before, salts(&server), "salts change between two exchanges");
    server.stop();
    let server = start(&data, &users);
    let after = salts(&server);
    server.stop();

    assert_eq!(before, after, "salts changed across the restart");
    assert_ne!(before[0], before[1], "two unknown names got the same salt");
    assert_ne!(before[0], before[2], "one salt for both mechanisms");
    let stored = &file.users[&known]
        .scram_sha_512
        .as_ref()
        .expect("credential")
        .salt;
    assert_eq!(&before[3], stored, "a known user gets the file's salt");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let secret = std::fs::read_dir(&data)
            .expect("data dir")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().contains("decoy"))
            .expect("a decoy secret file in the data directory");
        let mode = secret.metadata().expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{:?}", secret.path());
    }
}
