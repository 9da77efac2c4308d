//! Store wrappers that time every call (`steadfast_store_call_duration_seconds`), count
//! failures by kind (`steadfast_store_errors_total`), and tell the readiness probe when a
//! backend stops answering or refuses a call, and when it answers again.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::health::Health;
use super::metrics::store_call;
use crate::store::guards::{Entered, Entry, Exit, GuardStore};
use crate::store::{
    DedupStore, LockStore, RateLimit, RateLimitStore, Reservation, StoreError, VersionStore,
};

/// A store of type `S` with its calls observed.
#[derive(Debug)]
pub(crate) struct Observed<S: ?Sized> {
    inner: Arc<S>,
    backend: &'static str,
    /// The store's name in readiness reasons: `dedup store (redis)`.
    name: String,
    health: Arc<Health>,
}

impl<S: ?Sized> Observed<S> {
    /// Observes `inner`, the `role` store (`lock`, `dedup`, `stale`) on `backend` (`memory`,
    /// `redis`, `postgres`).
    pub(crate) fn new(
        inner: Arc<S>,
        role: &str,
        backend: &'static str,
        health: Arc<Health>,
    ) -> Self {
        Observed {
            inner,
            backend,
            name: format!("{role} store ({backend})"),
            health,
        }
    }

    async fn call<T>(
        &self,
        call: &'static str,
        future: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = future.await;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => {
                store_call(self.backend, call, seconds, None);
                self.health.store_answered(&self.name, call);
            }
            Err(e) if e.is_unavailable() => {
                store_call(self.backend, call, seconds, Some(e.kind()));
                self.health.store_down(&self.name, e.to_string());
            }
            Err(e) => {
                // It answered, with a refusal: reachable, and refusing this call.
                store_call(self.backend, call, seconds, Some(e.kind()));
                self.health.store_refused(&self.name, call, e.to_string());
            }
        }
        result
    }
}

#[async_trait]
impl<S: LockStore + ?Sized> LockStore for Observed<S> {
    fn backend(&self) -> &'static str {
        self.backend
    }
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        self.call("lock_acquire", self.inner.acquire(key, ttl))
            .await
    }
    async fn renew(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        self.call("lock_renew", self.inner.renew(key, token, ttl))
            .await
    }
    async fn release(&self, key: &str, token: u64) -> Result<(), StoreError> {
        self.call("lock_release", self.inner.release(key, token))
            .await
    }
    async fn fence(&self, key: &str, token: u64) -> Result<bool, StoreError> {
        self.call("lock_fence", self.inner.fence(key, token)).await
    }
}

#[async_trait]
impl<S: DedupStore + ?Sized> DedupStore for Observed<S> {
    fn backend(&self) -> &'static str {
        self.backend
    }
    async fn reserve(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Reservation, StoreError> {
        self.call("dedup_reserve", self.inner.reserve(id, owner, lease))
            .await
    }
    async fn complete(&self, id: &str, owner: &str, ttl: Duration) -> Result<(), StoreError> {
        self.call("dedup_complete", self.inner.complete(id, owner, ttl))
            .await
    }
    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.call("dedup_release", self.inner.release(id, owner))
            .await
    }
}

#[async_trait]
impl<S: VersionStore + ?Sized> VersionStore for Observed<S> {
    fn backend(&self) -> &'static str {
        self.backend
    }
    async fn get(&self, key: &str) -> Result<Option<i64>, StoreError> {
        self.call("version_get", self.inner.get(key)).await
    }
    async fn advance(&self, key: &str, version: i64) -> Result<bool, StoreError> {
        self.call("version_advance", self.inner.advance(key, version))
            .await
    }
}

#[async_trait]
impl<S: RateLimitStore + ?Sized> RateLimitStore for Observed<S> {
    fn backend(&self) -> &'static str {
        self.backend
    }
    async fn reserve(&self, limit: &RateLimit) -> Result<Duration, StoreError> {
        self.call("rate_reserve", self.inner.reserve(limit)).await
    }
}

#[async_trait]
impl<S: GuardStore + ?Sized> GuardStore for Observed<S> {
    fn backend(&self) -> &'static str {
        self.backend
    }
    async fn enter(&self, entry: &Entry<'_>) -> Result<Entered, StoreError> {
        self.call("guards_enter", self.inner.enter(entry)).await
    }
    async fn renew(&self, entry: &Entry<'_>, token: u64) -> Result<(bool, bool), StoreError> {
        self.call("guards_renew", self.inner.renew(entry, token))
            .await
    }
    async fn exit(&self, exit: &Exit<'_>) -> Result<(), StoreError> {
        self.call("guards_exit", self.inner.exit(exit)).await
    }
}
