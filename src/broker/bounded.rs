//! Calls that wait on the broker, given a limit: a synchronous commit to a group coordinator
//! that is gone waits until librdkafka gives up on it (`session.timeout.ms`, 45 s by
//! default), longer than the grace period a deployment gives a stopping pod.

use std::time::Duration;

/// Runs `work` on a thread of its own and waits for it up to `limit`; whether it ended in
/// time. Past the limit it goes on (holding what it took, a client say) until it ends; the
/// process does not wait for it at exit.
pub(crate) fn run_within(
    limit: Duration,
    name: &str,
    work: impl FnOnce() + Send + 'static,
) -> bool {
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("steadfast-{name}"))
        .spawn(move || {
            work();
            drop(done);
        });
    match spawned {
        Ok(_) => ended.recv_timeout(limit) != Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        Err(e) => {
            tracing::warn!(error = %e, "no thread for the {name}; it was not run");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_that_ends_in_time_is_waited_for_and_work_past_the_limit_is_left_running() {
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(run_within(Duration::from_secs(10), "quick", move || {
            tx.send(1).expect("sent");
        }));
        assert_eq!(rx.try_recv(), Ok(1), "it ran before the call returned");
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (finished, finish) = std::sync::mpsc::channel();
        assert!(!run_within(Duration::from_millis(20), "stuck", move || {
            let _ = wait.recv();
            finished.send(()).expect("sent");
        }));
        release.send(()).expect("released");
        finish
            .recv_timeout(Duration::from_secs(10))
            .expect("the work past the limit still ends");
    }
}
