//! Deduplication by message id, two-phase: the id is reserved before the handler runs,
//! completed after it succeeded and released when it failed; never marked before success.
//! An id completed before drops the message as a duplicate; an id reserved by another
//! running holder is waited for (said in the log and on `/readyz`).
//!
//! A reservation is a lease renewed every third of its length while the handler runs, so a
//! holder that crashes loses it within one lease, however long its handler would have run.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use super::facts::facts_of;
use super::outage::{pause, until_available};
use super::OutcomeFuture;
use crate::message::{DropReason, Envelope, Outcome};
use crate::observe::Health;
use crate::store::{DedupStore, Reservation};

#[derive(Debug)]
struct DedupConfig {
    store: Arc<dyn DedupStore>,
    /// How long a reservation lives if its holder crashes.
    lease: Duration,
    /// How long a completed id is remembered.
    ttl: Duration,
    /// This worker's name in reservations.
    worker: String,
    /// Calls so far, to make each reservation's owner unique.
    calls: std::sync::atomic::AtomicU64,
    shutdown: CancellationToken,
    /// Where waits for another holder's reservation are reported.
    health: Option<Arc<Health>>,
}

/// Deduplicates messages by id.
#[derive(Debug, Clone)]
pub struct DedupLayer {
    config: Arc<DedupConfig>,
}

impl DedupLayer {
    /// Reserves ids in `store` for `lease`, remembers completed ones for `ttl`. `worker`
    /// names this worker in reservations.
    pub fn new(
        store: Arc<dyn DedupStore>,
        lease: Duration,
        ttl: Duration,
        worker: &str,
        shutdown: CancellationToken,
    ) -> Self {
        DedupLayer {
            config: Arc::new(DedupConfig {
                store,
                lease,
                ttl,
                worker: worker.to_owned(),
                calls: std::sync::atomic::AtomicU64::new(0),
                shutdown,
                health: None,
            }),
        }
    }

    /// Reports waits for another holder's reservation to `health` (the readiness probe).
    pub(crate) fn reporting(mut self, health: Option<Arc<Health>>) -> Self {
        if let Some(config) = Arc::get_mut(&mut self.config) {
            config.health = health;
        }
        self
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = DedupService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DedupService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// See [`DedupLayer`].
#[derive(Debug, Clone)]
pub struct DedupService<S> {
    inner: S,
    config: Arc<DedupConfig>,
}

impl<S> Service<Envelope> for DedupService<S>
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
            let Some(id) = facts_of(&envelope).and_then(|f| f.id.clone()) else {
                return inner.call(envelope).await;
            };
            // Unique per call: a redelivered copy of the same offset in this process (after a
            // rebalance brought the partition back) must not share the reservation.
            let call = config
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let owner = format!(
                "{}/{}/{}/{}/{call}",
                config.worker, envelope.topic, envelope.partition, envelope.offset
            );
            let shutdown = &config.shutdown;
            match reserve(&config, &id, &owner, envelope.offset).await {
                Some(Reservation::Reserved) => {}
                Some(Reservation::Completed) => {
                    tracing::info!(id, offset = envelope.offset, "duplicate message dropped");
                    return Ok(Outcome::Drop(DropReason::Duplicate));
                }
                Some(Reservation::InProgress) | None => return Ok(Outcome::Requeue),
            }
            let (stop_renewal, renewal) = renew_while_held(&config, &id, &owner);
            let outcome = inner.call(envelope.clone()).await;
            // No renewal may land after the completion or the release below.
            stop_renewal.cancel();
            let _ = renewal.await;
            let outcome = outcome?;
            if matches!(outcome, Outcome::Ack { .. }) {
                let done = until_available("dedup complete", shutdown, || {
                    config.store.complete(&id, &owner, config.ttl)
                })
                .await;
                if done.is_none() {
                    tracing::warn!(
                        id,
                        "shutdown before the id was recorded; the message was handled"
                    );
                }
            } else if let Err(e) = config.store.release(&id, &owner).await {
                tracing::debug!(id, error = %e, "releasing a reservation failed; it expires with its lease");
            }
            Ok(outcome)
        })
    }
}

/// Reserves `id` for `owner`, waiting while another holder's reservation runs (reported in the
/// log and to the readiness probe). `None` on shutdown.
async fn reserve(config: &DedupConfig, id: &str, owner: &str, offset: i64) -> Option<Reservation> {
    let shutdown = &config.shutdown;
    let mut wait = Duration::from_millis(10);
    let mut waiting = false;
    let state = loop {
        let Some(state) = until_available("dedup reserve", shutdown, || {
            config.store.reserve(id, owner, config.lease)
        })
        .await
        else {
            break None;
        };
        if state != Reservation::InProgress {
            break Some(state);
        }
        if !waiting {
            waiting = true;
            tracing::info!(
                id,
                offset,
                lease = ?config.lease,
                "waiting for a reservation held by another worker (a crashed holder's lease expires within the lease)"
            );
            if let Some(health) = &config.health {
                health.reservation_wait_started(id);
            }
        }
        if !pause(wait, shutdown).await {
            break None;
        }
        wait = (wait * 2).min(Duration::from_secs(1));
    };
    if waiting {
        if let Some(health) = &config.health {
            health.reservation_wait_ended(id);
        }
    }
    state
}

/// Renews `owner`'s reservation of `id` every third of the lease until the returned token is
/// cancelled; the task ends after its last renewal.
fn renew_while_held(
    config: &Arc<DedupConfig>,
    id: &str,
    owner: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let (config, id, owner, until) = (
        config.clone(),
        id.to_owned(),
        owner.to_owned(),
        stop.clone(),
    );
    let every = (config.lease / 3).max(Duration::from_millis(10));
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = until.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match config.store.reserve(&id, &owner, config.lease).await {
                Ok(Reservation::Reserved) => {}
                Ok(_) => {
                    tracing::warn!(id, "a dedup reservation was lost while its handler ran (its lease ran out); another worker may run the message too");
                    return;
                }
                Err(e) => {
                    tracing::debug!(id, error = %e, "renewing a dedup reservation failed; trying again")
                }
            }
        }
    });
    (stop, task)
}
