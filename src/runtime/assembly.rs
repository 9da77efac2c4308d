//! Assembles a worker's policy stack from its configuration and connected stores.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::guards::Guards;
use crate::config::WorkerConfig;
use crate::handler::{Handler, HandlerService};
use crate::observe::Meters;
use crate::policy::{self, BoxedStack, RetryTiers, Sink, TierNames};

/// Where a stack's failed messages go, and how it publishes them.
pub(crate) struct Routing {
    pub(crate) tiers: RetryTiers,
    pub(crate) names: TierNames,
    pub(crate) dead_letter: Option<String>,
    pub(crate) tier_partitions: Option<i32>,
    pub(crate) sink: Arc<dyn Sink>,
}

/// The fixed policy stack for `handler`: trace → route → facts → stale drop → breaker →
/// rate limit → key lock → dedup → retry in place → timeout → handler, the protective
/// layers only where `guards` has them.
pub(crate) fn build_stack<H: Handler>(
    handler: Arc<H>,
    config: &WorkerConfig,
    group: &str,
    routing: Routing,
    guards: &Guards,
    shutdown: CancellationToken,
    meters: &Meters,
) -> BoxedStack {
    let facts = guards
        .need_facts()
        .then(|| policy::FactsLayer::new(policy::describe::<H::Message>(group)));
    let stale = guards.stale.as_ref().map(|(store, copy)| {
        policy::StaleLayer::new(
            store.clone(),
            copy.then(|| routing.sink.clone()),
            shutdown.clone(),
        )
        .deferring_tier_records(guards.transaction.is_some())
    });
    let breaker = guards
        .breaker
        .clone()
        .map(|b| policy::BreakerLayer::new(b, shutdown.clone()));
    let rate = guards.rate.as_ref().map(|(local, shared)| {
        policy::RateLimitLayer::new(*local, shared.clone(), shutdown.clone())
    });
    let lock = guards.lock.as_ref().map(|(store, lease)| {
        policy::KeyLockLayer::new(store.clone(), *lease, shutdown.clone())
            .recheck_versions(guards.stale.as_ref().map(|(versions, _)| versions.clone()))
            .deferring_tier_records(guards.transaction.is_some())
    });
    let worker_id = worker_id();
    let dedup = guards.dedup.as_ref().map(|(store, lease, ttl)| {
        policy::DedupLayer::new(store.clone(), *lease, *ttl, &worker_id, shutdown.clone())
            .reporting(Some(guards.health.clone()))
    });
    let service = tower::ServiceBuilder::new()
        .layer(policy::TraceLayer)
        .layer(
            policy::RouteLayer::new(
                routing.tiers,
                routing.dead_letter,
                routing.tier_partitions,
                group,
                routing.sink,
                shutdown.clone(),
            )
            .with_tier_names(routing.names),
        )
        .option_layer(facts)
        .option_layer(stale)
        .option_layer(breaker)
        .option_layer(rate)
        .option_layer(lock)
        .option_layer(dedup)
        .layer(
            policy::RetryLayer::new(config.retry_policy(), shutdown.clone())
                .counting(meters.retries.clone())
                .reporting(guards.health.clone()),
        )
        .layer(
            policy::TimeoutLayer::new(Duration::from_millis(config.handler_timeout_ms))
                .probing(guards.transaction.clone()),
        )
        .service(
            HandlerService::new(handler, group, shutdown)
                .with_transactions(guards.transaction.clone())
                .timed(meters.handler_duration.clone()),
        );
    BoxedStack::new(service)
}

/// This worker's name in dedup reservations: process id, start time and a random part
/// (containers often all run as process 1).
fn worker_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{}-{:x}-{random:x}", std::process::id(), policy::now_ms())
}

/// The stack for [`crate::testing`]: dead letters to `<topic>.dlq`, partitions left to the key.
pub(crate) fn build_stack_for_tests<H: Handler>(
    handler: Arc<H>,
    config: &WorkerConfig,
    group: &str,
    tiers: RetryTiers,
    sink: Arc<dyn Sink>,
    shutdown: CancellationToken,
) -> BoxedStack {
    let routing = Routing {
        tiers,
        names: TierNames::new(group, config.shared_retry_topics),
        dead_letter: None,
        tier_partitions: None,
        sink,
    };
    build_stack(
        handler,
        config,
        group,
        routing,
        &Guards::default(),
        shutdown,
        &Meters::noop(),
    )
}
