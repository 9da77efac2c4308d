//! The protective policies of a worker: their stores connected from the configured URLs
//! (one connection per distinct URL), ready to become layers of the stack.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{redact, store_kind, StoreKind, WorkerConfig};
use crate::error::WorkerError;
use crate::observe::{Health, Observed};
use crate::policy::{outage_backoff, Breaker};
use crate::store::memory::{MemoryDedupStore, MemoryLockStore, MemoryVersionStore};
use crate::store::postgres::PostgresStores;
use crate::store::redis::{RedisRateLimiter, RedisStores};
use crate::store::{DedupStore, LockStore, StoreError, VersionStore};

/// A per-worker limit (permits per second, burst) and a limit shared through Redis.
pub(crate) type RateLimits = (Option<(NonZeroU32, NonZeroU32)>, Option<RedisRateLimiter>);

/// The connected policies; `None` where a policy is off.
#[derive(Debug, Default)]
pub(crate) struct Guards {
    pub(crate) stale: Option<(Arc<dyn VersionStore>, bool)>,
    pub(crate) lock: Option<(Arc<dyn LockStore>, Duration)>,
    pub(crate) dedup: Option<(Arc<dyn DedupStore>, Duration, Duration)>,
    pub(crate) rate: Option<RateLimits>,
    pub(crate) breaker: Option<Breaker>,
    pub(crate) transaction: Option<PostgresStores>,
    /// Where store and dependency outages are reported for the readiness probe.
    pub(crate) health: Arc<Health>,
}

impl Guards {
    /// Whether any policy needs the message facts (key, version, id).
    pub(crate) fn need_facts(&self) -> bool {
        self.stale.is_some()
            || self.lock.is_some()
            || self.dedup.is_some()
            || self.transaction.is_some()
    }

    /// Connects every configured store, waiting out an unreachable one until `shutdown`.
    pub(crate) async fn connect(
        config: &WorkerConfig,
        group: &str,
        shutdown: &CancellationToken,
        health: &Arc<Health>,
    ) -> Result<Guards, WorkerError> {
        let mut stores = Connections {
            redis: HashMap::new(),
            postgres: HashMap::new(),
            prefix: config.stores.key_prefix.clone(),
            schema: config.stores.schema.clone(),
            pool_size: config.concurrency.saturating_add(8).clamp(16, 128),
            shutdown: shutdown.clone(),
            health: health.clone(),
        };
        let mut guards = Guards {
            health: health.clone(),
            ..Guards::default()
        };
        if let Some(stale) = &config.stale {
            let store: Arc<dyn VersionStore> = match store_kind("stale.store", &stale.store)? {
                StoreKind::Memory => Arc::new(MemoryVersionStore::new()),
                StoreKind::Redis => Arc::new(stores.redis(&stale.store).await?.version_store()),
                StoreKind::Postgres => {
                    Arc::new(stores.postgres(&stale.store).await?.version_store())
                }
            };
            let store: Arc<dyn VersionStore> = Arc::new(Observed::new(
                store,
                "stale",
                backend_name(store_kind("stale.store", &stale.store)?),
                health.clone(),
            ));
            guards.stale = Some((store, stale.copy_to_topic));
        }
        if let Some(lock) = &config.lock {
            let store: Arc<dyn LockStore> = match store_kind("lock.store", &lock.store)? {
                StoreKind::Memory => Arc::new(MemoryLockStore::new()),
                StoreKind::Redis => Arc::new(stores.redis(&lock.store).await?.lock_store()),
                StoreKind::Postgres => Arc::new(stores.postgres(&lock.store).await?.lock_store()),
            };
            let store: Arc<dyn LockStore> = Arc::new(Observed::new(
                store,
                "lock",
                backend_name(store_kind("lock.store", &lock.store)?),
                health.clone(),
            ));
            guards.lock = Some((store, Duration::from_millis(lock.lease_ms)));
        }
        if let Some(dedup) = &config.dedup {
            let store: Arc<dyn DedupStore> = match store_kind("dedup.store", &dedup.store)? {
                StoreKind::Memory => Arc::new(MemoryDedupStore::new()),
                StoreKind::Redis => Arc::new(stores.redis(&dedup.store).await?.dedup_store()),
                StoreKind::Postgres => Arc::new(stores.postgres(&dedup.store).await?.dedup_store()),
            };
            let store: Arc<dyn DedupStore> = Arc::new(Observed::new(
                store,
                "dedup",
                backend_name(store_kind("dedup.store", &dedup.store)?),
                health.clone(),
            ));
            guards.dedup = Some((
                store,
                config.dedup_lease(),
                Duration::from_millis(dedup.ttl_ms),
            ));
        }
        if let Some(rate) = &config.rate_limit {
            let limits = NonZeroU32::new(rate.per_second).zip(NonZeroU32::new(rate.burst));
            let shared = match &rate.store {
                Some(url) => {
                    let name = rate.name.clone().unwrap_or_else(|| group.to_owned());
                    Some(stores.redis(url).await?.rate_limiter(
                        &name,
                        f64::from(rate.per_second),
                        rate.burst,
                    ))
                }
                None => None,
            };
            // A shared limit replaces the per-worker one: both would halve the rate.
            let local = if shared.is_some() { None } else { limits };
            guards.rate = Some((local, shared));
        }
        if let Some(breaker) = &config.breaker {
            guards.breaker = Some(Breaker::new(group, breaker.settings()));
        }
        if let Some(tx) = &config.transaction {
            guards.transaction = Some(stores.postgres(&tx.postgres).await?);
        }
        Ok(guards)
    }
}

/// A backend's name in metrics and readiness reasons.
fn backend_name(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Memory => "memory",
        StoreKind::Redis => "redis",
        StoreKind::Postgres => "postgres",
    }
}

/// Store connections by URL.
struct Connections {
    redis: HashMap<String, RedisStores>,
    postgres: HashMap<String, PostgresStores>,
    prefix: String,
    schema: String,
    /// Connections per Postgres pool: the worker's concurrency plus room for lock renewals
    /// and store calls.
    pool_size: usize,
    shutdown: CancellationToken,
    health: Arc<Health>,
}

impl Connections {
    async fn redis(&mut self, url: &str) -> Result<RedisStores, WorkerError> {
        if let Some(stores) = self.redis.get(url) {
            return Ok(stores.clone());
        }
        let prefix = self.prefix.clone();
        let stores = retry_connect(url, &self.shutdown, &self.health, || {
            RedisStores::connect(url, &prefix)
        })
        .await?;
        self.redis.insert(url.to_owned(), stores.clone());
        Ok(stores)
    }

    async fn postgres(&mut self, url: &str) -> Result<PostgresStores, WorkerError> {
        if let Some(stores) = self.postgres.get(url) {
            return Ok(stores.clone());
        }
        let schema = self.schema.clone();
        let size = self.pool_size;
        let stores = retry_connect(url, &self.shutdown, &self.health, || {
            PostgresStores::connect_sized(url, &schema, size)
        })
        .await?;
        self.postgres.insert(url.to_owned(), stores.clone());
        Ok(stores)
    }
}

/// Connects, waiting out an unreachable store (logged) until `shutdown`; a refused URL or
/// a failed migration ends the start with its error.
async fn retry_connect<T, F, Fut>(
    url: &str,
    shutdown: &CancellationToken,
    health: &Health,
    mut connect: F,
) -> Result<T, WorkerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delays = outage_backoff();
    let name = format!("store {}", redact(url));
    loop {
        match connect().await {
            Ok(stores) => {
                health.store_up(&name);
                return Ok(stores);
            }
            Err(e) if e.is_unavailable() => {
                health.store_down(&name, e.to_string());
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(url = %redact(url), error = %e, ?delay, "store unreachable at start; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Err(WorkerError::Store(e)),
                }
            }
            Err(e) => return Err(WorkerError::Store(e)),
        }
    }
}
