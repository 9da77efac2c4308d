//! SIGTERM and SIGINT, which stop a worker run with `Worker::run_until_signal`.

use crate::error::WorkerError;

/// SIGTERM and SIGINT (Ctrl-C elsewhere), listened for from creation on.
#[cfg(unix)]
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    /// Listens from now on.
    pub(super) fn new() -> Result<Self, WorkerError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(WorkerError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(WorkerError::Signal)?,
        })
    }
    /// The next signal; `None` once no more can arrive.
    pub(super) async fn next(&mut self) -> Option<()> {
        tokio::select! {
            s = self.term.recv() => s,
            s = self.int.recv() => s,
        }
    }
}

/// Ctrl-C, listened for from creation on.
#[cfg(not(unix))]
pub(super) struct Signals;

#[cfg(not(unix))]
impl Signals {
    /// Listens from now on.
    pub(super) fn new() -> Result<Self, WorkerError> {
        Ok(Signals)
    }
    /// The next Ctrl-C; `None` once no more can arrive.
    pub(super) async fn next(&mut self) -> Option<()> {
        tokio::signal::ctrl_c().await.ok()
    }
}
