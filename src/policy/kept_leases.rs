//! Key leases kept between a key's records. A record that ends under its key's lock leaves
//! the lease here for a moment (`lock.keep_ms`, 20 ms by default) instead of releasing it; when the key's next
//! record comes within that time (a key with a backlog: its next record is dispatched as
//! soon as this one ends), it runs under the same grant, without a release and a new
//! acquire (two store calls and their round trips per record). A lease not taken in time is
//! released. A lease is handed on only while at least two thirds of it remain (it is
//! renewed from there as usual); an older one is released and the next record acquires
//! anew. The worker releases every kept lease when it stops.
//!
//! The same token then fences the key's records in a row: a fence check accepts a token as
//! large as the last one it saw, and no other holder can write in between, since the lease
//! was never let go.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::on_drop::ReleaseOnDrop;
use crate::store::LockStore;

/// A lease between two records of its key.
#[derive(Debug, Clone, Copy)]
struct Kept {
    token: u64,
    /// When the lease was last granted or renewed (when that call was sent).
    renewed_at: Instant,
    /// Tells this keeping from a later one of the same grant, for its release timer.
    keeping: u64,
}

/// The leases a worker's lock keeps between records; see the module docs.
#[derive(Debug)]
pub(crate) struct KeptLeases {
    store: Arc<dyn LockStore>,
    lease: Duration,
    /// How long a lease waits for its key's next record before it is released; zero: no
    /// lease is kept.
    keep: Duration,
    kept: Mutex<HashMap<String, Kept>>,
    keepings: AtomicU64,
    /// Set when the worker stops: nothing is kept from then on.
    closed: AtomicBool,
}

impl KeptLeases {
    /// Leases of `lease` in `store`, each kept up to `keep` for its key's next record.
    pub(crate) fn new(store: Arc<dyn LockStore>, lease: Duration, keep: Duration) -> Arc<Self> {
        Arc::new(KeptLeases {
            store,
            lease,
            keep,
            kept: Mutex::new(HashMap::new()),
            keepings: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// The store the leases are in.
    pub(crate) fn store(&self) -> &Arc<dyn LockStore> {
        &self.store
    }

    /// The leases' length.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a lease last renewed at `renewed_at` may still be handed on.
    fn young(&self, renewed_at: Instant) -> bool {
        renewed_at.elapsed() < self.lease / 3
    }

    /// The key's kept lease, when it may be handed on: its token, and when it was last
    /// granted or renewed. A kept lease too old to hand on is released here.
    pub(crate) async fn take(&self, key: &str) -> Option<(u64, Instant)> {
        let kept = self.kept().remove(key)?;
        if self.young(kept.renewed_at) {
            return Some((kept.token, kept.renewed_at));
        }
        self.release(key, kept.token).await;
        None
    }

    /// Ends a record's hold of `key`'s lease: keeps it for the key's next record when it may
    /// be handed on, else releases it.
    pub(crate) async fn end(self: &Arc<Self>, key: &str, token: u64, renewed_at: Instant) {
        if self.keep.is_zero() || self.closed.load(Ordering::SeqCst) || !self.young(renewed_at) {
            return self.release(key, token).await;
        }
        let keeping = self.keepings.fetch_add(1, Ordering::Relaxed);
        let earlier = self.kept().insert(
            key.to_owned(),
            Kept {
                token,
                renewed_at,
                keeping,
            },
        );
        if let Some(earlier) = earlier.filter(|e| e.token != token) {
            self.release(key, earlier.token).await;
        }
        // The worker may have stopped while this was kept: it released what it found.
        if self.closed.load(Ordering::SeqCst) {
            self.release_kept(key, keeping).await;
            return;
        }
        let this = self.clone();
        let key = key.to_owned();
        let keep = self.keep;
        tokio::spawn(async move {
            tokio::time::sleep(keep).await;
            this.release_kept(&key, keeping).await;
        });
    }

    /// Releases `key`'s lease if it is still the one kept by `keeping`.
    async fn release_kept(&self, key: &str, keeping: u64) {
        let token = {
            let mut kept = self.kept();
            match kept.get(key) {
                Some(k) if k.keeping == keeping => kept.remove(key).map(|k| k.token),
                _ => None,
            }
        };
        if let Some(token) = token {
            self.release(key, token).await;
        }
    }

    /// Releases `key`'s lease `token` now.
    pub(crate) async fn release(&self, key: &str, token: u64) {
        if let Err(e) = self.store.release(key, token).await {
            tracing::debug!(key, error = %e, "lock release failed; the lease will expire");
        }
    }

    /// Releases every kept lease and keeps none from now on (the worker stops).
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let kept: Vec<(String, Kept)> = self.kept().drain().collect();
        let releases = kept.iter().map(|(key, k)| self.release(key, k.token));
        futures::future::join_all(releases).await;
    }
}

impl KeptLeases {
    /// `key`'s lease `token`, held by a run from now on: released, in a task of its own,
    /// when the run is dropped or unwound by a panic before it ended the lease itself
    /// (released or kept it), so that the key's next holder does not wait out the lease.
    pub(crate) fn held(
        self: &Arc<Self>,
        key: &str,
        token: u64,
    ) -> ReleaseOnDrop<impl Future<Output = ()> + Send + 'static> {
        let (kept, key) = (self.clone(), key.to_owned());
        ReleaseOnDrop::new(async move { kept.release(&key, token).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryLockStore;

    const LEASE: Duration = Duration::from_secs(3);
    const KEEP_FOR: Duration = Duration::from_millis(20);

    async fn granted(store: &MemoryLockStore, key: &str) -> u64 {
        store
            .acquire(key, LEASE)
            .await
            .expect("memory store")
            .expect("free key")
    }

    async fn held(store: &MemoryLockStore, key: &str) -> bool {
        store
            .acquire(key, LEASE)
            .await
            .expect("memory store")
            .is_none()
    }

    #[tokio::test]
    async fn a_lease_taken_within_the_keeping_is_handed_on_without_a_release() {
        let store = Arc::new(MemoryLockStore::new());
        let kept = KeptLeases::new(store.clone(), LEASE, KEEP_FOR);
        let token = granted(&store, "k").await;
        let renewed_at = Instant::now();
        kept.end("k", token, renewed_at).await;
        assert!(held(&store, "k").await, "a kept lease still holds the key");
        assert_eq!(kept.take("k").await, Some((token, renewed_at)));
        assert_eq!(kept.take("k").await, None, "handed on once");
        // The timer of that keeping finds nothing of its own to release.
        tokio::time::sleep(KEEP_FOR * 3).await;
        assert!(
            held(&store, "k").await,
            "the record that took it still holds it"
        );
    }

    #[tokio::test]
    async fn a_lease_nobody_takes_is_released_after_the_keeping() {
        let store = Arc::new(MemoryLockStore::new());
        let kept = KeptLeases::new(store.clone(), LEASE, KEEP_FOR);
        let token = granted(&store, "k").await;
        kept.end("k", token, Instant::now()).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while held(&store, "k").await {
            assert!(
                Instant::now() < deadline,
                "the kept lease was never released"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(kept.take("k").await, None);
    }

    #[tokio::test]
    async fn a_lease_past_a_third_of_its_length_is_released_not_kept() {
        let store = Arc::new(MemoryLockStore::new());
        let kept = KeptLeases::new(store.clone(), LEASE, KEEP_FOR);
        let token = granted(&store, "k").await;
        let old = Instant::now() - LEASE / 2;
        kept.end("k", token, old).await;
        assert!(!held(&store, "k").await, "released at once");
        assert_eq!(kept.take("k").await, None);
    }

    #[tokio::test]
    async fn closing_releases_every_kept_lease_and_keeps_none_after() {
        let store = Arc::new(MemoryLockStore::new());
        let kept = KeptLeases::new(store.clone(), LEASE, KEEP_FOR);
        for key in ["a", "b"] {
            let token = granted(&store, key).await;
            kept.end(key, token, Instant::now()).await;
        }
        kept.close().await;
        for key in ["a", "b"] {
            assert!(
                !held(&store, key).await,
                "{key} released when the worker stopped"
            );
        }
        let c = granted(&store, "c").await;
        kept.end("c", c, Instant::now()).await;
        assert!(!held(&store, "c").await, "nothing is kept once closed");
    }

    #[tokio::test]
    async fn a_keeping_of_zero_releases_at_once() {
        let store = Arc::new(MemoryLockStore::new());
        let kept = KeptLeases::new(store.clone(), Duration::from_secs(3), Duration::ZERO);
        let token = store
            .acquire("k", Duration::from_secs(3))
            .await
            .expect("memory store")
            .expect("free key");
        kept.end("k", token, Instant::now()).await;
        assert_eq!(kept.take("k").await, None);
        let again = store
            .acquire("k", Duration::from_secs(3))
            .await
            .expect("memory store");
        assert!(again.is_some(), "released at once");
    }
}
