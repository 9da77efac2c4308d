//! Calls that wait on the broker, given a limit: a synchronous commit to a group coordinator
//! that is gone waits until librdkafka gives up on it (`session.timeout.ms`, 45 s by
//! default), longer than the grace period a deployment gives a stopping pod.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How a call given a limit ([`run_within`]) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Within {
    /// It returned in time.
    Ended,
    /// It panicked in time.
    Panicked,
    /// It was still running at the limit; it goes on, holding what it took, until it ends.
    TimedOut,
    /// No thread could be made for it: it was not run.
    NotRun,
}

/// Runs `work` on a thread of its own and waits for it up to `limit`. Past the limit it goes
/// on (holding what it took, a client say) until it ends; the process does not wait for it at
/// exit.
pub(crate) fn run_within(
    limit: Duration,
    name: &str,
    work: impl FnOnce() + Send + 'static,
) -> Within {
    let (done, ended) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("steadfast-{name}"))
        .spawn(move || {
            work();
            // A panic above drops `done` without this.
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => match ended.recv_timeout(limit) {
            Ok(()) => Within::Ended,
            Err(RecvTimeoutError::Disconnected) => Within::Panicked,
            Err(RecvTimeoutError::Timeout) => Within::TimedOut,
        },
        Err(e) => {
            tracing::warn!(error = %e, "no thread for the {name}");
            Within::NotRun
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_waited_for_until_it_ends_panics_or_runs_past_the_limit() {
        let (tx, rx) = mpsc::channel();
        let quick = run_within(Duration::from_secs(10), "quick", move || {
            tx.send(1).expect("sent");
        });
        assert_eq!(quick, Within::Ended);
        assert_eq!(rx.try_recv(), Ok(1), "it ran before the call returned");
        let panicking = run_within(Duration::from_secs(10), "panicking", || {
            panic!("on purpose")
        });
        assert_eq!(panicking, Within::Panicked);
        let (release, wait) = mpsc::channel::<()>();
        let (finished, finish) = mpsc::channel();
        let stuck = run_within(Duration::from_millis(20), "stuck", move || {
            let _ = wait.recv();
            finished.send(()).expect("sent");
        });
        assert_eq!(stuck, Within::TimedOut);
        release.send(()).expect("released");
        finish
            .recv_timeout(Duration::from_secs(10))
            .expect("the work past the limit still ends");
    }
}
