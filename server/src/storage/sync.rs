//! Group commit: requests that must be durable wait here for an fsync, and one fsync of a
//! target answers every request that was waiting for it when it started.
//!
//! Every fsync runs on a blocking thread. A target decides what a failed fsync means for
//! it (a partition drops its unsynced tail, the offsets log is rewritten before its next
//! append) before any waiter hears the result, so no later fsync that succeeds can
//! acknowledge data the failure made unreliable.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// Something whose writes can be made durable.
pub(crate) trait SyncTarget: Send + Sync + 'static {
    /// Makes everything written so far durable (blocking); on failure, leaves the target in
    /// a state that is safe to serve and to write to again.
    fn sync_now(&self) -> io::Result<()>;
}

impl SyncTarget for File {
    fn sync_now(&self) -> io::Result<()> {
        self.sync_data()
    }
}

struct SyncRequest {
    target: Arc<dyn SyncTarget>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Identity of a target: the address of what the `Arc` points to.
fn key(target: &Arc<dyn SyncTarget>) -> usize {
    Arc::as_ptr(target) as *const () as usize
}

/// Handle to the background task that fsyncs targets on behalf of waiting requests.
#[derive(Clone)]
pub(crate) struct Syncer {
    tx: mpsc::UnboundedSender<SyncRequest>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Syncer")
    }
}

impl Syncer {
    /// Starts the group-commit task; it ends when every handle is dropped.
    pub(crate) fn start() -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<SyncRequest>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                let mut targets: HashMap<usize, Arc<dyn SyncTarget>> = HashMap::new();
                for request in &waiting {
                    targets.insert(key(&request.target), request.target.clone());
                }
                let results = tokio::task::spawn_blocking(move || {
                    targets
                        .into_iter()
                        .map(|(key, target)| (key, target.sync_now().map_err(|e| e.to_string())))
                        .collect::<HashMap<_, _>>()
                })
                .await
                .unwrap_or_default();
                for request in waiting {
                    let result = results
                        .get(&key(&request.target))
                        .cloned()
                        .unwrap_or_else(|| Err("fsync task failed".to_string()));
                    let _ = request.done.send(result);
                }
            }
        });
        Syncer { tx }
    }

    /// Waits until everything written to `target` so far is on stable storage.
    pub(crate) async fn sync(&self, target: Arc<dyn SyncTarget>) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(SyncRequest { target, done })
            .map_err(|_| io::Error::other("fsync task stopped"))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(io::Error::other(message)),
            Err(_) => Err(io::Error::other("fsync task stopped")),
        }
    }
}
