//! The per-key lock: a lease lock on the message's key, held while the inner layers and the
//! handler run and renewed in the background. It guards the window in which two consumers
//! hold the same partition (a rebalance, a rolling deploy). The handler's context exposes the
//! fencing token; a holder whose lease is lost is told (its context says so), its result is
//! not reported, and the message is handled again under a new grant (dedup and the
//! transactional store make that second run a no-op when the first one's effect landed).
//! A record that ends leaves its lease with the worker's [`KeptLeases`] for a moment, so
//! that the key's next record runs under the same grant.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{Fuse, FusedFuture, FutureExt};
use tokio_util::sync::CancellationToken;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::facts::facts_of;
use super::kept_leases::KeptLeases;
use super::outage::{until_answered, wait_before_handler, Unanswered};
use super::stack::Assembly;
use super::stale::{judge, Checked};
use crate::config::WorkerConfig;
use crate::message::{DropReason, Envelope, LeaseState, Outcome};
use crate::store::{StoreError, VersionStore};

/// Takes the key lock around the layers below.
#[derive(Debug)]
pub(crate) struct LockConfig {
    /// The lock store and lease length, and the leases kept between a key's records.
    kept: Arc<KeptLeases>,
    /// The stale-drop policy's versions, checked once the lock is held (the stale policy
    /// makes no check of its own before the lock then): a check before the lock could race
    /// with another holder that applies a newer (or the same) version while this one waits.
    versions: Option<Arc<dyn VersionStore>>,
    /// Retry-tier records older than the applied version are left to the transactional
    /// store (see the stale policy).
    tier_records_to_transactions: bool,
    shutdown: CancellationToken,
    /// Refusals of the lock or the version read after which the message is dead-lettered.
    give_up_after: Option<NonZeroU32>,
}

/// The length of the key lock's leases: `lease_ms` (10 s by default), at least 30 ms.
pub(crate) fn lease_length(config: &WorkerConfig) -> Duration {
    let lease_ms = config.lock.as_ref().map_or(10_000, |l| l.lease_ms);
    Duration::from_millis(lease_ms).max(Duration::from_millis(30))
}

/// How long a key's lease is kept for the key's next record: `keep_ms` (20 ms by default).
pub(crate) fn keep_for(config: &WorkerConfig) -> Duration {
    Duration::from_millis(config.lock.as_ref().map_or(20, |l| l.keep_ms))
}

/// On when the worker has a lock store (`[lock]`), with leases of [`lease_length`] renewed
/// every third of it, kept between a key's records by the worker's [`KeptLeases`].
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    if a.guards.is_some() {
        return None;
    }
    let kept = a.kept_leases?.clone();
    let mut lock = LockConfig::new(
        kept,
        a.stores.version.clone(),
        a.stores.transactions.is_some(),
        a.shutdown.clone(),
    );
    lock.give_up_after = a.give_up_after();
    Some(wrap(lock))
}

impl Policy for LockConfig {
    async fn call(self: Arc<Self>, envelope: Envelope, next: Next) -> Outcome {
        let config = &self;
        let Some(facts) = facts_of(&envelope) else {
            return next.run(envelope).await;
        };
        let key = facts.store_key.as_str();
        // A run that succeeded before its lease was found lost: its effect landed.
        let mut succeeded = None;
        // Refusals dead-letter the message only before its handler first ran: a run whose
        // lease was lost may have landed its effect.
        let mut give_up_after = config.give_up_after;
        loop {
            let (token, renewed_at) = match config.acquire(key, give_up_after).await {
                Ok(grant) => grant,
                Err(unanswered) => return unanswered.outcome(&envelope),
            };
            // Released if this run is dropped or unwound before it ends the lease below.
            let held_lease = config.kept.held(key, token);
            if let (Some(versions), Some(version)) = (&config.versions, facts.version) {
                let current =
                    until_answered("version get", &config.shutdown, give_up_after, || {
                        versions.get(key)
                    })
                    .await;
                let current = match current {
                    Err(unanswered) => {
                        config.kept.release(key, token).await;
                        held_lease.ended();
                        return unanswered.outcome(&envelope);
                    }
                    Ok(current) => current,
                };
                // Stale, a duplicate or overtaken ends here (the stale policy above copies a
                // stale drop); a retry-tier record older than the applied version is left to
                // the transactional store, when there is one.
                if let Checked::Ended(outcome) = judge(
                    &envelope,
                    key,
                    version,
                    current,
                    config.tier_records_to_transactions,
                ) {
                    // From here the lease is `end`'s: a release on drop could free a lease
                    // it already keeps for the key's next record.
                    held_lease.ended();
                    config.kept.end(key, token, renewed_at).await;
                    return outcome;
                }
            }
            if renewed_at.elapsed() >= config.kept.lease() {
                // The lease ran out before the handler could start (the version read waited
                // through an outage): take the key again.
                config.kept.release(key, token).await;
                held_lease.ended();
                continue;
            }
            let lease = Arc::new(LeaseState::new(token));
            let mut held = envelope.clone();
            held.guard.lease = Some(lease.clone());
            let (outcome, renewed_at) = config.hold(key, &lease, renewed_at, next.run(held)).await;
            if lease.is_lost() || matches!(outcome, Outcome::Requeue) {
                config.kept.release(key, token).await;
                held_lease.ended();
            } else {
                held_lease.ended();
                config.kept.end(key, token, renewed_at).await;
            }
            if lease.is_lost() && !matches!(outcome, Outcome::Requeue) {
                tracing::warn!(
                    key,
                    token,
                    offset = envelope.offset,
                    "lease lost while handling; handling again under a new grant"
                );
                if matches!(outcome, Outcome::Ack { .. }) {
                    succeeded = Some(outcome);
                }
                give_up_after = None;
                continue;
            }
            // The run again finds the id completed, by the earlier run of this delivery
            // (or a newer holder): the delivery was handled, not a duplicate, and the
            // layers above (stale drop's version advance, the counters) must see the
            // success.
            if let (Outcome::Drop(DropReason::Duplicate), Some(ack)) = (&outcome, &succeeded) {
                return ack.clone();
            }
            return outcome;
        }
    }
}

impl LockConfig {
    /// Locks keys in `kept`'s store with its leases, kept between a key's records there.
    fn new(
        kept: Arc<KeptLeases>,
        versions: Option<Arc<dyn VersionStore>>,
        tier_records_to_transactions: bool,
        shutdown: CancellationToken,
    ) -> Self {
        LockConfig {
            kept,
            versions,
            tier_records_to_transactions,
            shutdown,
            give_up_after: None,
        }
    }

    /// Runs `call` while renewing the lease (last granted or renewed at `renewed_at`) every
    /// third of its length (see [`hold`]); its output, and when the lease was last renewed.
    async fn hold<F: std::future::Future>(
        &self,
        key: &str,
        lease: &LeaseState,
        renewed_at: Instant,
        call: F,
    ) -> (F::Output, Instant) {
        hold(
            key,
            lease,
            self.kept.lease(),
            self.kept.lease() / 3,
            renewed_at,
            call,
            || self.kept.store().renew(key, lease.token, self.kept.lease()),
        )
        .await
    }

    /// Takes the key's lock (the lease this worker kept from the key's last record, when
    /// there is one), waiting while another holder has it (and while the store refuses, up
    /// to `give_up_after` refusals); the token, and when it was granted or last renewed.
    async fn acquire(
        &self,
        key: &str,
        give_up_after: Option<NonZeroU32>,
    ) -> Result<(u64, Instant), Unanswered> {
        let mut wait = Duration::from_millis(5);
        let asked = std::time::Instant::now();
        loop {
            if let Some(kept) = self.kept.take(key).await {
                crate::observe::lock_wait(
                    self.kept.store().backend(),
                    asked.elapsed().as_secs_f64(),
                );
                return Ok(kept);
            }
            // When the call that answered was sent (a call through an outage is made again).
            let mut sent = Instant::now();
            let granted = until_answered("lock acquire", &self.shutdown, give_up_after, || {
                sent = Instant::now();
                self.kept.store().acquire(key, self.kept.lease())
            })
            .await?;
            if let Some(token) = granted {
                crate::observe::lock_wait(
                    self.kept.store().backend(),
                    asked.elapsed().as_secs_f64(),
                );
                return Ok((token, sent));
            }
            if !wait_before_handler(wait, &self.shutdown).await {
                return Err(Unanswered::Shutdown);
            }
            wait = (wait * 2)
                .min(self.kept.lease() / 4)
                .max(Duration::from_millis(5));
        }
    }
}

/// Runs `call` while `renew` extends the lease (of length `lease_length`, last granted or
/// renewed at `renewed_at`) every `every`, counted from `renewed_at`; marks `lease` lost when
/// a renewal answers `false`, or as soon as a lease has passed since the last grant or
/// renewal that succeeded (counted from when it was sent, so never later than the store's
/// own expiry), also when `call` ends after that. Renewals stop once the lease is lost.
/// Returns `call`'s output and when the lease was last granted or renewed.
pub(super) async fn hold<F, R, RF>(
    key: &str,
    lease: &LeaseState,
    lease_length: Duration,
    every: Duration,
    renewed_at: Instant,
    call: F,
    mut renew: R,
) -> (F::Output, Instant)
where
    F: std::future::Future,
    R: FnMut() -> RF,
    RF: std::future::Future<Output = Result<bool, StoreError>>,
{
    let first = tokio::time::Instant::now() + every.saturating_sub(renewed_at.elapsed());
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_renewed = renewed_at;
    // The renewal in flight, polled beside `call` (a slow store must not hold the handler
    // back), and when it was sent.
    let renewing = Fuse::terminated();
    let mut sent = renewed_at;
    // When the lease runs out unrenewed: moved on by each renewal that succeeded.
    let runs_out =
        tokio::time::sleep_until(tokio::time::Instant::from_std(renewed_at + lease_length));
    tokio::pin!(call, renewing, runs_out);
    loop {
        tokio::select! {
            output = &mut call => {
                if last_renewed.elapsed() >= lease_length {
                    lease.mark_lost();
                }
                return (output, last_renewed);
            }
            () = &mut runs_out, if !lease.is_lost() => lease.mark_lost(),
            _ = tick.tick(), if !lease.is_lost() && renewing.is_terminated() => {
                sent = Instant::now();
                renewing.set(tokio::time::timeout(every, renew()).fuse());
            }
            renewal = &mut renewing, if !renewing.is_terminated() => match renewal {
                Ok(Ok(true)) => {
                    last_renewed = sent;
                    runs_out
                        .as_mut()
                        .reset(tokio::time::Instant::from_std(sent + lease_length));
                }
                Ok(Ok(false)) => lease.mark_lost(),
                Ok(Err(e)) => tracing::warn!(key, error = %e, "lease renewal failed"),
                Err(_) => tracing::warn!(key, "lease renewal not answered within {every:?}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use std::convert::Infallible;

    use async_trait::async_trait;

    use super::*;
    use crate::message::DropReason;
    use crate::store::LockStore;
    use crate::store::StoreError;

    /// A lock store scripted for a test: with `grants`, every acquire is granted and every
    /// renewal fails as if the store were down; without, every acquire finds the key held by
    /// another worker.
    #[derive(Debug, Default)]
    struct Scripted {
        grants: bool,
        tokens: AtomicU64,
    }

    #[async_trait]
    impl LockStore for Scripted {
        async fn acquire(&self, _key: &str, _ttl: Duration) -> Result<Option<u64>, StoreError> {
            Ok(self
                .grants
                .then(|| self.tokens.fetch_add(1, Ordering::SeqCst) + 1))
        }
        async fn renew(&self, _key: &str, _token: u64, _ttl: Duration) -> Result<bool, StoreError> {
            if !self.grants {
                return Ok(false);
            }
            Err(StoreError::Unavailable {
                backend: "test",
                message: "down".into(),
                cause: None,
            })
        }
        async fn release(&self, _key: &str, _token: u64) -> Result<(), StoreError> {
            Ok(())
        }
        async fn fence(&self, _key: &str, _token: u64) -> Result<bool, StoreError> {
            Ok(true)
        }
    }

    /// The lock policy over `store` (leases of `lease`, kept `keep`) around `inner`, and a
    /// delivery of key `k` with the id `id`.
    fn locked<S>(store: Scripted, lease: Duration, keep: Duration, inner: S) -> (Next, Envelope)
    where
        S: tower::Service<Envelope, Response = Outcome, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let service =
            Next::service(crate::policy::adapter::BoxedStack::new(inner)).with(LockConfig::new(
                KeptLeases::new(Arc::new(store), lease, keep),
                None,
                false,
                CancellationToken::new(),
            ));
        (service, Envelope::of_key_k(None, Some("id")))
    }

    // Real time: the lease measures its renewals with `std::time::Instant`.
    #[tokio::test]
    async fn a_run_again_after_a_lost_lease_that_finds_its_own_success_reports_the_success() {
        let runs = Arc::new(AtomicU32::new(0));
        let inner = {
            let runs = runs.clone();
            tower::service_fn(move |_envelope: Envelope| {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    if run == 0 {
                        // Succeeds, but only after the lease ran out unrenewed.
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        Ok::<_, Infallible>(Outcome::Ack { attempt: 1 })
                    } else {
                        // The run again finds the id completed by the first run.
                        Ok(Outcome::Drop(DropReason::Duplicate))
                    }
                }
            })
        };
        let granting = Scripted {
            grants: true,
            ..Scripted::default()
        };
        let (service, envelope) = locked(
            granting,
            Duration::from_millis(45),
            Duration::from_millis(20),
            inner,
        );
        let outcome = service.run(envelope).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "run again under a new grant"
        );
        assert_eq!(outcome, Outcome::Ack { attempt: 1 });
    }

    /// A job abandoned at a revoke (its partition went to another owner) while it waits for
    /// the key's lock is requeued without running its handler: the new owner runs it.
    #[tokio::test]
    async fn an_abandoned_job_waiting_for_the_key_stops_waiting_and_never_runs_its_handler() {
        let runs = Arc::new(AtomicU32::new(0));
        let inner = {
            let runs = runs.clone();
            tower::service_fn(move |_envelope: Envelope| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Outcome::Ack { attempt: 1 }) }
            })
        };
        let (service, envelope) = locked(
            Scripted::default(),
            Duration::from_secs(10),
            Duration::ZERO,
            inner,
        );
        let abandoned = Arc::new(CancellationToken::new());
        let job = tokio::spawn(super::super::route::abandonable(
            abandoned.clone(),
            async move { service.run(envelope).await },
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!job.is_finished(), "the job waits for the key");
        abandoned.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(5), job)
            .await
            .expect("the abandoned job stopped waiting")
            .expect("the job ran");
        assert_eq!(outcome, Outcome::Requeue);
        assert_eq!(runs.load(Ordering::SeqCst), 0, "its handler never ran");
    }

    /// A renewal the store never answers: the handler runs on beside it (it is not held
    /// back until the renewal times out), and the lease is found lost once a lease has
    /// passed since the grant, while the handler still runs.
    #[tokio::test]
    async fn a_hung_renewal_neither_stalls_the_handler_nor_outlives_the_lease() {
        let lease = Arc::new(LeaseState::new(1));
        let started = Instant::now();
        // Ends between the first renewal's start (1 s) and its time limit (2 s).
        let (_, _) = hold(
            "k",
            &lease,
            Duration::from_secs(3),
            Duration::from_secs(1),
            started,
            tokio::time::sleep(Duration::from_millis(1_200)),
            std::future::pending::<Result<bool, StoreError>>,
        )
        .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1_800),
            "the handler waited for the hung renewal: {took:?}"
        );
        assert!(!lease.is_lost());

        // Runs past the lease: lost at the lease's end, seen from inside the run.
        let lease = Arc::new(LeaseState::new(2));
        let started = Instant::now();
        let watched = lease.clone();
        let (lost_at, _) = hold(
            "k",
            &lease,
            Duration::from_millis(600),
            Duration::from_millis(200),
            started,
            async move {
                while !watched.is_lost() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                started.elapsed()
            },
            std::future::pending::<Result<bool, StoreError>>,
        )
        .await;
        assert!(
            lost_at >= Duration::from_millis(600) && lost_at < Duration::from_millis(1_000),
            "lost {lost_at:?} after the grant, for a lease of 600 ms"
        );
    }

    /// `inner` under the lock policy over `store`, with leases of `lease`, none kept.
    fn under_lock(inner: Next, store: Arc<dyn LockStore>, lease: Duration) -> Next {
        inner.with(LockConfig::new(
            KeptLeases::new(store, lease, Duration::ZERO),
            None,
            false,
            CancellationToken::new(),
        ))
    }

    /// Asks `store` for `key` until it is granted, for up to `within`; the token.
    async fn granted_within(store: &dyn LockStore, key: &str, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let granted = store
                .acquire(key, Duration::from_secs(10))
                .await
                .expect("acquire");
            if granted.is_some() {
                return granted;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// A run unwound by a panic below the lock, or dropped (its job ended), releases its
    /// lease: the key's next holder does not wait out the 10 s lease.
    #[tokio::test]
    async fn a_run_unwound_or_dropped_below_the_lock_releases_its_lease() {
        use futures::FutureExt as _;

        let store = Arc::new(crate::store::memory::MemoryLockStore::new());
        let service = |inner: Next| under_lock(inner, store.clone(), Duration::from_secs(10));
        let envelope = Envelope::of_key_k(None, None);

        let panicking = service(Next::from_fn(|_| {
            Box::pin(async { panic!("a layer below") })
        }));
        let unwound = std::panic::AssertUnwindSafe(panicking.run(envelope.clone()))
            .catch_unwind()
            .await;
        assert!(unwound.is_err(), "the panic went up");
        let token = granted_within(store.as_ref(), "k", Duration::from_secs(2))
            .await
            .expect("the lease of the unwound run was released");
        store.release("k", token).await.expect("release");

        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let started = Arc::new(parking_lot::Mutex::new(Some(started)));
        let pending = service(Next::from_fn(move |_| {
            if let Some(started) = started.lock().take() {
                let _ = started.send(());
            }
            Box::pin(std::future::pending())
        }));
        let job = tokio::spawn(async move { pending.run(envelope).await });
        running.await.expect("the run started under the lock");
        job.abort();
        assert!(
            granted_within(store.as_ref(), "k", Duration::from_secs(2))
                .await
                .is_some(),
            "the lease of the dropped run was kept"
        );
    }

    /// A memory lock store that is unreachable for its first calls, until `until`.
    #[derive(Debug)]
    struct DownUntil {
        until: Instant,
        store: crate::store::memory::MemoryLockStore,
    }

    #[async_trait]
    impl LockStore for DownUntil {
        async fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
            if Instant::now() < self.until {
                return Err(StoreError::Unavailable {
                    backend: "test",
                    message: "down".into(),
                    cause: None,
                });
            }
            self.store.acquire(key, ttl).await
        }
        async fn renew(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
            self.store.renew(key, token, ttl).await
        }
        async fn release(&self, key: &str, token: u64) -> Result<(), StoreError> {
            self.store.release(key, token).await
        }
        async fn fence(&self, key: &str, token: u64) -> Result<bool, StoreError> {
            self.store.fence(key, token).await
        }
    }

    /// A grant that comes after the store was unreachable for longer than a lease counts
    /// its lease from the call that answered: the handler runs once, its result counts.
    #[tokio::test]
    async fn a_grant_after_an_outage_longer_than_the_lease_is_not_lost_at_once() {
        let runs = Arc::new(AtomicU32::new(0));
        let handler = {
            let runs = runs.clone();
            Next::from_fn(move |_| {
                runs.fetch_add(1, Ordering::SeqCst);
                Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Outcome::Ack { attempt: 1 }
                })
            })
        };
        let store = DownUntil {
            until: Instant::now() + Duration::from_millis(700),
            store: crate::store::memory::MemoryLockStore::new(),
        };
        let service = under_lock(handler, Arc::new(store), Duration::from_millis(300));
        assert_eq!(
            service.run(Envelope::of_key_k(None, None)).await,
            Outcome::Ack { attempt: 1 }
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran again");
    }
}
