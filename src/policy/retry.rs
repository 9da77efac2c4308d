//! Bounded in-place retry with exponential backoff and jitter (`backon`): a transient failure
//! is tried again in place until the attempt budget is spent; a permanent one is not.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use super::OutcomeFuture;
use crate::message::{Envelope, Outcome};
use crate::observe::Health;

/// The in-place retry policy: how many attempts per delivery and the backoff between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts per delivery, the first included (1 = no retry in place).
    pub attempts: u32,
    /// Delay before the first retry.
    pub min_delay: Duration,
    /// Longest delay between retries.
    pub max_delay: Duration,
}

impl Retry {
    /// `attempts` attempts per delivery with exponential backoff from `min_delay` up to
    /// `max_delay`, with jitter.
    pub fn exponential(attempts: u32, min_delay: Duration, max_delay: Duration) -> Self {
        Retry {
            attempts: attempts.max(1),
            min_delay,
            max_delay: max_delay.max(min_delay),
        }
    }
    /// One attempt per delivery: failures go straight to the retry tiers or the DLQ.
    pub fn none() -> Self {
        Retry::exponential(1, Duration::ZERO, Duration::ZERO)
    }
    fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build()
    }
}

impl Default for Retry {
    /// Three attempts, 100 ms to 30 s.
    fn default() -> Self {
        Retry::exponential(3, Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// The name in readiness reasons of whatever a handler reported unavailable (its database,
/// the transaction store, a service it calls).
const DEPENDENCY: &str = "a dependency of the handler";

/// Retries transient failures in place.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Retry,
    shutdown: CancellationToken,
    retries: metrics::Counter,
    health: Option<Arc<Health>>,
}

impl RetryLayer {
    /// Applies `policy`; a shutdown while waiting for a retry requeues the message.
    pub fn new(policy: Retry, shutdown: CancellationToken) -> Self {
        RetryLayer {
            policy,
            shutdown,
            retries: metrics::Counter::noop(),
            health: None,
        }
    }
    /// Tells the readiness probe while the handler reports a dependency unavailable.
    pub(crate) fn reporting(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }
    /// Counts each retry in place on `retries`.
    pub(crate) fn counting(mut self, retries: metrics::Counter) -> Self {
        self.retries = retries;
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            policy: self.policy,
            shutdown: std::sync::Arc::new(self.shutdown.clone()),
            retries: self.retries.clone(),
            health: self.health.clone(),
        }
    }
}

/// See [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct RetryService<S> {
    inner: S,
    policy: Retry,
    shutdown: std::sync::Arc<CancellationToken>,
    retries: metrics::Counter,
    health: Option<Arc<Health>>,
}

impl<S> Service<Envelope> for RetryService<S>
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

    fn call(&mut self, mut envelope: Envelope) -> Self::Future {
        let mut inner = self.inner.clone();
        let policy = self.policy;
        let shutdown = self.shutdown.clone();
        let retries = self.retries.clone();
        let health = self.health.clone();
        Box::pin(async move {
            let mut reported_down = false;
            let mut delays = policy.delays();
            let mut outage = super::outage::outage_backoff();
            let mut first_failed_ms = None;
            loop {
                let outcome = inner.call(envelope.clone()).await?;
                let Outcome::Failed(mut failure) = outcome else {
                    if let (true, Some(h)) = (reported_down, &health) {
                        h.store_up(DEPENDENCY);
                    }
                    return Ok(outcome);
                };
                if let Some(h) = &health {
                    if failure.unavailable {
                        h.store_down(DEPENDENCY, failure.message.clone());
                        reported_down = true;
                    } else if reported_down {
                        h.store_up(DEPENDENCY);
                        reported_down = false;
                    }
                }
                if failure.unavailable {
                    // A dependency outage: wait it out without spending an attempt.
                    let delay = outage.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(attempt = envelope.attempt, ?delay, error = %failure.message, "dependency unavailable; trying again without spending an attempt");
                    if !super::outage::pause(delay, &shutdown).await {
                        return Ok(Outcome::Requeue);
                    }
                    continue;
                }
                outage = super::outage::outage_backoff();
                let first = *first_failed_ms.get_or_insert(failure.first_failed_ms);
                failure.first_failed_ms = first;
                if failure.permanent {
                    return Ok(Outcome::Failed(failure));
                }
                let Some(delay) = delays.next() else {
                    return Ok(Outcome::Failed(failure));
                };
                let delay = failure.retry_after.map_or(delay, |least| least.max(delay));
                tracing::debug!(attempt = envelope.attempt, ?delay, error = %failure.message, "retrying in place");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(Outcome::Requeue),
                }
                envelope.attempt += 1;
                retries.increment(1);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_bounded_by_the_attempt_budget_and_the_max_delay() {
        let retry = Retry::exponential(5, Duration::from_millis(10), Duration::from_millis(40));
        let delays: Vec<Duration> = retry.delays().collect();
        assert_eq!(delays.len(), 4);
        // Jitter adds up to the delay itself on top of each step.
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(80)),
            "{delays:?}"
        );
        assert_eq!(Retry::none().delays().count(), 0);
    }
}
