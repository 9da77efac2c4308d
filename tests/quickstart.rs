//! The README's first command, `cargo run --release --example quickstart`, as a user runs it:
//! the example binary to completion, with the default log filter. It must exit 0, print no
//! ERROR or WARN line (a librdkafka client left alive when the embedded server stops logs
//! errors until it is destroyed), and end with its summary, whose outcomes account for every
//! event it produced.
//!
//! The binary is `target/<profile>/examples/quickstart`, built with the test binaries by
//! `cargo nextest run` / `cargo test` without target filters (scripts/test.sh); run
//! `cargo build --example quickstart` first when running this test alone.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support;

/// A line of output and when it was read.
struct Line {
    at: Instant,
    text: String,
}

fn forward(from: impl Read + Send + 'static, to: mpsc::Sender<Line>) {
    std::thread::spawn(move || {
        for text in BufReader::new(from).lines().map_while(Result::ok) {
            if to
                .send(Line {
                    at: Instant::now(),
                    text,
                })
                .is_err()
            {
                break;
            }
        }
    });
}

/// The count in the summary table row that starts with `label`.
fn row(lines: &[String], label: &str) -> Option<u64> {
    lines
        .iter()
        .find(|l| l.starts_with(&format!("| {label}")))
        .and_then(|l| l.trim_end_matches('|').rsplit('|').next())
        .and_then(|n| n.trim().parse().ok())
}

#[test]
fn quickstart_runs_to_its_summary_and_exits_cleanly() {
    let mut child = Command::new(support::example_binary("quickstart"))
        .env_remove("RUST_LOG")
        .env_remove("STEADFAST_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the quickstart starts");
    let (tx, rx) = mpsc::channel();
    forward(child.stdout.take().expect("stdout"), tx.clone());
    forward(child.stderr.take().expect("stderr"), tx);

    // It bails by itself after 60 s without progress; the deadline is only against a hang.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("the quickstart's status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output: Vec<String> = rx.try_iter().map(|l| l.text).collect();
            panic!(
                "the quickstart did not exit within 180 s:\n{}",
                output.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let exited = Instant::now();
    // The reader threads end with the pipes.
    let lines: Vec<Line> = rx.iter().collect();
    let text: Vec<String> = lines.iter().map(|l| l.text.clone()).collect();
    let output = text.join("\n");
    println!("{output}");

    assert!(
        status.success(),
        "the quickstart failed ({status}):\n{output}"
    );
    let noisy: Vec<&String> = text
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(
        noisy.is_empty(),
        "the quickstart logs no error or warning:\n{}",
        noisy
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );

    let finished = lines
        .iter()
        .find(|l| l.text.starts_with("finished in "))
        .unwrap_or_else(|| panic!("the summary's first line, `finished in ...`:\n{output}"));
    println!(
        "exited {:?} after printing its summary",
        exited.saturating_duration_since(finished.at)
    );
    let produced: u64 = text
        .iter()
        .find_map(|l| {
            l.strip_prefix("produced ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("a `produced N order events` line:\n{output}"));

    let count = |label: &str| {
        row(&text, label).unwrap_or_else(|| panic!("a summary row `{label}`:\n{output}"))
    };
    let handled = count("handled");
    let duplicates = count("duplicates seen");
    let stale = count("stale versions seen");
    let dead: u64 = text
        .iter()
        .filter(|l| l.starts_with("| dead-lettered: "))
        .filter_map(|l| l.trim_end_matches('|').rsplit('|').next())
        .map(|n| n.trim().parse::<u64>().expect("a count"))
        .sum();
    assert_eq!(
        handled + duplicates + stale + dead,
        produced,
        "every produced event is handled, dead-lettered, or seen as a duplicate or stale:\n{output}"
    );
    // The burst has all of these; each outcome shows in the summary.
    assert!(handled > 0, "{output}");
    assert!(duplicates > 0, "{output}");
    assert!(stale > 0, "{output}");
    assert!(count("retried in place (failed tries)") > 0, "{output}");
    assert!(count("sent to orders.billing.retry.1") > 0, "{output}");
    for class in ["permanent", "transient"] {
        assert!(
            row(&text, &format!("dead-lettered: {class}")).is_some_and(|n| n > 0),
            "dead-lettered as {class}:\n{output}"
        );
    }
}
