//! Rate limits, waited out before the key lock is taken: per worker (`governor`, GCRA in
//! memory) and shared across pods (GCRA in Redis, one round trip per permit).

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::outage::{stopped_before_handler, until_answered, wait_before_handler};
use super::stack::Assembly;
use crate::message::{Envelope, Outcome};
use crate::store::{RateLimit, RateLimitStore};

/// Limits the rate of handler calls.
#[derive(Debug)]
pub(crate) struct RateLimitPolicy {
    /// Per worker, in memory.
    local: Option<DefaultDirectRateLimiter>,
    /// Shared through a store by every worker using the same limit name.
    shared: Option<(Arc<dyn RateLimitStore>, RateLimit)>,
    shutdown: CancellationToken,
    /// Refusals of the shared limit's store after which the message is dead-lettered.
    give_up_after: Option<NonZeroU32>,
}

/// On with `[rate_limit]`: shared through the rate-limit store when the worker has one (the
/// limit named `name`, the group's by default), per worker otherwise (a shared limit replaces
/// the per-worker one: both would halve the rate).
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    let rate = a.config.rate_limit.as_ref()?;
    let shared = a.stores.rate.clone().map(|store| {
        let limit = RateLimit {
            name: rate.name.clone().unwrap_or_else(|| a.group.to_owned()),
            per_second: f64::from(rate.per_second),
            burst: rate.burst,
        };
        (store, limit)
    });
    let local = match shared {
        Some(_) => None,
        None => NonZeroU32::new(rate.per_second)
            .zip(NonZeroU32::new(rate.burst))
            .map(|(per_second, burst)| {
                RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst))
            }),
    };
    Some(wrap(RateLimitPolicy {
        local,
        shared,
        shutdown: a.shutdown.clone(),
        give_up_after: a.give_up_after(),
    }))
}

impl Policy for RateLimitPolicy {
    async fn call(self: Arc<Self>, envelope: Envelope, next: Next) -> Outcome {
        if let Some(local) = &self.local {
            tokio::select! {
                _ = local.until_ready() => {}
                _ = stopped_before_handler(&self.shutdown) => return Outcome::Requeue,
            }
        }
        if let Some((store, limit)) = &self.shared {
            let reserved = until_answered("rate limit", &self.shutdown, self.give_up_after, || {
                store.reserve(limit)
            })
            .await;
            let wait = match reserved {
                Ok(wait) => wait,
                Err(unanswered) => return unanswered.outcome(&envelope),
            };
            if !wait_before_handler(wait, &self.shutdown).await {
                return Outcome::Requeue;
            }
        }
        next.run(envelope).await
    }
}
