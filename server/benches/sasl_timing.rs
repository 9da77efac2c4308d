//! SASL PLAIN timing by user: how long the server takes to refuse a known user's wrong
//! password, to refuse an unknown user, and to accept a right password. If an unknown user
//! were answered faster, a client could find out which users exist by timing; the server
//! runs a dummy verification of the same cost for unknown users.
//!
//! Run with `cargo bench -p steadfast-server --bench sasl_timing` (`-- --rounds N` for more
//! rounds). Without the `--bench` flag that `cargo bench` passes (as under `cargo test
//! --all-targets`) it does a smoke run of a few rounds. Prints the median, p10 and p90 of
//! each case over real TCP (SaslHandshake v1, then the timed SaslAuthenticate), and the
//! ratio of the unknown user's median to the known user's. Nothing is asserted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use steadfast_server::users::{Rights, User, UsersFile};
use steadfast_server::{SecurityProtocol, Server};
use steadfast_testkit::{unique_topic, RawClient};

/// One timed PLAIN authentication on a fresh connection: the SaslAuthenticate round trip.
fn timed_plain(addr: SocketAddr, user: &str, password: &str) -> (Duration, i16) {
    let mut raw = RawClient::connect(addr);
    let handshake = raw.call(
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        1,
    );
    assert_eq!(handshake.error_code, 0);
    let token = format!("\0{user}\0{password}").into_bytes();
    let request = SaslAuthenticateRequest::default().with_auth_bytes(token.into());
    let started = Instant::now();
    let answer = raw.call(&request, 2);
    (started.elapsed(), answer.error_code)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse::<usize>().ok())
        .unwrap_or(if full { 200 } else { 10 });
    let dir = tempfile::tempdir()?;
    let users_path = dir.path().join("users.toml");
    let (user, password) = (unique_topic("known"), unique_topic("pw"));
    let mut users = UsersFile::default();
    users.users.insert(
        user.clone(),
        User::with_password(&password, Rights::everything())?,
    );
    users.save(&users_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = runtime.block_on(
        Server::builder()
            .listen("127.0.0.1:0")
            .data_dir(dir.path().join("data"))
            .security_protocol(SecurityProtocol::SaslPlaintext)
            .users_file(&users_path)
            .start(),
    )?;
    let addr = server.local_addr();

    let unknown = unique_topic("unknown");
    type Case<'a> = (&'a str, &'a str, &'a str, i16);
    let cases: [Case; 3] = [
        ("known user, wrong password", &user, "not-the-password", 58),
        ("unknown user", &unknown, "not-the-password", 58),
        ("known user, right password", &user, &password, 0),
    ];
    let mut samples = vec![Vec::with_capacity(rounds); cases.len()];
    // Warm-up, then the cases interleaved so that drift of the machine affects all alike.
    for (_, name, pw, _) in &cases {
        timed_plain(addr, name, pw);
    }
    for _ in 0..rounds {
        for (i, (label, name, pw, expected)) in cases.iter().enumerate() {
            let (took, code) = timed_plain(addr, name, pw);
            anyhow::ensure!(code == *expected, "{label}: error code {code}");
            samples[i].push(took);
        }
    }
    println!("SASL PLAIN, SaslAuthenticate round trip, {rounds} rounds each:");
    println!("| case | median | p10 | p90 |");
    println!("|---|---|---|---|");
    let mut medians = Vec::new();
    for ((label, ..), mut times) in cases.iter().zip(samples) {
        times.sort();
        let median = percentile(&times, 50);
        medians.push(median);
        println!(
            "| {label} | {:.3} ms | {:.3} ms | {:.3} ms |",
            median.as_secs_f64() * 1e3,
            percentile(&times, 10).as_secs_f64() * 1e3,
            percentile(&times, 90).as_secs_f64() * 1e3,
        );
    }
    println!(
        "unknown / known-wrong median: {:.2}",
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
    runtime.block_on(server.shutdown());
    Ok(())
}
