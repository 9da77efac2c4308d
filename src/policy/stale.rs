//! Stale-message dropping: a message whose version is not newer than the last applied version
//! of its key is dropped before any handler work (before the key lock, or under it when the
//! lock policy makes the check), counted and logged, and optionally copied to `<topic>.stale`
//! (as is one the handler's transaction finds stale). After the handler succeeded, the key's
//! version advances (compare-and-set), unless the handler's transaction already recorded it.
//!
//! A record whose version equals the applied one is that version delivered again: it is
//! dropped as a duplicate (not stale, and not copied). A retry-tier record is never dropped as
//! stale because a later record overtook it (in relaxed ordering, or where strict order could
//! not be kept): one whose version is older than the applied one fails permanently with the
//! class `overtaken` and is dead-lettered, so its effect is not lost unseen.

use std::num::NonZeroU32;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::facts::facts_of;
use super::outage::{until_answered, until_available};
use super::sink::{OutgoingRecord, Sink};
use super::stack::Assembly;
use crate::message::headers;
use crate::message::{DropReason, Envelope, ErrorClass, Failure, Outcome};
use crate::store::VersionStore;

/// Drops stale messages; see the module docs.
#[derive(Debug)]
pub(crate) struct StalePolicy {
    /// A transactional store decides about retry-tier records older than the applied
    /// version (it knows whether their id was applied).
    tier_records_to_transactions: bool,
    versions: Arc<dyn VersionStore>,
    /// Where dropped messages are copied (`<topic>.stale`), when enabled.
    copy_to: Option<Arc<dyn Sink>>,
    shutdown: CancellationToken,
    /// Refusals of the version read after which the message is dead-lettered.
    give_up_after: Option<NonZeroU32>,
    /// `versions` is the transactional store's version table: a version the handler's
    /// committed transaction recorded is not advanced again.
    versions_in_transactions: bool,
    /// The key lock's policy reads the version once it holds the lock, with no breaker or
    /// rate limit between: that check decides, and this one is not made before it (one read
    /// a message instead of two).
    checked_under_lock: bool,
}

/// On when the worker has a version store (`[stale]`).
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    if a.guards.is_some() {
        return None;
    }
    let versions = a.stores.version.clone()?;
    let copy = a.config.stale.as_ref().is_some_and(|s| s.copy_to_topic);
    Some(wrap(StalePolicy {
        tier_records_to_transactions: a.stores.transactions.is_some(),
        versions,
        copy_to: copy.then(|| a.routing.sink.clone()),
        shutdown: a.shutdown.clone(),
        give_up_after: a.give_up_after(),
        versions_in_transactions: a.versions_in_transactions,
        // The lock policy checks the same store's version under the lock. With a breaker or
        // a rate limit between the two, the check before them stays: a stale message is
        // dropped without waiting for them or spending a permit.
        checked_under_lock: a.stores.lock.is_some() && !a.config.policies_between_stale_and_lock(),
    }))
}

/// The topic stale copies of `topic`'s messages go to.
pub fn stale_topic(topic: &str) -> String {
    format!("{topic}.stale")
}

impl Policy for StalePolicy {
    async fn call(self: Arc<Self>, envelope: Envelope, next: Next) -> Outcome {
        let config = &self;
        let Some(facts) = facts_of(&envelope) else {
            return next.run(envelope).await;
        };
        let Some(version) = facts.version else {
            return next.run(envelope).await;
        };
        let key = facts.store_key.as_str();
        if !config.checked_under_lock {
            match config.check(&envelope, key, version).await {
                Checked::Newer => {}
                Checked::Ended(outcome) => return outcome,
                Checked::LeftToTransaction => {
                    // The transaction finds the id applied (a duplicate) or the version stale
                    // (never applied: overtaken).
                    let outcome = next.run(envelope.clone()).await;
                    return never_stale_in_tier(&envelope, version, outcome);
                }
            }
        }
        let outcome = next.run(envelope.clone()).await;
        config.settle(&envelope, key, version, outcome).await
    }
}

/// What a version check found.
pub(super) enum Checked {
    /// The version is newer than the applied one: the message goes on.
    Newer,
    /// The message ends here (stale, a duplicate, overtaken, or the store unanswered).
    Ended(Outcome),
    /// A retry-tier record older than the applied version, left to the transactional store.
    LeftToTransaction,
}

impl StalePolicy {
    /// The check before the handler.
    async fn check(&self, envelope: &Envelope, key: &str, version: i64) -> Checked {
        let shutdown = &self.shutdown;
        let current = match until_answered("version get", shutdown, self.give_up_after, || {
            self.versions.get(key)
        })
        .await
        {
            Ok(current) => current,
            Err(unanswered) => return Checked::Ended(unanswered.outcome(envelope)),
        };
        match judge(
            envelope,
            key,
            version,
            current,
            self.tier_records_to_transactions,
        ) {
            Checked::Ended(Outcome::Drop(DropReason::Stale)) => {
                Checked::Ended(self.stale_drop(envelope).await)
            }
            checked => checked,
        }
    }

    /// A stale message's end: copied to `<topic>.stale` first when copies are on (a
    /// requeue when the worker shuts down before the copy is acknowledged).
    async fn stale_drop(&self, envelope: &Envelope) -> Outcome {
        if let Some(sink) = &self.copy_to {
            if !copy(sink.as_ref(), envelope, &self.shutdown).await {
                return Outcome::Requeue;
            }
        }
        Outcome::Drop(DropReason::Stale)
    }

    /// After the layers below ran: a stale drop found inside is copied, and a handled
    /// version advances.
    async fn settle(
        &self,
        envelope: &Envelope,
        key: &str,
        version: i64,
        outcome: Outcome,
    ) -> Outcome {
        // A newer version applied while it ran (relaxed ordering lets the key's later
        // records run beside a retry-tier record): overtaken, not stale.
        let outcome = never_stale_in_tier(envelope, version, outcome);
        if outcome == Outcome::Drop(DropReason::Stale) {
            // Found stale inside, by the lock's check or the handler's transaction (a newer
            // version applied while this one waited): copied like a drop here.
            return self.stale_drop(envelope).await;
        }
        // Also after a duplicate drop: the first run may have ended before it advanced.
        // The advance is a compare-and-set, so recording what a transaction recorded too
        // is harmless, and needed when this store is not the transaction's; when it is,
        // the committed transaction advanced this very row, and a second write (a commit of
        // its own per message) is skipped.
        let recorded = self.versions_in_transactions
            && envelope
                .guard
                .notes
                .as_ref()
                .is_some_and(|n| n.recorded.load(std::sync::atomic::Ordering::SeqCst));
        if !recorded
            && matches!(
                outcome,
                Outcome::Ack { .. } | Outcome::Drop(DropReason::Duplicate)
            )
        {
            let advanced = until_available("version advance", &self.shutdown, || {
                self.versions.advance(key, version)
            })
            .await;
            if advanced.is_none() {
                tracing::warn!(
                    key,
                    version,
                    "shutdown before the version was recorded; the message was handled"
                );
            }
        }
        outcome
    }
}

/// What a message of `version` comes to against its key's applied version `current` (the
/// stale policy's check and the lock policy's, under the lock, both decide with it): newer
/// goes on; stale ends as `Drop(Stale)` (not copied yet), the applied version again as a
/// duplicate, an overtaken retry-tier record as a dead letter; a retry-tier record older
/// than the applied one is left to the transactional store when there is one
/// (`tier_records_to_transactions`).
pub(super) fn judge(
    envelope: &Envelope,
    key: &str,
    version: i64,
    current: Option<i64>,
    tier_records_to_transactions: bool,
) -> Checked {
    let in_tier = headers::retry_tier(&envelope.headers) > 0;
    if tier_records_to_transactions && in_tier && current.is_some_and(|c| c > version) {
        return Checked::LeftToTransaction;
    }
    let Some(current) = current.filter(|c| *c >= version) else {
        return Checked::Newer;
    };
    if let Some(outcome) = overtaken(envelope, version, current) {
        return Checked::Ended(outcome);
    }
    tracing::info!(
        key,
        version,
        current,
        offset = envelope.offset,
        "stale message dropped"
    );
    Checked::Ended(Outcome::Drop(DropReason::Stale))
}

/// What becomes of a record whose `version` is not newer than its key's `current` one, other
/// than a plain stale drop: the applied version delivered again is a duplicate; a retry-tier
/// record overtaken by a newer version is dead-lettered (class `overtaken`). `None`: a record
/// of the source topic older than the applied version, dropped as stale.
pub(crate) fn overtaken(envelope: &Envelope, version: i64, current: i64) -> Option<Outcome> {
    if version == current {
        tracing::info!(
            version,
            offset = envelope.offset,
            topic = %envelope.topic,
            "the applied version delivered again: dropped as a duplicate"
        );
        return Some(Outcome::Drop(DropReason::Duplicate));
    }
    if headers::retry_tier(&envelope.headers) == 0 {
        return None;
    }
    tracing::warn!(
        version,
        current,
        offset = envelope.offset,
        topic = %envelope.topic,
        "retry-tier message overtaken by a newer version: dead-lettered (class `overtaken`)"
    );
    Some(Outcome::Failed(Failure {
        class: ErrorClass::Overtaken,
        message: format!(
            "version {version} was overtaken by a newer version of its key while it was in a retry tier"
        ),
        permanent: true,
        retry_after: None,
        first_failed_ms: super::clock::now_ms(),
        attempt: envelope.attempt,
        unavailable: false,
    }))
}

/// A retry-tier record whose run ended as a stale drop (found stale inside, by the lock's
/// second check or the handler's transaction) is dead-lettered as overtaken instead.
pub(super) fn never_stale_in_tier(envelope: &Envelope, version: i64, outcome: Outcome) -> Outcome {
    if outcome == Outcome::Drop(DropReason::Stale) && headers::retry_tier(&envelope.headers) > 0 {
        return overtaken(envelope, version, version.saturating_add(1)).unwrap_or(outcome);
    }
    outcome
}

/// Publishes a copy of a stale message to `<original topic>.stale` until acknowledged;
/// `false` when the worker shuts down first.
pub(super) async fn copy(
    sink: &dyn Sink,
    envelope: &Envelope,
    shutdown: &CancellationToken,
) -> bool {
    let mut copy_headers = envelope.headers.clone();
    // The copy is a child of this delivery's span.
    if let Some(cx) = crate::observe::trace::current() {
        cx.write_to(&mut copy_headers);
    }
    let record = OutgoingRecord {
        topic: stale_topic(headers::original_topic(envelope)),
        partition: None,
        key: envelope.key.clone(),
        payload: envelope.payload.clone(),
        headers: copy_headers,
    };
    let mut delays = super::outage::outage_backoff();
    loop {
        match sink.send(record.clone()).await {
            Ok(()) => return true,
            Err(e) => {
                let delay = delays.next().unwrap_or(std::time::Duration::from_secs(5));
                tracing::warn!(error = %e, ?delay, "copying a stale message was not acknowledged; trying again");
                if !super::outage::pause(delay, shutdown).await {
                    return false;
                }
            }
        }
    }
}
