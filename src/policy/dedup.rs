//! Deduplication by message id, two-phase: the id is reserved before the handler runs,
//! completed after it succeeded and released when it failed; never marked before success.
//! An id completed before drops the message as a duplicate; an id reserved by another
//! running holder is waited for (said in the log and on `/readyz`).
//!
//! A reservation is a lease renewed every third of its length while the handler runs, so a
//! holder that crashes loses it within one lease, however long its handler would have run.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::facts::facts_of;
use super::outage::{until_answered, until_available, wait_before_handler, Unanswered};
use super::stack::Assembly;
use crate::message::{DropReason, Envelope, Outcome};
use crate::observe::Health;
use crate::store::{DedupStore, Reservation};

/// Deduplicates messages by id.
#[derive(Debug)]
pub(crate) struct DedupConfig {
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
    /// Refusals of the reservation after which the message is dead-lettered.
    give_up_after: Option<std::num::NonZeroU32>,
}

/// On when the worker has a dedup store (`[dedup]`): reservations of the configured lease
/// (10 s by default), completed ids remembered for `ttl_ms` (7 days by default).
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    if a.guards.is_some() {
        return None;
    }
    let store = a.stores.dedup.clone()?;
    let ttl_ms = a
        .config
        .dedup
        .as_ref()
        .map_or(7 * 24 * 3_600_000, |d| d.ttl_ms);
    Some(wrap(DedupConfig {
        store,
        lease: a.config.dedup_lease(),
        ttl: Duration::from_millis(ttl_ms),
        worker: a.worker_id.to_owned(),
        calls: std::sync::atomic::AtomicU64::new(0),
        shutdown: a.shutdown.clone(),
        health: Some(a.health.clone()),
        give_up_after: a.give_up_after(),
    }))
}

impl Policy for DedupConfig {
    async fn call(self: Arc<Self>, envelope: Envelope, next: Next) -> Outcome {
        let config = &self;
        let Some(id) = facts_of(&envelope).and_then(|f| f.id.clone()) else {
            return next.run(envelope).await;
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
        match reserve(config, &id, &owner, envelope.offset).await {
            Ok(Reservation::Reserved) => {}
            Ok(Reservation::Completed) => {
                tracing::info!(id, offset = envelope.offset, "duplicate message dropped");
                return Outcome::Drop(DropReason::Duplicate);
            }
            Ok(Reservation::InProgress) => return Outcome::Requeue,
            Err(unanswered) => return unanswered.outcome(&envelope),
        }
        let (stop_renewal, renewal) = renew_while_held(config, &id, &owner);
        // If this call is dropped or unwound before it ends (a panic below), the renewals
        // stop (else they would keep the reservation for an owner that is gone, and every
        // later delivery of the id would wait for it) and, once the last one ended, the
        // reservation is released.
        let mut reserved = Reserved {
            held: Some((config.store.clone(), id.clone(), owner.clone())),
            renewal: Some(renewal),
            stop: stop_renewal,
        };
        let outcome = next.run(envelope.clone()).await;
        // No renewal may land after the completion or the release below.
        reserved.stop_renewal().await;
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
        reserved.ended();
        outcome
    }
}

/// A reservation a call holds, and its renewals: when the call is dropped or unwound by a
/// panic before it completed or released the id, the renewals stop and the reservation is
/// released after the last one ended (in a task of its own), so that the next delivery of
/// the id does not wait out the lease.
struct Reserved {
    /// The store, the id and the owner.
    held: Option<(Arc<dyn DedupStore>, String, String)>,
    /// The renewals' task, until it ended.
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// Stops the renewals.
    stop: CancellationToken,
}

impl Reserved {
    /// Stops the renewals and waits for the last one to end.
    async fn stop_renewal(&mut self) {
        self.stop.cancel();
        if let Some(renewal) = self.renewal.as_mut() {
            let _ = renewal.await;
        }
        self.renewal = None;
    }

    /// The call completed or released the id itself.
    fn ended(mut self) {
        self.held = None;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.stop.cancel();
        let Some((store, id, owner)) = self.held.take() else {
            return;
        };
        let renewal = self.renewal.take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // A renewal still under way could take the id again after the release.
                if let Some(renewal) = renewal {
                    let _ = renewal.await;
                }
                if let Err(e) = store.release(&id, &owner).await {
                    tracing::debug!(id, error = %e, "releasing the reservation of a dropped call failed; it expires with its lease");
                }
            });
        }
    }
}

/// Reserves `id` for `owner`, waiting while another holder's reservation runs (reported in the
/// log and to the readiness probe).
async fn reserve(
    config: &DedupConfig,
    id: &str,
    owner: &str,
    offset: i64,
) -> Result<Reservation, Unanswered> {
    let shutdown = &config.shutdown;
    let mut wait = Duration::from_millis(10);
    let mut waiting = false;
    let state = loop {
        let state = match until_answered("dedup reserve", shutdown, config.give_up_after, || {
            config.store.reserve(id, owner, config.lease)
        })
        .await
        {
            Ok(state) => state,
            Err(unanswered) => break Err(unanswered),
        };
        if state != Reservation::InProgress {
            break Ok(state);
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
        if !wait_before_handler(wait, shutdown).await {
            break Err(Unanswered::Shutdown);
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Instant;

    use super::*;
    use crate::policy::adapter::BoxedStack;
    use crate::store::memory::MemoryDedupStore;

    const LEASE: Duration = Duration::from_millis(90);

    /// Dedup over `store` with reservations of `lease`, around a layer that panics after
    /// `after`, and a delivery with the id `id`.
    fn panicking_below(
        store: &Arc<MemoryDedupStore>,
        lease: Duration,
        after: Duration,
    ) -> (Next, Envelope) {
        let dedup = DedupConfig {
            store: store.clone(),
            lease,
            ttl: Duration::from_secs(60),
            worker: "w".into(),
            calls: std::sync::atomic::AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            health: None,
            give_up_after: None,
        };
        let inner = tower::service_fn(move |_envelope: Envelope| async move {
            tokio::time::sleep(after).await;
            if after.is_zero() {
                return Ok::<_, Infallible>(Outcome::Ack { attempt: 1 });
            }
            panic!("a layer below panicked");
        });
        let service = Next::service(BoxedStack::new(inner)).with(dedup);
        (service, Envelope::of_key_k(None, Some("id")))
    }

    /// Reserves `id` for `owner`, asking until it is free, for up to `within`.
    async fn reserved_within(store: &MemoryDedupStore, owner: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if store.reserve("id", owner, LEASE).await.expect("memory") == Reservation::Reserved {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_run_unwound_by_a_panic_below_stops_renewing_its_reservation() {
        let store = Arc::new(MemoryDedupStore::new());
        // Panics after a few renewals (every third of the lease).
        let (service, envelope) = panicking_below(&store, LEASE, LEASE);
        let run = tokio::spawn(async move { service.run(envelope).await });
        assert!(run.await.is_err(), "the run was unwound");
        assert!(
            reserved_within(&store, "other", Duration::from_secs(5)).await,
            "the unwound run's reservation stayed"
        );
        store.release("id", "other").await.expect("memory");
        // A renewal still running would take the free id again (a renewal reserves): for
        // several renewal periods, it stays free.
        let watch_until = Instant::now() + LEASE * 3;
        while Instant::now() < watch_until {
            assert_eq!(
                store.reserve("id", "probe", LEASE).await.expect("memory"),
                Reservation::Reserved,
                "the unwound run's reservation was renewed"
            );
            store.release("id", "probe").await.expect("memory");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The reservation of a run unwound by a panic below is released, not left to its lease
    /// (10 s here): the next delivery of the id runs at once.
    #[tokio::test]
    async fn a_run_unwound_by_a_panic_below_releases_its_reservation() {
        let store = Arc::new(MemoryDedupStore::new());
        let (service, envelope) =
            panicking_below(&store, Duration::from_secs(10), Duration::from_millis(1));
        let run = tokio::spawn(async move { service.run(envelope).await });
        assert!(run.await.is_err(), "the run was unwound");
        assert!(
            reserved_within(&store, "other", Duration::from_secs(2)).await,
            "the unwound run's reservation was kept"
        );
    }
}
