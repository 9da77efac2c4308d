//! What several of the command line's tests share: an embedded server on a runtime of its
//! own beside a runtime for workers, and waiting for a condition.

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
