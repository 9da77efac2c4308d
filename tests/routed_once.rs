//! A routed record's copy lands once: a worker process SIGKILLed after its dead-letter copy
//! was acknowledged and before the source offset was committed leaves exactly one copy — the
//! next owner finds it and skips the record instead of routing it again. Runs the `ledger`
//! example as the worker process (scripts/test.sh builds it first).

use crate::support;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// Starts a ledger worker that commits only at a revoke or shutdown (never on a timer), with
/// its metrics on `metrics_port`.
fn start_worker(args: &[String], log: &Path, metrics_port: u16) -> Child {
    Command::new(example_binary("ledger"))
        .args(args)
        .env("RUST_LOG", "info")
        .env(
            "STEADFAST_OBSERVE_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("STEADFAST_COMMIT_INTERVAL_MS", "3600000")
        .env("STEADFAST_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("STEADFAST_KAFKA_HEARTBEAT_INTERVAL_MS", "1000")
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("log file"))
        .spawn()
        .expect("the ledger worker starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_after_its_dead_letter_copy_was_acknowledged_leaves_one_copy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(&dir.path().join("data")).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "routed-once", 1).await;
    let schema = fresh_schema();
    let poison = serde_json::json!({
        "txn": "t-poison", "account": "a", "amount": 1, "version": 1, "poison": true
    });
    produce_raw(
        &bootstrap,
        &topic,
        &[(b"a".to_vec(), serde_json::to_vec(&poison).expect("encodes"))],
    )
    .await;
    let args = crate::ledger_end_to_end::ledger_args(&bootstrap, &topic, &group, &schema);
    let dlq = format!("{topic}.dlq");

    let mut first = start_worker(&args, &dir.path().join("w1.log"), free_port());
    // It creates the dead-letter topic before it consumes.
    eventually(Duration::from_secs(60), "the first worker started", || {
        std::fs::read_to_string(dir.path().join("w1.log"))
            .is_ok_and(|log| log.contains("worker started"))
    })
    .await;
    eventually(Duration::from_secs(60), "the dead-letter copy", || {
        log_end(&bootstrap, &dlq) == 1
    })
    .await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    assert_ne!(
        committed(&bootstrap, &group, &topic).0,
        Some(1),
        "the killed worker must not have committed the routed record (the window under test)"
    );

    let port = free_port();
    let mut second = start_worker(&args, &dir.path().join("w2.log"), port);
    let took_over = {
        let (b, g, t) = (bootstrap.clone(), group.clone(), topic.clone());
        move || committed(&b, &g, &t).0 == Some(1)
    };
    // The next owner commits only at its shutdown: stop it once the record is finished
    // there, skipped (its copy found) or dead-lettered (again).
    eventually(
        Duration::from_secs(60),
        "the record finished by the second worker",
        || {
            let metrics = http_get(port, "/metrics");
            ["skipped", "dead_lettered"].iter().any(|outcome| {
                metrics.lines().any(|line| {
                    line.starts_with("steadfast_messages_total")
                        && line.contains(&format!("outcome=\"{outcome}\""))
                        && !line.ends_with(" 0")
                })
            })
        },
    )
    .await;
    let pid = second.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = second.wait().expect("the second worker exits");
    assert!(status.success(), "SIGTERM drains and exits 0: {status:?}");
    eventually(Duration::from_secs(10), "the record committed", took_over).await;
    let copies = log_end(&bootstrap, &dlq);
    let log = std::fs::read_to_string(dir.path().join("w2.log")).unwrap_or_default();
    assert_eq!(
        copies, 1,
        "one dead-letter copy, not one per worker; second worker's log:\n{log}"
    );
    server.shutdown().await;
}
