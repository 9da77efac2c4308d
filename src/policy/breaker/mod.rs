//! A circuit breaker around the handler: when the failure rate over a sliding window passes a
//! threshold (with a minimum number of calls), the breaker opens. While it is open the
//! handler is not called: messages wait (in flight, never dead-lettered, never committed
//! past) and the worker pauses its partitions while it keeps polling. After the open period
//! a few probe calls go through (half-open); if they succeed the breaker closes, otherwise it
//! opens again. A message whose failure opened the breaker is not routed: it waits with the
//! others and is tried again, without spending an attempt.

pub(crate) mod dependencies;
pub(crate) mod state;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use self::state::{Breaker, BreakerPhase, Permit};
use super::adapter::{wrap, Next, Policy, Wrap};
use super::stack::Assembly;
use crate::message::{Envelope, Outcome};

/// Puts a [`Breaker`] around the inner services.
#[derive(Debug)]
pub(crate) struct BreakerPolicy {
    breaker: Breaker,
    shutdown: CancellationToken,
}

/// The breaker policy, when `[breaker]` is on (its state is made with the worker, which
/// watches it to pause fetching while it is open).
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    let breaker = a.breaker?.clone();
    Some(wrap(BreakerPolicy {
        breaker,
        shutdown: a.shutdown.clone(),
    }))
}

impl Policy for BreakerPolicy {
    async fn call(self: Arc<Self>, envelope: Envelope, next: Next) -> Outcome {
        loop {
            while let Permit::WaitUntil(at) = self.breaker.permit() {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = self.shutdown.cancelled() => return Outcome::Requeue,
                }
            }
            let outcome = next.run(envelope.clone()).await;
            let failed = matches!(&outcome, Outcome::Failed(f) if !f.permanent);
            if matches!(outcome, Outcome::Requeue) {
                return outcome;
            }
            let phase = self.breaker.record(!failed);
            if failed && phase == BreakerPhase::Open {
                // The dependency is down: wait with the others instead of routing.
                continue;
            }
            return outcome;
        }
    }
}
