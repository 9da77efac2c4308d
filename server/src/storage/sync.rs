//! Group commit: produce requests that must be durable wait here for an fsync, and one
//! fsync of a file answers every request that was waiting for it when it started.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

struct SyncRequest {
    file: Arc<File>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the background task that fsyncs files on behalf of waiting requests.
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
                let mut files: HashMap<usize, Arc<File>> = HashMap::new();
                for request in &waiting {
                    files.insert(Arc::as_ptr(&request.file) as usize, request.file.clone());
                }
                let results = tokio::task::spawn_blocking(move || {
                    files
                        .into_iter()
                        .map(|(ptr, file)| (ptr, file.sync_data().map_err(|e| e.to_string())))
                        .collect::<HashMap<_, _>>()
                })
                .await
                .unwrap_or_default();
                for request in waiting {
                    let result = results
                        .get(&(Arc::as_ptr(&request.file) as usize))
                        .cloned()
                        .unwrap_or_else(|| Err("fsync task failed".to_string()));
                    let _ = request.done.send(result);
                }
            }
        });
        Syncer { tx }
    }

    /// Waits until everything written to `file` so far is on stable storage.
    pub(crate) async fn sync(&self, file: Arc<File>) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(SyncRequest { file, done })
            .map_err(|_| io::Error::other("fsync task stopped"))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(io::Error::other(message)),
            Err(_) => Err(io::Error::other("fsync task stopped")),
        }
    }
}
