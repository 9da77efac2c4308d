//! The worker's blocking helper tasks that hold librdkafka clients of their own (read-backs
//! of retry state, reads of the tiers' log ends, the close of the admin client that created
//! missing topics at the start): the worker waits for them before it
//! returns, so that no client of it outlives its stop (a client whose broker goes away
//! after the worker returned — an embedded server shut down next, say — logs its broker
//! connections down).

use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// The helper tasks still running, or ended and not pruned yet.
#[derive(Debug, Default)]
pub(crate) struct Helpers {
    running: Mutex<Vec<JoinHandle<()>>>,
}

impl Helpers {
    /// Keeps `task` until it ends; forgets those that ended.
    pub(crate) fn track(&self, task: JoinHandle<()>) {
        let mut running = self.running.lock();
        running.retain(|t| !t.is_finished());
        running.push(task);
    }

    /// Waits up to `limit` for every tracked task to end; how many were still running then.
    pub(crate) async fn wait(&self, limit: Duration) -> usize {
        let tasks = std::mem::take(&mut *self.running.lock());
        let deadline = tokio::time::Instant::now() + limit;
        let mut left = 0;
        for task in tasks {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "a worker's helper task failed"),
                Err(_) => left += 1,
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::Helpers;

    /// The wait returns once a tracked task ended, not before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wait_ends_when_the_tracked_tasks_have_ended() {
        let helpers = Helpers::default();
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        helpers.track(tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(200));
            flag.store(true, Ordering::SeqCst);
        }));
        assert_eq!(helpers.wait(Duration::from_secs(10)).await, 0);
        assert!(
            ended.load(Ordering::SeqCst),
            "the wait returned before the task ended"
        );
    }

    /// A task that runs past the limit is counted, and the wait returns at the limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_past_the_limit_is_counted_as_left() {
        let helpers = Helpers::default();
        let release = Arc::new(AtomicBool::new(false));
        let until = release.clone();
        helpers.track(tokio::task::spawn_blocking(move || {
            while !until.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
        assert_eq!(helpers.wait(Duration::from_millis(50)).await, 1);
        release.store(true, Ordering::SeqCst);
    }
}
