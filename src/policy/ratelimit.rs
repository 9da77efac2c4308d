//! Rate limits, waited out before the key lock is taken: per worker (`governor`, GCRA in
//! memory) and shared across pods (GCRA in Redis, one round trip per permit).

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use super::outage::until_available;
use super::OutcomeFuture;
use crate::message::{Envelope, Outcome};
use crate::store::redis::RedisRateLimiter;

/// Limits the rate of handler calls.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    local: Option<Arc<DefaultDirectRateLimiter>>,
    shared: Option<RedisRateLimiter>,
    shutdown: CancellationToken,
}

impl RateLimitLayer {
    /// A per-worker limit of `per_second` with bursts of `burst` (when given), and a limit
    /// shared through Redis (when given). A shutdown while waiting requeues.
    pub fn new(
        local: Option<(NonZeroU32, NonZeroU32)>,
        shared: Option<RedisRateLimiter>,
        shutdown: CancellationToken,
    ) -> Self {
        RateLimitLayer {
            local: local.map(|(per_second, burst)| {
                Arc::new(RateLimiter::direct(
                    Quota::per_second(per_second).allow_burst(burst),
                ))
            }),
            shared,
            shutdown,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> Service<Envelope> for RateLimitService<S>
where
    S: Service<Envelope, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = OutcomeFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let mut inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move {
            if let Some(local) = &layer.local {
                tokio::select! {
                    _ = local.until_ready() => {}
                    _ = layer.shutdown.cancelled() => return Ok(Outcome::Requeue),
                }
            }
            if let Some(shared) = &layer.shared {
                let Some(wait) =
                    until_available("rate limit", &layer.shutdown, || shared.reserve()).await
                else {
                    return Ok(Outcome::Requeue);
                };
                if !super::outage::pause(wait, &layer.shutdown).await {
                    return Ok(Outcome::Requeue);
                }
            }
            inner.call(envelope).await
        })
    }
}
