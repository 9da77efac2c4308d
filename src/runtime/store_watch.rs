//! Restarts of a store seen while the worker runs: every Redis the lock, dedup or version
//! stores use is asked for its run id every few seconds; a new one means it restarted, which
//! is logged (with what a Redis keeping nothing lost) and counted
//! (`steadfast_store_restarts_total`).

use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::redact;
use crate::observe::store_restarted;
use crate::store::redis::{restart_loses, RedisStores};

/// How often each Redis is asked for its run id.
const POLL_EVERY: Duration = Duration::from_secs(5);

/// One Redis to watch: its URL, the connection, and the roles (`stale`, `lock`, `dedup`) of
/// the stores on it.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) url: String,
    pub(crate) stores: RedisStores,
    pub(crate) roles: Vec<&'static str>,
}

/// Watches each of `redises` for a restart until the returned guard is dropped; `None` when
/// there is nothing to watch.
pub(crate) fn watch_restarts(redises: Vec<Watched>) -> Option<DropGuard> {
    if redises.is_empty() {
        return None;
    }
    let stop = CancellationToken::new();
    for redis in redises {
        tokio::spawn(watch(redis, stop.clone()));
    }
    Some(stop.drop_guard())
}

async fn watch(redis: Watched, stop: CancellationToken) {
    let mut known: Option<String> = None;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        // An unreachable Redis is the stores' outage, reported by their calls.
        let Ok(run_id) = redis.stores.run_id().await else {
            continue;
        };
        match &known {
            Some(before) if *before != run_id => restarted(&redis, before, &run_id).await,
            _ => {}
        }
        known = Some(run_id);
    }
}

/// Logs and counts a restart of `redis` (run id `before`, now `after`).
async fn restarted(redis: &Watched, before: &str, after: &str) {
    store_restarted("redis");
    let url = redact(&redis.url);
    let lost = match redis.stores.persistence().await {
        Ok(persistence) => restart_loses(&redis.roles, persistence),
        Err(_) => None,
    };
    match lost {
        Some(lost) => tracing::error!(
            url = %url,
            roles = ?redis.roles,
            before,
            after,
            "this Redis restarted (its run id changed) keeping nothing: it lost {lost}"
        ),
        None => tracing::warn!(
            url = %url,
            roles = ?redis.roles,
            before,
            after,
            "this Redis restarted (its run id changed); it reloads what its append-only file or last snapshot kept"
        ),
    }
}
