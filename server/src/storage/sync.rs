//! Group commit: requests that must be durable wait here for an fsync, and one fsync of a
//! target answers every request that was waiting for it when it started.
//!
//! Every fsync runs on a blocking thread. A target decides what a failed fsync means for
//! it (a partition drops its unsynced tail, the offsets log is rewritten before its next
//! append) before any waiter hears the result, so no later fsync that succeeds can
//! acknowledge data the failure made unreliable.
//!
//! Batched across partitions: when a round has many targets (at least [`BATCH_THRESHOLD`]
//! that can take part), one `syncfs` per file system replaces an fsync per target. It
//! costs about one journal commit, where thousands of fsyncs cost one each (1.9 ms per
//! file on the benchmark machine, 0.25 s for `syncfs` over 1,000 dirty files). When
//! `syncfs` fails, every target of that file system is fsynced on its own, so each learns
//! its own result (Linux reports a write-back error to a file's next fsync even when
//! `syncfs` has seen it).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// Fewest targets of one file system in one round for which a `syncfs` replaces their
/// fsyncs.
pub(crate) const BATCH_THRESHOLD: usize = 16;

/// What a target had written when a batched sync began, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncMark {
    /// The device (file system) the target's data is on.
    pub(crate) device: u64,
    /// Which file of the target (a partition: its active segment's base offset).
    pub(crate) file: i64,
    /// Bytes of that file written.
    pub(crate) size: u64,
    /// The target's epoch (see `Partition::epoch`).
    pub(crate) epoch: u64,
}

/// Something whose writes can be made durable.
pub(crate) trait SyncTarget: Send + Sync + 'static {
    /// Makes everything written so far durable (blocking); on failure, leaves the target in
    /// a state that is safe to serve and to write to again.
    fn sync_now(&self) -> io::Result<()>;

    /// For a batched sync: what is written now and on which device; `None` when the
    /// target only syncs itself.
    fn mark(&self) -> Option<SyncMark> {
        None
    }

    /// A file on the target's file system, to sync the whole file system through.
    fn file_on_device(&self) -> io::Result<Arc<File>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "not part of batched syncs",
        ))
    }

    /// Notes that a sync of the whole file system, begun after `mark` was taken,
    /// succeeded.
    fn synced(&self, _mark: SyncMark) {}
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

/// A target (by its key) with what it had written when its round began.
type Marked = (usize, Arc<dyn SyncTarget>, SyncMark);

/// Makes every target durable (blocking), batched where that pays (see the module
/// comment); each target's result by its key.
pub(crate) fn sync_targets(
    targets: HashMap<usize, Arc<dyn SyncTarget>>,
) -> HashMap<usize, Result<(), String>> {
    let mut results = HashMap::with_capacity(targets.len());
    // Targets that may take part in a batched sync, by device.
    let mut by_device: HashMap<u64, Vec<Marked>> = HashMap::new();
    let mut alone = Vec::new();
    for (key, target) in targets {
        match target.mark() {
            Some(mark) => by_device
                .entry(mark.device)
                .or_default()
                .push((key, target, mark)),
            None => alone.push((key, target)),
        }
    }
    for (_, group) in by_device {
        if group.len() < BATCH_THRESHOLD {
            alone.extend(group.into_iter().map(|(key, target, _)| (key, target)));
            continue;
        }
        let synced = group[0]
            .1
            .file_on_device()
            .and_then(|file| rustix::fs::syncfs(&*file).map_err(io::Error::from));
        match synced {
            Ok(()) => {
                for (key, target, mark) in group {
                    target.synced(mark);
                    results.insert(key, Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, targets = group.len(), "syncfs failed; fsyncing each target");
                alone.extend(group.into_iter().map(|(key, target, _)| (key, target)));
            }
        }
    }
    for (key, target) in alone {
        results.insert(key, target.sync_now().map_err(|e| e.to_string()));
    }
    results
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
                let results = tokio::task::spawn_blocking(move || sync_targets(targets))
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A target that counts how it was synced.
    #[derive(Debug)]
    struct Counted {
        root: Option<Arc<File>>,
        device: u64,
        alone: AtomicUsize,
        batched: AtomicUsize,
    }

    impl SyncTarget for Counted {
        fn sync_now(&self) -> io::Result<()> {
            self.alone.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn mark(&self) -> Option<SyncMark> {
            Some(SyncMark {
                device: self.device,
                file: 0,
                size: 0,
                epoch: 0,
            })
        }
        fn file_on_device(&self) -> io::Result<Arc<File>> {
            self.root
                .clone()
                .ok_or_else(|| io::Error::other("no file system"))
        }
        fn synced(&self, _mark: SyncMark) {
            self.batched.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `count` targets on the file system of a temporary directory (or, without `root`,
    /// targets whose file system cannot be synced); the result of syncing them all.
    fn sync_counted(count: usize, root: bool) -> (Vec<Arc<Counted>>, usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Arc::new(File::open(dir.path()).expect("open the directory"));
        let device = file.metadata().expect("stat").dev();
        let targets: Vec<Arc<Counted>> = (0..count)
            .map(|_| {
                Arc::new(Counted {
                    root: root.then(|| file.clone()),
                    device,
                    alone: AtomicUsize::new(0),
                    batched: AtomicUsize::new(0),
                })
            })
            .collect();
        let results = sync_targets(
            targets
                .iter()
                .enumerate()
                .map(|(i, t)| (i, t.clone() as Arc<dyn SyncTarget>))
                .collect(),
        );
        let ok = results.values().filter(|r| r.is_ok()).count();
        (targets, ok)
    }

    #[test]
    fn many_targets_on_one_file_system_are_synced_together_and_few_alone() {
        let (many, ok) = sync_counted(BATCH_THRESHOLD, true);
        assert_eq!(ok, BATCH_THRESHOLD);
        for t in &many {
            assert_eq!(t.batched.load(Ordering::SeqCst), 1, "noted as synced once");
            assert_eq!(t.alone.load(Ordering::SeqCst), 0, "no fsync of its own");
        }
        let (few, ok) = sync_counted(BATCH_THRESHOLD - 1, true);
        assert_eq!(ok, BATCH_THRESHOLD - 1);
        for t in &few {
            assert_eq!(t.batched.load(Ordering::SeqCst), 0);
            assert_eq!(t.alone.load(Ordering::SeqCst), 1, "fsynced on its own");
        }
    }

    #[test]
    fn when_the_file_system_cannot_be_synced_every_target_is_fsynced_on_its_own() {
        let (targets, ok) = sync_counted(BATCH_THRESHOLD * 2, false);
        assert_eq!(ok, BATCH_THRESHOLD * 2);
        for t in &targets {
            assert_eq!(t.batched.load(Ordering::SeqCst), 0, "not noted as synced");
            assert_eq!(t.alone.load(Ordering::SeqCst), 1, "fsynced on its own");
        }
    }
}
