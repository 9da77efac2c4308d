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

use self::dependencies::Unfinished;
use self::state::{Breaker, BreakerPhase, Permit};
use super::adapter::{wrap, Next, Policy, Wrap};
use super::outage::stopped_before_handler;
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
            let probe = loop {
                match self.breaker.permit_probe() {
                    (Permit::Go, probe) => break probe,
                    (Permit::WaitUntil(at), _) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at.into()) => {}
                            _ = stopped_before_handler(&self.shutdown) => return Outcome::Requeue,
                        }
                    }
                }
            };
            // A run dropped before it ended counts as failed, as a dependency's call does; one
            // unwound by a panic below gives its probe place back (a handler's own panic is
            // caught below and counts as a permanent failure): either way a half-open probe
            // that never ends does not hold its place for good.
            let mut pending = Unfinished::new(&self.breaker, probe);
            let outcome = next.run(envelope.clone()).await;
            pending.end();
            if matches!(outcome, Outcome::Requeue) {
                // Handed back unfinished (an id in progress elsewhere, a shutdown): no
                // verdict on the handler; a probe's place goes to the next call.
                if let Some(round) = probe {
                    self.breaker.give_back(round);
                }
                return outcome;
            }
            let failed = matches!(&outcome, Outcome::Failed(f) if !f.permanent);
            let phase = self.breaker.record(!failed);
            if failed && phase == BreakerPhase::Open {
                // The dependency is down: wait with the others instead of routing.
                continue;
            }
            return outcome;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::state::BreakerSettings;
    use super::*;
    use crate::policy::adapter::BoxedStack;

    /// A breaker with one probe, opened by one failure and half-open 20 ms later (waited for
    /// with a deadline).
    async fn half_open() -> Breaker {
        let breaker = Breaker::new(
            "g",
            BreakerSettings {
                failure_rate: 0.5,
                window: Duration::from_secs(10),
                min_calls: 1,
                open_for: Duration::from_millis(20),
                half_open_probes: 1,
            },
        );
        assert_eq!(breaker.record(false), BreakerPhase::Open);
        breaker.until_probing().await;
        breaker
    }

    /// The policy around a handler whose runs end as `outcomes` says, in turn (then `Ack`).
    fn around(breaker: &Breaker, outcomes: Vec<Outcome>) -> Next {
        let runs = Arc::new(AtomicU32::new(0));
        let inner = tower::service_fn(move |_envelope: Envelope| {
            let run = runs.fetch_add(1, Ordering::SeqCst) as usize;
            let outcome = outcomes
                .get(run)
                .cloned()
                .unwrap_or(Outcome::Ack { attempt: 1 });
            async move { Ok::<_, Infallible>(outcome) }
        });
        Next::service(BoxedStack::new(inner)).with(BreakerPolicy {
            breaker: breaker.clone(),
            shutdown: CancellationToken::new(),
        })
    }

    #[tokio::test]
    async fn a_probe_handed_back_unfinished_gives_its_place_to_the_next_call() {
        let breaker = half_open().await;
        let service = around(&breaker, vec![Outcome::Requeue]);
        let envelope = Envelope::new("t", "k", "p");
        assert_eq!(service.run(envelope.clone()).await, Outcome::Requeue);
        let next = tokio::time::timeout(Duration::from_secs(5), service.run(envelope)).await;
        assert_eq!(
            next.ok(),
            Some(Outcome::Ack { attempt: 1 }),
            "the next call waited for a probe place the requeued run kept"
        );
        assert_eq!(breaker.record(true), BreakerPhase::Closed);
    }

    #[tokio::test]
    async fn a_probe_dropped_before_it_ended_counts_as_failed() {
        let breaker = half_open().await;
        let inner = tower::service_fn(|_envelope: Envelope| {
            futures::future::pending::<Result<Outcome, Infallible>>()
        });
        let service = Next::service(BoxedStack::new(inner)).with(BreakerPolicy {
            breaker: breaker.clone(),
            shutdown: CancellationToken::new(),
        });
        let run = service.run(Envelope::new("t", "k", "p"));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), run)
                .await
                .is_err(),
            "the handler never ends"
        );
        assert!(
            breaker.probes_at().is_some(),
            "the dropped probe opened the breaker again (it would hold the only probe place for good)"
        );
    }

    #[tokio::test]
    async fn a_probe_unwound_by_a_panic_below_gives_its_place_back() {
        let breaker = half_open().await;
        let runs = Arc::new(AtomicU32::new(0));
        let inner = {
            let runs = runs.clone();
            tower::service_fn(move |_envelope: Envelope| {
                let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    assert!(!first, "a layer below panicked");
                    Ok::<_, Infallible>(Outcome::Ack { attempt: 1 })
                }
            })
        };
        let service = Next::service(BoxedStack::new(inner)).with(BreakerPolicy {
            breaker: breaker.clone(),
            shutdown: CancellationToken::new(),
        });
        let first = {
            let service = service.clone();
            tokio::spawn(async move { service.run(Envelope::new("t", "k", "p")).await })
        };
        assert!(first.await.is_err(), "the first run was unwound");
        assert_eq!(
            breaker.probes_at(),
            None,
            "a panic is no verdict: not opened again"
        );
        let next = tokio::time::timeout(
            Duration::from_secs(5),
            service.run(Envelope::new("t", "k", "p")),
        )
        .await;
        assert_eq!(
            next.ok(),
            Some(Outcome::Ack { attempt: 1 }),
            "the next call waited for the probe place the unwound run took"
        );
    }
}
