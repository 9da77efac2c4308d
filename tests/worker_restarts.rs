//! A worker in a child process, stopped hard (SIGKILL) or gracefully (SIGTERM) and started
//! again: finished offsets above the watermark are not handled twice, and a graceful stop
//! loses nothing and repeats nothing; delayed records a killed worker's relay held reach the
//! handler through its replacement, none before its time. The test binary runs itself as the
//! child: with
//! `STEADFAST_TEST_CHILD` set, a test function becomes the worker process.

use crate::support;

use std::fs::OpenOptions;
use std::io::Write;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use steadfast::message::headers::{parse_time_ms, DELIVER_AT};
use steadfast::{Context, Handler, HandlerError, Producer, Record, Retry, Worker};
use support::*;

const CHILD: &str = "STEADFAST_TEST_CHILD";

/// What a [`FileRecorder`] writes for each handled message.
#[derive(Debug, Clone, Copy)]
enum Line {
    /// Its offset.
    Offset,
    /// `<key> <due ms> <start ms>`: its key, its `steadfast-deliver-at` (-1 without one) and
    /// when the handler started.
    Delay,
}

/// Appends a line (see [`Line`]) for every handled message to a file; a message with
/// `sleep_ms` set sleeps first unless `sleep` is off (`STEADFAST_TEST_NO_SLEEP`).
#[derive(Debug)]
struct FileRecorder {
    file: Arc<Mutex<std::fs::File>>,
    sleep: bool,
    line: Line,
}

impl Handler for FileRecorder {
    type Message = Event;
    const GROUP: &'static str = "restarts";

    fn handle_message(
        &self,
        event: Event,
        cx: &Context,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
        let line = match self.line {
            Line::Offset => cx.offset().to_string(),
            Line::Delay => {
                let due = cx
                    .headers()
                    .get_str(DELIVER_AT)
                    .and_then(parse_time_ms)
                    .unwrap_or(-1);
                format!("{} {due} {}", event.key, wall_ms())
            }
        };
        let file = self.file.clone();
        let sleep = self.sleep && event.sleep_ms > 0;
        async move {
            if sleep {
                tokio::time::sleep(Duration::from_millis(event.sleep_ms)).await;
            }
            append_line(&file, &line)
        }
    }
}

/// Appends `line` to the recorders' file and flushes it, so a SIGKILL loses no line.
fn append_line(file: &Mutex<std::fs::File>, line: &str) -> Result<(), HandlerError> {
    let mut f = file.lock();
    writeln!(f, "{line}").map_err(HandlerError::transient)?;
    f.flush().map_err(HandlerError::transient)
}

/// The worker needs tokio's multi-thread runtime; tests here build their own (parent and child).
fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// The child: a worker on the topic and group given in the environment.
fn run_child() {
    let var =
        |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set for the child"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(var("STEADFAST_TEST_OUT"))
        .expect("output file");
    let file = Arc::new(Mutex::new(file));
    let relay = std::env::var("STEADFAST_TEST_RELAY").is_ok();
    let handler = FileRecorder {
        file,
        sleep: std::env::var("STEADFAST_TEST_NO_SLEEP").is_err(),
        line: if relay { Line::Delay } else { Line::Offset },
    };
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = multi_thread_runtime();
    runtime.block_on(async {
        let builder = Worker::builder()
            .brokers(var("STEADFAST_TEST_BOOTSTRAP"))
            .topic(var("STEADFAST_TEST_TOPIC"))
            .group(var("STEADFAST_TEST_GROUP"))
            .concurrency(16)
            .commit_interval(Duration::from_millis(100))
            .drain_timeout(Duration::from_secs(20))
            .retry(Retry::none())
            // A SIGKILLed member holds its partitions until its session times out (its delay
            // relay's too: the relay's consumer takes the worker's consumer properties).
            .kafka_property("session.timeout.ms", "6000");
        builder
            .relay_delayed_messages(relay)
            .handler(handler)
            .run_until_signal()
            .await
            .expect("worker runs");
    });
}

struct Case {
    _dir: tempfile::TempDir,
    server: steadfast::server::ServerHandle,
    bootstrap: String,
    topic: String,
    group: String,
    out: std::path::PathBuf,
}

impl Case {
    async fn new(prefix: &str) -> Case {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = steadfast_testkit::start_server(&dir.path().join("data")).await;
        let bootstrap = server.bootstrap_servers();
        let topic = steadfast_testkit::unique_topic(prefix);
        create_topic(&bootstrap, &topic, 1).await;
        Case {
            out: dir.path().join("handled.txt"),
            _dir: dir,
            server,
            bootstrap,
            group: format!("{topic}-group"),
            topic,
        }
    }

    fn spawn_child(&self, test: &str, no_sleep: bool) -> Child {
        self.spawn(test, no_sleep, false)
    }

    /// A child whose worker relays the topic's delayed messages and notes each record's due
    /// time ([`Line::Delay`]).
    fn spawn_relaying_child(&self, test: &str) -> Child {
        self.spawn(test, true, true)
    }

    fn spawn(&self, test: &str, no_sleep: bool, relay: bool) -> Child {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        let name = support::test_name(module_path!(), test);
        cmd.args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("STEADFAST_TEST_BOOTSTRAP", &self.bootstrap)
            .env("STEADFAST_TEST_TOPIC", &self.topic)
            .env("STEADFAST_TEST_GROUP", &self.group)
            .env("STEADFAST_TEST_OUT", &self.out)
            // The child's own test-harness lines would read as extra test results.
            .stdout(std::process::Stdio::null());
        if no_sleep {
            cmd.env("STEADFAST_TEST_NO_SLEEP", "1");
        }
        if relay {
            cmd.env("STEADFAST_TEST_RELAY", "1");
        }
        cmd.spawn().expect("child worker starts")
    }

    fn handled(&self) -> Vec<i64> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} failed");
}

async fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the child did not exit within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn after_a_sigkill_only_unfinished_messages_are_handled_again() {
    if std::env::var(CHILD).is_ok() {
        return run_child();
    }
    let runtime = multi_thread_runtime();
    runtime.block_on(async {
        let case = Case::new("sigkill").await;
        let mut events = vec![Event {
            sleep_ms: 600_000,
            ..Event {
                key: "slow".into(),
                seq: 1,
                ..Event::default()
            }
        }];
        events.extend((0..1_000).map(|i| Event {
            key: format!("k{i}"),
            seq: 1,
            ..Event::default()
        }));
        produce(&case.bootstrap, &case.topic, &events).await;

        let mut child = case.spawn_child(
            "after_a_sigkill_only_unfinished_messages_are_handled_again",
            false,
        );
        eventually(
            Duration::from_secs(60),
            "1,000 fast messages handled",
            || case.handled().len() >= 1_000,
        )
        .await;
        // The watermark stays at the slow message; the commit names the 1,000 finished above it.
        eventually(
            Duration::from_secs(20),
            "a commit with finished offsets",
            || {
                let (offset, metadata) = committed(&case.bootstrap, &case.group, &case.topic);
                // Stamped with the time the commit point was taken: `t<ms>|sf1;...`.
                let finished = metadata
                    .split_once('|')
                    .map_or(metadata.as_str(), |(_, m)| m);
                offset == Some(0) && metadata.starts_with('t') && finished.starts_with("sf1;1001;")
            },
        )
        .await;
        signal(&child, "KILL");
        wait_exit(&mut child, Duration::from_secs(10)).await;
        let before = case.handled().len();
        assert_eq!(before, 1_000);

        let mut again = case.spawn_child(
            "after_a_sigkill_only_unfinished_messages_are_handled_again",
            true,
        );
        eventually(
            Duration::from_secs(60),
            "the slow message handled after the restart",
            || case.handled().contains(&0),
        )
        .await;
        eventually(Duration::from_secs(20), "the commit at the log end", || {
            committed(&case.bootstrap, &case.group, &case.topic).0 == Some(1_001)
        })
        .await;
        signal(&again, "TERM");
        assert!(wait_exit(&mut again, Duration::from_secs(30))
            .await
            .success());
        let handled = case.handled();
        let replayed = handled.len() - before;
        println!("handled again after SIGKILL and restart: {replayed} (in flight at the kill: 1)");
        assert_eq!(
            &handled[before..],
            &[0],
            "only the unfinished message is handled again"
        );
        case.server.shutdown().await;
    });
}

#[test]
fn a_sigterm_mid_stream_then_a_restart_handles_every_message_once() {
    if std::env::var(CHILD).is_ok() {
        return run_child();
    }
    let runtime = multi_thread_runtime();
    runtime.block_on(async {
        let case = Case::new("sigterm").await;
        let events: Vec<Event> = (0..5_000)
            .map(|i| Event {
                key: format!("k{}", i % 300),
                seq: i,
                sleep_ms: 2,
                ..Event::default()
            })
            .collect();
        produce(&case.bootstrap, &case.topic, &events).await;

        let mut child = case.spawn_child(
            "a_sigterm_mid_stream_then_a_restart_handles_every_message_once",
            false,
        );
        eventually(Duration::from_secs(60), "1,000 messages handled", || {
            case.handled().len() >= 1_000
        })
        .await;
        signal(&child, "TERM");
        assert!(
            wait_exit(&mut child, Duration::from_secs(30))
                .await
                .success(),
            "graceful exit"
        );
        let first_run = case.handled().len();
        assert!(first_run < 5_000, "stopped mid-stream");

        let mut again = case.spawn_child(
            "a_sigterm_mid_stream_then_a_restart_handles_every_message_once",
            false,
        );
        eventually(Duration::from_secs(60), "every message handled", || {
            case.handled().len() >= 5_000
        })
        .await;
        eventually(Duration::from_secs(20), "the commit at the log end", || {
            committed(&case.bootstrap, &case.group, &case.topic).0 == Some(5_000)
        })
        .await;
        signal(&again, "TERM");
        assert!(wait_exit(&mut again, Duration::from_secs(30))
            .await
            .success());
        let mut handled = case.handled();
        println!(
            "first run handled {first_run}, second run {}",
            handled.len() - first_run
        );
        handled.sort_unstable();
        assert_eq!(
            handled,
            (0..5_000).collect::<Vec<i64>>(),
            "every message handled exactly once"
        );
        case.server.shutdown().await;
    });
}

#[test]
fn delayed_records_a_sigkilled_relaying_worker_held_reach_the_handler_through_its_replacement() {
    const TOTAL: usize = 2_000;
    const TEST: &str =
        "delayed_records_a_sigkilled_relaying_worker_held_reach_the_handler_through_its_replacement";
    if std::env::var(CHILD).is_ok() {
        return run_child();
    }
    let runtime = multi_thread_runtime();
    runtime.block_on(async {
        let case = Case::new("delayed-kill").await;
        let mut child = case.spawn_relaying_child(TEST);
        // Due 2–12 s after sending (a fixed spread: which records wait where depends only on
        // the clock); the kill comes while most still wait in the buckets or in memory.
        let producer = Producer::connect(&case.bootstrap);
        let start = wall_ms();
        let sends = (0..TOTAL).map(|i| {
            let event = Event {
                key: format!("d{i}"),
                seq: i as u64,
                ..Event::default()
            };
            let due = start + 2_000 + (i as i64 * 4_999) % 10_000;
            let record = Record::of(&event).expect("encodes").topic(case.topic.clone());
            let producer = producer.clone();
            async move {
                let when = std::time::UNIX_EPOCH + Duration::from_millis(due as u64);
                producer.send_record_at(record, when).await.expect("sent");
            }
        });
        futures::future::join_all(sends).await;
        let seen = || {
            let lines = std::fs::read_to_string(&case.out).unwrap_or_default();
            let mut keys: Vec<String> = lines
                .lines()
                .filter_map(|l| l.split(' ').next().map(str::to_owned))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys.len()
        };
        eventually(Duration::from_secs(60), "30% of the delayed records handled", || {
            seen() >= TOTAL * 3 / 10
        })
        .await;
        signal(&child, "KILL");
        wait_exit(&mut child, Duration::from_secs(10)).await;
        let at_kill = seen();
        assert!(
            at_kill < TOTAL,
            "every record was handled before the kill: the kill proved nothing"
        );
        let mut again = case.spawn_relaying_child(TEST);
        eventually(Duration::from_secs(90), "every delayed record handled", || {
            seen() == TOTAL
        })
        .await;
        signal(&again, "TERM");
        assert!(wait_exit(&mut again, Duration::from_secs(30))
            .await
            .success());
        let lines = std::fs::read_to_string(&case.out).expect("handled records");
        let mut late = Vec::new();
        for line in lines.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (key, due, started): (&str, i64, i64) = (
                fields[0],
                fields[1].parse().expect("due"),
                fields[2].parse().expect("start"),
            );
            assert!(due > 0, "{key} reached the handler without `{DELIVER_AT}`");
            assert!(
                started >= due,
                "{key} reached the handler {} ms before its time",
                due - started
            );
            late.push(started - due);
        }
        late.sort_unstable();
        println!(
            "{TOTAL} delayed records, {at_kill} handled at the SIGKILL, {} handler runs in all; lateness p50 {} ms, max {} ms",
            late.len(),
            late[late.len() / 2],
            late[late.len() - 1]
        );
        case.server.shutdown().await;
    });
}
