//! What several of the command line's tests share: an embedded server on a runtime of its
//! own beside a runtime for workers, and waiting for a condition.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steadfast::server::ServerHandle;

/// An in-process server on its own runtime, and a runtime for workers; the test thread
/// itself may block.
pub(crate) struct Env {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) server_rt: tokio::runtime::Runtime,
    pub(crate) server: Option<ServerHandle>,
    pub(crate) bootstrap: String,
    _dir: tempfile::TempDir,
}

impl Env {
    /// Starts the server in a temporary directory.
    pub(crate) fn start() -> Self {
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("worker runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = server_rt.block_on(steadfast_testkit::start_server(&dir.path().join("data")));
        Env {
            bootstrap: server.bootstrap_servers(),
            rt,
            server_rt,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub(crate) fn create_topic(&self, topic: &str, partitions: i32) {
        self.server_rt.block_on(steadfast_testkit::create_topic(
            &self.bootstrap,
            topic,
            partitions,
            &[],
        ));
    }

    /// The sum of the high watermarks of `topic`'s partitions.
    pub(crate) fn end(&self, topic: &str, partitions: i32) -> i64 {
        (0..partitions)
            .map(|p| steadfast_testkit::watermarks(&self.bootstrap, topic, p).1)
            .sum()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.server_rt.block_on(server.shutdown());
        }
    }
}

/// Waits until `check` holds, polling, or fails saying what it waited for. `what` is
/// formatted only on failure, so it may show state gathered while waiting.
pub(crate) fn eventually(
    limit: Duration,
    what: impl std::fmt::Display,
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server (`steadfast server`) in a child process, so it can be killed with SIGKILL.
pub(crate) struct ChildServer {
    child: Child,
    pub(crate) bootstrap: String,
}

impl ChildServer {
    /// Starts a server on a port of its choosing over `data_dir`.
    pub(crate) fn start(data_dir: &Path) -> Self {
        ChildServer::start_on(data_dir, "127.0.0.1:0")
    }

    /// Starts a server listening on `listen` over `data_dir`; returns once it listens.
    pub(crate) fn start_on(data_dir: &Path, listen: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_steadfast"))
            .args(["server", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn steadfast server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .expect("address on the listening line")
            .to_owned();
        assert!(
            line.contains("listening on"),
            "unexpected first line: {line}"
        );
        ChildServer {
            child,
            bootstrap: addr,
        }
    }

    /// SIGKILL, and reaps the process.
    pub(crate) fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
