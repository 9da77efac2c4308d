//! Bounded in-place retry with exponential backoff and jitter (`backon`): a transient failure
//! is tried again in place until the attempt budget is spent; a permanent one is not. No
//! attempt starts under a key lease found lost: the lock runs the delivery again under a new
//! grant.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::stack::Assembly;
use crate::config::{millis, RetryConfig, WorkerConfig};
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
impl From<Retry> for RetryConfig {
    fn from(retry: Retry) -> Self {
        RetryConfig {
            attempts: retry.attempts,
            min_delay_ms: millis(retry.min_delay),
            max_delay_ms: millis(retry.max_delay),
        }
    }
}

impl WorkerConfig {
    /// The in-place retry policy.
    pub fn retry_policy(&self) -> Retry {
        Retry::exponential(
            self.retry.attempts,
            Duration::from_millis(self.retry.min_delay_ms),
            Duration::from_millis(self.retry.max_delay_ms),
        )
    }
}

const DEPENDENCY: &str = "a dependency of the handler";

/// Retries transient failures in place.
#[derive(Debug)]
pub(crate) struct RetryInPlace {
    policy: Retry,
    shutdown: CancellationToken,
    /// Counts each retry in place.
    retries: metrics::Counter,
    /// Told while the handler reports a dependency unavailable.
    health: Arc<Health>,
}

/// Always on: the worker's retry policy.
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    Some(wrap(RetryInPlace {
        policy: a.config.retry_policy(),
        shutdown: a.shutdown.clone(),
        retries: a.meters.retries.clone(),
        health: a.health.clone(),
    }))
}

impl Policy for RetryInPlace {
    async fn call(self: Arc<Self>, mut envelope: Envelope, next: Next) -> Outcome {
        let health = &self.health;
        let mut reported_down = false;
        let mut delays = self.policy.delays();
        let mut outage = super::outage::outage_backoff();
        let mut first_failed_ms = None;
        loop {
            let outcome = next.run(envelope.clone()).await;
            let Outcome::Failed(mut failure) = outcome else {
                if reported_down {
                    health.store_up(DEPENDENCY);
                }
                return outcome;
            };
            if failure.unavailable {
                health.store_down(DEPENDENCY, failure.message.clone());
                reported_down = true;
            } else if reported_down {
                health.store_up(DEPENDENCY);
                reported_down = false;
            }
            if lease_lost(&envelope) {
                // The key's lease was lost during this attempt: no wait, no further attempt
                // under it.
                return Outcome::Failed(failure);
            }
            if failure.unavailable {
                // A dependency outage: wait it out without spending an attempt.
                let delay = outage.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(attempt = envelope.attempt, ?delay, error = %failure.message, "dependency unavailable; trying again without spending an attempt");
                if !super::outage::wait_before_handler(delay, &self.shutdown).await {
                    return Outcome::Requeue;
                }
                if lease_lost(&envelope) {
                    return Outcome::Failed(failure);
                }
                continue;
            }
            outage = super::outage::outage_backoff();
            let first = *first_failed_ms.get_or_insert(failure.first_failed_ms);
            failure.first_failed_ms = first;
            if failure.permanent {
                return Outcome::Failed(failure);
            }
            let Some(delay) = delays.next() else {
                return Outcome::Failed(failure);
            };
            let delay = failure.retry_after.map_or(delay, |least| least.max(delay));
            tracing::debug!(attempt = envelope.attempt, ?delay, error = %failure.message, "retrying in place");
            if !super::outage::wait_before_handler(delay, &self.shutdown).await {
                return Outcome::Requeue;
            }
            if lease_lost(&envelope) {
                return Outcome::Failed(failure);
            }
            envelope.attempt += 1;
            self.retries.increment(1);
        }
    }
}

/// Whether the key's lease this delivery runs under was lost: no further attempt may start
/// under it (another worker may hold the key now). The failure goes back to the lock, which
/// handles the delivery again under a new grant.
fn lease_lost(envelope: &Envelope) -> bool {
    envelope
        .guard
        .lease
        .as_ref()
        .is_some_and(|lease| lease.is_lost())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::message::{ErrorClass, Failure, LeaseState};

    /// Retry in place (5 attempts, 1-2 ms apart) around a stage that fails transiently,
    /// counting its attempts, and marks `losing` lost when given.
    fn failing_transiently(attempts: &Arc<AtomicU32>, losing: Option<Arc<LeaseState>>) -> Next {
        let attempts = attempts.clone();
        Next::from_fn(move |envelope: Envelope| {
            attempts.fetch_add(1, Ordering::SeqCst);
            if let Some(lease) = &losing {
                lease.mark_lost();
            }
            let failure = Failure::new(
                ErrorClass::Transient,
                "down".into(),
                false,
                envelope.attempt,
                0,
            );
            Box::pin(async move { Outcome::Failed(failure) })
        })
        .with(RetryInPlace {
            policy: Retry::exponential(5, Duration::from_millis(1), Duration::from_millis(2)),
            shutdown: CancellationToken::new(),
            retries: metrics::Counter::noop(),
            health: Arc::new(Health::default()),
        })
    }

    /// Transient failures under a lease that is lost during the first attempt: the failure
    /// goes back at once, not tried again under the lost lease.
    #[tokio::test]
    async fn no_attempt_starts_under_a_lost_lease() {
        let attempts = Arc::new(AtomicU32::new(0));
        let lease = Arc::new(LeaseState::new(7));
        let retry = failing_transiently(&attempts, Some(lease.clone()));
        let mut envelope = Envelope::new("t", "k", "p");
        envelope.guard.lease = Some(lease);
        let outcome = retry.run(envelope.clone()).await;
        assert!(
            matches!(outcome, Outcome::Failed(ref f) if f.attempt == 1),
            "{outcome:?}"
        );
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "an attempt under the lost lease"
        );

        // Under a lease that holds, the budget is spent in place.
        envelope.guard.lease = Some(Arc::new(LeaseState::new(8)));
        attempts.store(0, Ordering::SeqCst);
        failing_transiently(&attempts, None).run(envelope).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 5);
    }

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

    /// Each step at least doubles the one before, up to the max delay, and the jitter makes
    /// two workers' schedules differ.
    #[test]
    fn delays_grow_exponentially_with_jitter() {
        let retry = Retry::exponential(6, Duration::from_millis(10), Duration::from_millis(80));
        let floors = [10, 20, 40, 80, 80].map(Duration::from_millis);
        let schedules: Vec<Vec<Duration>> = (0..20).map(|_| retry.delays().collect()).collect();
        for delays in &schedules {
            assert_eq!(delays.len(), floors.len());
            for (delay, floor) in delays.iter().zip(floors) {
                assert!(
                    *delay >= floor && *delay <= floor * 2,
                    "a delay of {delay:?} where the step is {floor:?}: {delays:?}"
                );
            }
        }
        assert!(
            schedules.iter().any(|s| *s != schedules[0]),
            "twenty schedules without jitter between them: {:?}",
            schedules[0]
        );
    }
}
