//! The per-key lock: a lease lock on the message's key, held while the inner layers and the
//! handler run and renewed in the background. It guards the window in which two consumers
//! hold the same partition (a rebalance, a rolling deploy). The handler's context exposes the
//! fencing token; a holder whose lease is lost is told (its context says so), its result is
//! not reported, and the message is handled again under a new grant (dedup and the
//! transactional store make that second run a no-op when the first one's effect landed).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use super::facts::facts_of;
use super::outage::{pause, until_available};
use super::OutcomeFuture;
use crate::message::{Envelope, LeaseState, Outcome};
use crate::store::LockStore;

#[derive(Debug)]
struct LockConfig {
    store: Arc<dyn LockStore>,
    lease: Duration,
    shutdown: CancellationToken,
}

/// Takes the key lock around the inner services.
#[derive(Debug, Clone)]
pub struct KeyLockLayer {
    config: Arc<LockConfig>,
}

impl KeyLockLayer {
    /// Locks keys in `store` with leases of `lease`, renewed every third of it.
    pub fn new(store: Arc<dyn LockStore>, lease: Duration, shutdown: CancellationToken) -> Self {
        KeyLockLayer {
            config: Arc::new(LockConfig {
                store,
                lease: lease.max(Duration::from_millis(30)),
                shutdown,
            }),
        }
    }
}

impl<S> Layer<S> for KeyLockLayer {
    type Service = KeyLockService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        KeyLockService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// See [`KeyLockLayer`].
#[derive(Debug, Clone)]
pub struct KeyLockService<S> {
    inner: S,
    config: Arc<LockConfig>,
}

impl<S> Service<Envelope> for KeyLockService<S>
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
        let config = self.config.clone();
        Box::pin(async move {
            let Some(facts) = facts_of(&envelope) else {
                return inner.call(envelope).await;
            };
            let key = facts.store_key.as_str();
            loop {
                let Some(token) = config.acquire(key).await else {
                    return Ok(Outcome::Requeue);
                };
                let lease = Arc::new(LeaseState::new(token));
                let mut held = envelope.clone();
                held.guard.lease = Some(lease.clone());
                let outcome = config.hold(key, &lease, inner.call(held)).await?;
                if let Err(e) = config.store.release(key, token).await {
                    tracing::debug!(key, error = %e, "lock release failed; the lease will expire");
                }
                if lease.is_lost() && !matches!(outcome, Outcome::Requeue) {
                    tracing::warn!(
                        key,
                        token,
                        offset = envelope.offset,
                        "lease lost while handling; handling again under a new grant"
                    );
                    continue;
                }
                return Ok(outcome);
            }
        })
    }
}

impl LockConfig {
    /// Runs `call` while renewing the lease every third of its length; marks the lease lost
    /// when a renewal is refused or none succeeded within the lease.
    async fn hold<F: std::future::Future>(
        &self,
        key: &str,
        lease: &LeaseState,
        call: F,
    ) -> F::Output {
        let every = self.lease / 3;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewed = Instant::now();
        tokio::pin!(call);
        loop {
            tokio::select! {
                output = &mut call => return output,
                _ = tick.tick(), if !lease.is_lost() => {
                    match self.store.renew(key, lease.token, self.lease).await {
                        Ok(true) => last_renewed = Instant::now(),
                        Ok(false) => lease.mark_lost(),
                        Err(e) => {
                            tracing::warn!(key, error = %e, "lease renewal failed");
                            if last_renewed.elapsed() >= self.lease {
                                lease.mark_lost();
                            }
                        }
                    }
                }
            }
        }
    }

    /// Takes the key's lock, waiting while another holder has it; `None` on shutdown.
    async fn acquire(&self, key: &str) -> Option<u64> {
        let mut wait = Duration::from_millis(5);
        loop {
            let granted = until_available("lock acquire", &self.shutdown, || {
                self.store.acquire(key, self.lease)
            })
            .await?;
            if let Some(token) = granted {
                return Some(token);
            }
            if !pause(wait, &self.shutdown).await {
                return None;
            }
            wait = (wait * 2).min(self.lease / 4).max(Duration::from_millis(5));
        }
    }
}
