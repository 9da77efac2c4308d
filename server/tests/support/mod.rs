//! Setup the server's protocol tests share: a server on a temporary directory of its own,
//! raw clients run on a blocking thread against it, and polling with a time limit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use steadfast_server::{ServerBuilder, ServerHandle};
use steadfast_testkit::server_on;
use tempfile::TempDir;

/// Starts a server on a fresh temporary directory, with the builder `configure` makes of
/// `server_on(dir)`. The directory is deleted when the returned `TempDir` is dropped: keep
/// it until the server has shut down.
pub(crate) async fn temp_server(
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (TempDir, ServerHandle) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = configure(server_on(dir.path()))
        .start()
        .await
        .expect("server starts");
    (dir, server)
}

/// Runs `clients` with the server's address on a blocking thread (raw clients block on
/// their sockets), then shuts the server down and returns what `clients` returned. A panic
/// in `clients` fails the test.
pub(crate) async fn with_clients<T: Send + 'static>(
    server: ServerHandle,
    clients: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> T {
    let addr = server.local_addr();
    let result = tokio::task::spawn_blocking(move || clients(addr))
        .await
        .expect("client thread");
    server.shutdown().await;
    result
}

/// Calls `done` until it returns true, pausing `pause` between calls (yielding the thread
/// if it is zero); panics with `what` if it has not once `deadline` has passed.
pub(crate) fn wait_for(
    deadline: Instant,
    pause: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        if pause.is_zero() {
            std::thread::yield_now();
        } else {
            std::thread::sleep(pause);
        }
    }
}
