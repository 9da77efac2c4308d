//! The worker's stores, as typed handles: the ones given to the builder, and for the rest a
//! connection per configured URL (one per distinct URL), each observed for metrics and the
//! readiness probe; and the circuit breaker's state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use super::store_watch::{watch_restarts, Watched};

use crate::config::{redact, store_kind, StoreKind, WorkerConfig};
use crate::error::WorkerError;
use crate::observe::{Health, Observed};
use crate::policy::{keep_for, lease_length, outage_backoff, Breaker, Dependencies, KeptLeases};
use crate::store::guards::GuardStore;
use crate::store::memory::{MemoryDedupStore, MemoryLockStore, MemoryVersionStore};
use crate::store::postgres::PostgresStores;
use crate::store::redis::{restart_loses, RedisStores};
use crate::store::{
    DedupStore, LockStore, RateLimitStore, StoreError, StoreHandles, TransactionalStore,
    VersionStore,
};

/// The connected stores and the breaker; a store is `None` where its policy is off.
#[derive(Debug, Default)]
pub(crate) struct Guards {
    pub(crate) stores: StoreHandles,
    pub(crate) breaker: Option<Breaker>,
    /// The breakers of the handler's named dependencies.
    pub(crate) dependencies: Arc<Dependencies>,
    /// Where store and dependency outages are reported for the readiness probe.
    pub(crate) health: Arc<Health>,
    /// The stale check, lock and dedup in one call each way, where they share one Redis
    /// (`stores.combine_calls`).
    pub(crate) combined: Option<Arc<dyn GuardStore>>,
    /// The stale check's versions are the rows the transactional store records a message's
    /// version in ([`versions_in_transactions`]).
    pub(crate) versions_in_transactions: bool,
    /// The key lock's leases kept between a key's records (released when the worker stops),
    /// when there is a lock store.
    pub(crate) kept_leases: Option<Arc<KeptLeases>>,
    /// Stops watching the Redis connections for restarts when the guards are dropped.
    _restart_watch: Option<DropGuard>,
}

impl Guards {
    /// Takes the stores `given`, and connects the configured URLs of the others, waiting out
    /// an unreachable one until `shutdown`. A handle given wins over a URL.
    pub(crate) async fn connect(
        config: &WorkerConfig,
        given: &StoreHandles,
        group: &str,
        shutdown: &CancellationToken,
        health: &Arc<Health>,
    ) -> Result<Guards, WorkerError> {
        let mut urls = Connections::new(config, shutdown, health);
        let version: Option<(Arc<dyn VersionStore>, _)> = match (&given.version, &config.stale) {
            (Some(store), _) => Some((store.clone(), store.backend())),
            (None, Some(stale)) => Some(urls.version(&stale.store).await?),
            (None, None) => None,
        };
        let lock: Option<(Arc<dyn LockStore>, _)> = match (&given.lock, &config.lock) {
            (Some(store), _) => Some((store.clone(), store.backend())),
            (None, Some(lock)) => Some(urls.lock(&lock.store).await?),
            (None, None) => None,
        };
        let dedup: Option<(Arc<dyn DedupStore>, _)> = match (&given.dedup, &config.dedup) {
            (Some(store), _) => Some((store.clone(), store.backend())),
            (None, Some(dedup)) => Some(urls.dedup(&dedup.store).await?),
            (None, None) => None,
        };
        let shared_rate = config.rate_limit.as_ref().and_then(|r| r.store.as_deref());
        let rate: Option<Arc<dyn RateLimitStore>> = match (&given.rate, shared_rate) {
            (Some(store), _) => Some(store.clone()),
            (None, Some(url)) => Some(Arc::new(urls.redis(url).await?)),
            (None, None) => None,
        };
        let transactions: Option<Arc<dyn TransactionalStore>> =
            match (&given.transactions, &config.transaction) {
                (Some(store), _) => Some(store.clone()),
                (None, Some(tx)) => Some(Arc::new(urls.postgres(&tx.postgres).await?)),
                (None, None) => None,
            };
        let watched = || health.clone();
        let stores = StoreHandles {
            version: version.map(|(s, b)| Arc::new(Observed::new(s, "stale", b, watched())) as _),
            lock: lock.map(|(s, b)| Arc::new(Observed::new(s, "lock", b, watched())) as _),
            dedup: dedup.map(|(s, b)| Arc::new(Observed::new(s, "dedup", b, watched())) as _),
            rate: rate.map(|s| {
                let backend = s.backend();
                Arc::new(Observed::new(s, "rate limit", backend, watched())) as _
            }),
            transactions,
        };
        let combined = match combinable(config, given) {
            Some(url) => {
                let redis = urls.redis(url).await?;
                let store: Arc<dyn GuardStore> = Arc::new(redis.guards());
                Some(Arc::new(Observed::new(store, "stale/lock/dedup", "redis", watched())) as _)
            }
            None => None,
        };
        let versions_in_transactions = versions_in_transactions(config, given);
        let redises = urls.redis_roles(config, given);
        warn_without_persistence(&redises).await;
        let restart_watch = watch_restarts(redises);
        let breaker = config
            .breaker
            .as_ref()
            .map(|b| Breaker::new(group, b.settings()));
        let kept_leases = stores
            .lock
            .as_ref()
            .map(|lock| KeptLeases::new(lock.clone(), lease_length(config), keep_for(config)));
        Ok(Guards {
            stores,
            breaker,
            dependencies: Arc::new(Dependencies::new(group, &config.dependencies)),
            kept_leases,
            health: health.clone(),
            combined,
            versions_in_transactions,
            _restart_watch: restart_watch,
        })
    }
}

/// The Redis URL of the key lock, when the lock and the stale check and/or dedup can make
/// their calls together there (`stores.combine_calls`): all connected from that one URL,
/// none given as a handle, and nothing that must stand between them or decide for them (a
/// circuit breaker or rate limit between the stale check and the lock, a transactional
/// store).
fn combinable<'a>(config: &'a WorkerConfig, given: &StoreHandles) -> Option<&'a str> {
    if !config.stores.combine_calls
        || given.lock.is_some()
        || given.version.is_some()
        || given.dedup.is_some()
        || given.transactions.is_some()
        || config.transaction.is_some()
    {
        return None;
    }
    let url = config.lock.as_ref()?.store.as_str();
    if !matches!(store_kind("lock.store", url), Ok(StoreKind::Redis)) {
        return None;
    }
    let stale = config.stale.as_ref().map(|s| s.store.as_str());
    let dedup = config.dedup.as_ref().map(|d| d.store.as_str());
    let same = |other: Option<&str>| other.is_none_or(|other| other == url);
    let between = config.policies_between_stale_and_lock();
    let together = (stale.is_some() || dedup.is_some()) && same(stale) && same(dedup);
    (together && !(stale.is_some() && between)).then_some(url)
}

/// Whether the stale check's version store and the transactional store are one Postgres
/// store: both connected from the same URL (one connection, the worker's schema), neither
/// given as a handle. A handler's committed transaction then recorded the message's version
/// in the row the stale check reads (the same compare-and-set), so the stale policy need not
/// advance it again.
fn versions_in_transactions(config: &WorkerConfig, given: &StoreHandles) -> bool {
    if given.version.is_some() || given.transactions.is_some() {
        return false;
    }
    match (&config.stale, &config.transaction) {
        (Some(stale), Some(transaction)) => {
            stale.store == transaction.postgres
                && matches!(
                    store_kind("stale.store", &stale.store),
                    Ok(StoreKind::Postgres)
                )
        }
        _ => false,
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
    /// No connection yet; Postgres pools of the worker's concurrency plus room for lock
    /// renewals and store calls.
    fn new(config: &WorkerConfig, shutdown: &CancellationToken, health: &Arc<Health>) -> Self {
        Connections {
            redis: HashMap::new(),
            postgres: HashMap::new(),
            prefix: config.stores.key_prefix.clone(),
            schema: config.stores.schema.clone(),
            pool_size: config.concurrency.saturating_add(8).clamp(16, 128),
            shutdown: shutdown.clone(),
            health: health.clone(),
        }
    }

    /// The store `url` names, made by the function for its backend, with the backend's
    /// name; `key` is the setting, in the error for a URL of no backend.
    async fn open<T: ?Sized>(
        &mut self,
        key: &'static str,
        url: &str,
        memory: impl FnOnce() -> Arc<T>,
        redis: impl FnOnce(&RedisStores) -> Arc<T>,
        postgres: impl FnOnce(&PostgresStores) -> Arc<T>,
    ) -> Result<(Arc<T>, &'static str), WorkerError> {
        Ok(match store_kind(key, url)? {
            StoreKind::Memory => (memory(), "memory"),
            StoreKind::Redis => (redis(&self.redis(url).await?), "redis"),
            StoreKind::Postgres => (postgres(&self.postgres(url).await?), "postgres"),
        })
    }

    async fn version(
        &mut self,
        url: &str,
    ) -> Result<(Arc<dyn VersionStore>, &'static str), WorkerError> {
        self.open::<dyn VersionStore>(
            "stale.store",
            url,
            || Arc::new(MemoryVersionStore::new()),
            |r| Arc::new(r.version_store()),
            |p| Arc::new(p.version_store()),
        )
        .await
    }

    async fn lock(&mut self, url: &str) -> Result<(Arc<dyn LockStore>, &'static str), WorkerError> {
        self.open::<dyn LockStore>(
            "lock.store",
            url,
            || Arc::new(MemoryLockStore::new()),
            |r| Arc::new(r.lock_store()),
            |p| Arc::new(p.lock_store()),
        )
        .await
    }

    async fn dedup(
        &mut self,
        url: &str,
    ) -> Result<(Arc<dyn DedupStore>, &'static str), WorkerError> {
        self.open::<dyn DedupStore>(
            "dedup.store",
            url,
            || Arc::new(MemoryDedupStore::new()),
            |r| Arc::new(r.dedup_store()),
            |p| Arc::new(p.dedup_store()),
        )
        .await
    }

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

    /// Each Redis connected for a URL that holds a lock, dedup or version store not given as
    /// a handle, with those stores' roles (`stale`, `lock`, `dedup`).
    fn redis_roles(&self, config: &WorkerConfig, given: &StoreHandles) -> Vec<Watched> {
        let configured = [
            (
                "stale",
                given.version.is_none(),
                config.stale.as_ref().map(|c| &c.store),
            ),
            (
                "lock",
                given.lock.is_none(),
                config.lock.as_ref().map(|c| &c.store),
            ),
            (
                "dedup",
                given.dedup.is_none(),
                config.dedup.as_ref().map(|c| &c.store),
            ),
        ];
        self.redis
            .iter()
            .map(|(url, stores)| Watched {
                url: url.clone(),
                stores: stores.clone(),
                roles: configured
                    .iter()
                    .filter(|(_, from_url, store)| *from_url && *store == Some(url))
                    .map(|(role, _, _)| *role)
                    .collect(),
            })
            .filter(|watched| !watched.roles.is_empty())
            .collect()
    }
}

/// Warns, per Redis, what a restart of it would lose when it keeps nothing (neither AOF nor
/// snapshots).
async fn warn_without_persistence(redises: &[Watched]) {
    for redis in redises {
        let url = redact(&redis.url);
        match redis.stores.persistence().await {
            Ok(persistence) => {
                if let Some(lost) = restart_loses(&redis.roles, persistence) {
                    tracing::warn!(
                        url = %url,
                        roles = ?redis.roles,
                        "this Redis keeps nothing across a restart (neither AOF nor snapshots): a restart loses {lost}; run it with `appendonly yes`"
                    );
                }
            }
            Err(e) => tracing::info!(
                url = %url,
                error = %e,
                "cannot read this Redis's persistence settings (CONFIG GET): make sure it keeps an append-only file or snapshots"
            ),
        }
        // The lock scripts read the uptime (`INFO server`) to hold grants back after a
        // restart; the restart watch reads the run id the same way.
        if let Err(e) = redis.stores.run_id().await {
            tracing::warn!(
                url = %url,
                roles = ?redis.roles,
                error = %e,
                "this Redis refuses `INFO server`: its restarts are not seen, and after a restart that loses its data it grants key locks at once, beside holders from before (allow `INFO` to the worker's user)"
            );
        }
    }
}

impl Connections {
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
