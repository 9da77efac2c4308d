//! Stale drop, key lock and dedup in one store call before the handler and one after it,
//! for a worker whose three guards (or the lock and one of the others) live in one store
//! that offers it ([`GuardStore`]: a Redis named by the same URL). It stands where the lock
//! would, in place of the three separate policies, and keeps their semantics (see
//! `stale.rs`, `lock.rs`, `dedup.rs`): the version is checked, the lock taken and the id
//! reserved together, all or nothing; after the handler the id is completed (or released),
//! the version advanced and the lock released together.
//!
//! It is used only where nothing stands between the stale check and the lock (no circuit
//! breaker, no rate limit) and no transactional store decides about retry-tier records, so
//! that checking the version at the lock changes nothing a message sees.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::facts::facts_of;
use super::lock::hold;
use super::on_drop::ReleaseOnDrop;
use super::outage::{until_answered, until_available, wait_before_handler, Unanswered};
use super::sink::Sink;
use super::stack::Assembly;
use super::stale::{copy, never_stale_in_tier, overtaken};
use crate::message::{DropReason, Envelope, LeaseState, Outcome};
use crate::observe::Health;
use crate::store::guards::{Entered, Entry, Exit, GuardStore};

/// The three guards in one call each way; see the module docs.
#[derive(Debug)]
pub(crate) struct Guarded {
    store: Arc<dyn GuardStore>,
    /// Whether the stale check is on (the message's version is checked and advanced).
    stale: bool,
    /// Whether dedup is on (the message's id is reserved and completed).
    dedup: bool,
    lock_lease: Duration,
    dedup_lease: Duration,
    /// How long a completed id is remembered.
    ttl: Duration,
    /// Where dropped stale messages are copied (`<topic>.stale`), when enabled.
    copy_to: Option<Arc<dyn Sink>>,
    /// This worker's name in reservations.
    worker: String,
    /// Calls so far, to make each reservation's owner unique.
    calls: AtomicU64,
    shutdown: CancellationToken,
    health: Arc<Health>,
    /// Refusals of the call before the handler after which the message is dead-lettered.
    give_up_after: Option<NonZeroU32>,
}

/// On when the worker connected its guards to one store that offers them together.
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    let store = a.guards?.clone();
    let config = a.config;
    Some(wrap(Guarded {
        store,
        stale: config.stale.is_some(),
        dedup: config.dedup.is_some(),
        lock_lease: Duration::from_millis(config.lock.as_ref().map_or(10_000, |l| l.lease_ms))
            .max(Duration::from_millis(30)),
        dedup_lease: config.dedup_lease(),
        ttl: Duration::from_millis(
            config
                .dedup
                .as_ref()
                .map_or(7 * 24 * 3_600_000, |d| d.ttl_ms),
        ),
        copy_to: config
            .stale
            .as_ref()
            .is_some_and(|s| s.copy_to_topic)
            .then(|| a.routing.sink.clone()),
        worker: a.worker_id.to_owned(),
        calls: AtomicU64::new(0),
        shutdown: a.shutdown.clone(),
        health: a.health.clone(),
        give_up_after: a.give_up_after(),
    }))
}

impl Policy for Guarded {
    async fn call(self: Arc<Self>, envelope: Envelope, next: Next) -> Outcome {
        let Some(facts) = facts_of(&envelope) else {
            return next.run(envelope).await;
        };
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        // Unique per call: a redelivered copy of the same offset in this process (after a
        // rebalance brought the partition back) must not share the reservation.
        let owner = format!(
            "{}/{}/{}/{}/{call}",
            self.worker, envelope.topic, envelope.partition, envelope.offset
        );
        let version = facts.version.filter(|_| self.stale);
        let entry = Entry {
            key: &facts.store_key,
            version,
            id: facts.id.as_deref().filter(|_| self.dedup),
            owner: &owner,
            lock_lease: self.lock_lease,
            dedup_lease: self.dedup_lease,
        };
        // A run that succeeded before its lease was found lost: its effect landed.
        let mut succeeded = None;
        // Refusals dead-letter the message only before its handler first ran.
        let mut give_up_after = self.give_up_after;
        loop {
            let (token, granted_at) = match self.enter(&entry, &envelope, give_up_after).await {
                Ok(Admitted::Granted(token, sent)) => (token, sent),
                Ok(Admitted::Stale(current)) => {
                    let version = version.unwrap_or(current);
                    return self.stale_drop(&envelope, &entry, version, current).await;
                }
                Ok(Admitted::Duplicate) => {
                    tracing::info!(
                        id = entry.id,
                        offset = envelope.offset,
                        "duplicate message dropped"
                    );
                    // The first run may have ended before it advanced the version.
                    self.advance(&entry).await;
                    // Found completed by this delivery's earlier run: handled, not a duplicate.
                    return succeeded.unwrap_or(Outcome::Drop(DropReason::Duplicate));
                }
                Err(unanswered) => return unanswered.outcome(&envelope),
            };
            // Released if this run is dropped or unwound before its exit below.
            let held_guards = held_guards(&self.store, &entry, token);
            if granted_at.elapsed() >= self.lock_lease {
                // The lease ran out before the handler could start (the call that granted
                // it took that long): take the key again.
                if let Err(e) = self
                    .store
                    .exit(&self.exit_of(&entry, token, false, None))
                    .await
                {
                    tracing::debug!(key = entry.key, error = %e, "releasing an expired grant failed; it expires with its lease");
                }
                held_guards.ended();
                continue;
            }
            let lease = Arc::new(LeaseState::new(token));
            let mut held = envelope.clone();
            held.guard.lease = Some(lease.clone());
            let outcome = self.hold(&entry, &lease, granted_at, next.run(held)).await;
            let outcome = match version {
                Some(version) => never_stale_in_tier(&envelope, version, outcome),
                None => outcome,
            };
            let lost = lease.is_lost() && !matches!(outcome, Outcome::Requeue);
            let acked = matches!(outcome, Outcome::Ack { .. });
            let handled = acked || outcome == Outcome::Drop(DropReason::Duplicate);
            // After a lost lease, the version advances once the run again found the delivery
            // handled.
            let exit = self.exit_of(&entry, token, acked, version.filter(|_| handled && !lost));
            if handled {
                if until_available("guards exit", &self.shutdown, || self.store.exit(&exit))
                    .await
                    .is_none()
                {
                    tracing::warn!(
                        key = entry.key,
                        "shutdown before the id and version were recorded; the message was handled"
                    );
                }
            } else if let Err(e) = self.store.exit(&exit).await {
                tracing::debug!(key = entry.key, error = %e, "releasing the lock and the reservation failed; they expire with their leases");
            }
            held_guards.ended();
            if lost {
                tracing::warn!(
                    key = entry.key,
                    token,
                    offset = envelope.offset,
                    "lease lost while handling; handling again under a new grant"
                );
                if acked {
                    succeeded = Some(outcome);
                }
                give_up_after = None;
                continue;
            }
            return outcome;
        }
    }
}

/// The lock and reservation `entry`'s grant `token` holds in `store`: released, in a task of
/// their own, when the run is dropped or unwound by a panic before its exit, so that the
/// key's next holder does not wait out the leases.
fn held_guards(
    store: &Arc<dyn GuardStore>,
    entry: &Entry<'_>,
    token: u64,
) -> ReleaseOnDrop<impl std::future::Future<Output = ()> + Send + 'static> {
    let store = store.clone();
    let key = entry.key.to_owned();
    let id = entry.id.map(|id| (id.to_owned(), entry.owner.to_owned()));
    ReleaseOnDrop::new(async move {
        let exit = Exit {
            key: &key,
            token,
            id: id.as_ref().map(|(id, owner)| (id.as_str(), owner.as_str())),
            completed: false,
            ttl: Duration::ZERO,
            advance: None,
        };
        if let Err(e) = store.exit(&exit).await {
            tracing::debug!(key, error = %e, "releasing the lock and the reservation of a dropped run failed; they expire with their leases");
        }
    })
}

/// How the guards before the handler ended, after waiting out other holders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admitted {
    /// The key's applied version (not older than the message's).
    Stale(i64),
    /// The id was handled before.
    Duplicate,
    /// The lock's fencing token, and when the call that granted it was sent (the lease
    /// counts from there); the id (if any) is reserved.
    Granted(u64, Instant),
}

impl Guarded {
    /// The exit of `entry`'s grant `token`: the id completed (else released), the version
    /// advanced to `advance`, the lock released.
    fn exit_of<'a>(
        &self,
        entry: &Entry<'a>,
        token: u64,
        completed: bool,
        advance: Option<i64>,
    ) -> Exit<'a> {
        Exit {
            key: entry.key,
            token,
            id: entry.id.map(|id| (id, entry.owner)),
            completed,
            ttl: self.ttl,
            advance,
        }
    }

    /// Asks the guards before the handler until they grant the lock or end the message's
    /// way (stale, duplicate), waiting while another holder has the key or the id.
    async fn enter(
        &self,
        entry: &Entry<'_>,
        envelope: &Envelope,
        give_up_after: Option<NonZeroU32>,
    ) -> Result<Admitted, Unanswered> {
        let asked = Instant::now();
        let mut lock_wait = Duration::from_millis(5);
        let mut id_wait = Duration::from_millis(10);
        let mut waiting_for_id = false;
        let answer = loop {
            // When the call that answered was sent (a call through an outage is made again):
            // the lease is counted from no later than the script that granted it.
            let mut sent = Instant::now();
            let answer = until_answered("guards enter", &self.shutdown, give_up_after, || {
                sent = Instant::now();
                self.store.enter(entry)
            })
            .await;
            let delay = match answer {
                Ok(Entered::Held) => {
                    let delay = lock_wait;
                    lock_wait = (lock_wait * 2)
                        .min(self.lock_lease / 4)
                        .max(Duration::from_millis(5));
                    delay
                }
                Ok(Entered::InProgress) => {
                    if !waiting_for_id {
                        waiting_for_id = true;
                        tracing::info!(
                            id = entry.id,
                            offset = envelope.offset,
                            lease = ?self.dedup_lease,
                            "waiting for a reservation held by another worker (a crashed holder's lease expires within the lease)"
                        );
                        self.health
                            .reservation_wait_started(entry.id.unwrap_or_default());
                    }
                    let delay = id_wait;
                    id_wait = (id_wait * 2).min(Duration::from_secs(1));
                    delay
                }
                Ok(Entered::Granted(token)) => {
                    crate::observe::lock_wait(self.store.backend(), asked.elapsed().as_secs_f64());
                    break Ok(Admitted::Granted(token, sent));
                }
                Ok(Entered::Stale(current)) => break Ok(Admitted::Stale(current)),
                Ok(Entered::Duplicate) => break Ok(Admitted::Duplicate),
                Err(unanswered) => break Err(unanswered),
            };
            if !wait_before_handler(delay, &self.shutdown).await {
                break Err(Unanswered::Shutdown);
            }
        };
        if waiting_for_id {
            self.health
                .reservation_wait_ended(entry.id.unwrap_or_default());
        }
        answer
    }

    /// A message whose `version` is not newer than its key's `current` one: a duplicate of
    /// the applied version, an overtaken retry-tier record, or stale (copied when enabled).
    async fn stale_drop(
        &self,
        envelope: &Envelope,
        entry: &Entry<'_>,
        version: i64,
        current: i64,
    ) -> Outcome {
        if let Some(outcome) = overtaken(envelope, version, current) {
            return outcome;
        }
        tracing::info!(
            key = entry.key,
            version,
            current,
            offset = envelope.offset,
            "stale message dropped"
        );
        if let Some(sink) = &self.copy_to {
            if !copy(sink.as_ref(), envelope, &self.shutdown).await {
                return Outcome::Requeue;
            }
        }
        Outcome::Drop(DropReason::Stale)
    }

    /// Records the message's version as applied (compare-and-set), when the stale check is
    /// on: for a duplicate, whose first run may have ended before it did.
    async fn advance(&self, entry: &Entry<'_>) {
        let Some(version) = entry.version else {
            return;
        };
        // Granting nothing and releasing nothing: token 0 is never granted.
        let exit = Exit {
            key: entry.key,
            token: 0,
            id: None,
            completed: false,
            ttl: self.ttl,
            advance: Some(version),
        };
        if until_available("guards exit", &self.shutdown, || self.store.exit(&exit))
            .await
            .is_none()
        {
            tracing::warn!(
                key = entry.key,
                version,
                "shutdown before the version was recorded; the message was handled"
            );
        }
    }

    /// Runs `call` while renewing the lease (granted by a call sent at `granted_at`) and the
    /// reservation every third of the shorter lease ([`hold`]); a reservation found lost is
    /// warned about once.
    async fn hold<F: std::future::Future>(
        &self,
        entry: &Entry<'_>,
        lease: &LeaseState,
        granted_at: Instant,
        call: F,
    ) -> F::Output {
        let shortest = match entry.id {
            Some(_) => self.lock_lease.min(self.dedup_lease),
            None => self.lock_lease,
        };
        let every = (shortest / 3).max(Duration::from_millis(10));
        let reservation_lost = AtomicBool::new(false);
        let renew = || async {
            let (held, reserved) = self.store.renew(entry, lease.token).await?;
            if held && !reserved && !reservation_lost.swap(true, Ordering::Relaxed) {
                tracing::warn!(id = entry.id, "a dedup reservation was lost while its handler ran (its lease ran out); another worker may run the message too");
            }
            Ok(held)
        };
        let (output, _) = hold(
            entry.key,
            lease,
            self.lock_lease,
            every,
            granted_at,
            call,
            renew,
        )
        .await;
        output
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicU32;

    use async_trait::async_trait;
    use parking_lot::Mutex;

    use super::*;
    use crate::store::StoreError;

    /// Guards in memory whose every renewal finds the lock gone; records the exits.
    #[derive(Debug, Default)]
    struct Unrenewable {
        tokens: AtomicU64,
        completed: Mutex<HashSet<String>>,
        applied: Mutex<Option<i64>>,
        exits: Mutex<Vec<(u64, bool, Option<i64>)>>,
    }

    #[async_trait]
    impl GuardStore for Unrenewable {
        fn backend(&self) -> &'static str {
            "test"
        }
        async fn enter(&self, entry: &Entry<'_>) -> Result<Entered, StoreError> {
            let applied = *self.applied.lock();
            if let (Some(a), Some(v)) = (applied, entry.version) {
                if a >= v {
                    return Ok(Entered::Stale(a));
                }
            }
            if entry
                .id
                .is_some_and(|id| self.completed.lock().contains(id))
            {
                return Ok(Entered::Duplicate);
            }
            Ok(Entered::Granted(
                self.tokens.fetch_add(1, Ordering::SeqCst) + 1,
            ))
        }
        async fn renew(&self, _entry: &Entry<'_>, _token: u64) -> Result<(bool, bool), StoreError> {
            Ok((false, true))
        }
        async fn exit(&self, exit: &Exit<'_>) -> Result<(), StoreError> {
            if exit.completed {
                if let Some((id, _)) = exit.id {
                    self.completed.lock().insert(id.to_owned());
                }
            }
            if let Some(v) = exit.advance {
                let mut applied = self.applied.lock();
                *applied = Some(applied.map_or(v, |a| a.max(v)));
            }
            self.exits
                .lock()
                .push((exit.token, exit.completed, exit.advance));
            Ok(())
        }
    }

    /// A delivery of key `k`, version 4, id `id`.
    fn delivery() -> Envelope {
        Envelope::of_key_k(Some(4), Some("id"))
    }

    fn guarded(store: Arc<Unrenewable>) -> Guarded {
        Guarded {
            store,
            stale: true,
            dedup: true,
            lock_lease: Duration::from_millis(60),
            dedup_lease: Duration::from_secs(10),
            ttl: Duration::from_secs(60),
            copy_to: None,
            worker: "w".into(),
            calls: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            health: Arc::new(Health::default()),
            give_up_after: None,
        }
    }

    #[tokio::test]
    async fn a_success_whose_lease_was_lost_completes_the_id_and_is_reported_once_the_run_again_finds_it(
    ) {
        let runs = Arc::new(AtomicU32::new(0));
        let inner = {
            let runs = runs.clone();
            tower::service_fn(move |_envelope: Envelope| {
                runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    // Outlasts the lease: the first renewal finds the lock gone.
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    Ok::<_, Infallible>(Outcome::Ack { attempt: 1 })
                }
            })
        };
        let store = Arc::new(Unrenewable::default());
        let service = Next::service(crate::policy::adapter::BoxedStack::new(inner))
            .with(guarded(store.clone()));
        let outcome = service.run(delivery()).await;
        assert_eq!(outcome, Outcome::Ack { attempt: 1 }, "reported as handled");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the run again found the id completed"
        );
        assert_eq!(
            *store.exits.lock(),
            [(1, true, None), (0, false, Some(4))],
            "the lost run completed the id without advancing; the version advanced after"
        );
        assert_eq!(*store.applied.lock(), Some(4));
    }

    #[tokio::test]
    async fn a_failure_whose_lease_was_lost_is_run_again_under_a_new_grant() {
        let runs = Arc::new(AtomicU32::new(0));
        let inner = {
            let runs = runs.clone();
            tower::service_fn(move |_envelope: Envelope| {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    if run == 0 {
                        tokio::time::sleep(Duration::from_millis(60)).await;
                        return Ok::<_, Infallible>(Outcome::Failed(crate::message::Failure {
                            class: crate::message::ErrorClass::Transient,
                            message: "failed".into(),
                            permanent: false,
                            retry_after: None,
                            first_failed_ms: 0,
                            attempt: 1,
                            unavailable: false,
                        }));
                    }
                    Ok(Outcome::Ack { attempt: 1 })
                }
            })
        };
        let store = Arc::new(Unrenewable::default());
        let service = Next::service(crate::policy::adapter::BoxedStack::new(inner))
            .with(guarded(store.clone()));
        let outcome = service.run(delivery()).await;
        assert_eq!(outcome, Outcome::Ack { attempt: 1 });
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "run again under a new grant"
        );
        assert_eq!(
            *store.exits.lock(),
            [(1, false, None), (2, true, Some(4))],
            "the lost run released; the second completed and advanced"
        );
    }

    /// A run unwound by a panic below the guards exits them (the lock and the reservation
    /// released, nothing completed or advanced): the key's next holder does not wait out
    /// the leases.
    #[tokio::test]
    async fn a_run_unwound_by_a_panic_below_releases_the_lock_and_the_reservation() {
        use futures::FutureExt as _;

        let store = Arc::new(Unrenewable::default());
        let service = Next::from_fn(|_| Box::pin(async { panic!("a layer below") }))
            .with(guarded(store.clone()));
        let unwound = std::panic::AssertUnwindSafe(service.run(delivery()))
            .catch_unwind()
            .await;
        assert!(unwound.is_err(), "the panic went up");
        let deadline = Instant::now() + Duration::from_secs(2);
        while store.exits.lock().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*store.exits.lock(), [(1, false, None)]);
    }
}
