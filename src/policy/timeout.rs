//! A time limit per handler attempt; an attempt that runs over is a transient failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::clock::now_ms;
use super::stack::Assembly;
use crate::message::{Envelope, ErrorClass, Failure, HandlerNotes, Outcome};
use crate::store::TransactionalStore;

/// Limits each attempt to a duration.
#[derive(Debug)]
pub(crate) struct Timeout {
    limit: Duration,
    /// When an attempt that asked for a transaction runs over and the database does not
    /// answer, the failure is an outage (`unavailable`: no attempt spent), not a timeout.
    probe: Option<Arc<dyn TransactionalStore>>,
}

/// On for every handler of single records: `handler_timeout_ms` per attempt. A batch
/// handler's time limit is its batch call's.
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    if a.batched {
        return None;
    }
    Some(wrap(Timeout {
        limit: Duration::from_millis(a.config.handler_timeout_ms),
        probe: a.stores.transactions.clone(),
    }))
}

impl Policy for Timeout {
    async fn call(self: Arc<Self>, envelope: Envelope, next: Next) -> Outcome {
        let attempt = envelope.attempt;
        let notes = envelope.guard.notes.clone();
        let limit = self.limit;
        if let Ok(outcome) = tokio::time::timeout(limit, next.run(envelope)).await {
            return outcome;
        }
        Outcome::Failed(
            timed_out(
                format!("attempt ran over {limit:?}"),
                notes.as_deref(),
                self.probe.as_deref(),
                attempt,
            )
            .await,
        )
    }
}

/// The failure of an attempt that ran over its time limit (`what` says how): a time-out, or
/// an outage (`unavailable`: no attempt spent) when the attempt asked for a transaction and
/// the database does not answer. The batch handlers' runner uses it too.
pub(crate) async fn timed_out(
    what: String,
    notes: Option<&HandlerNotes>,
    probe: Option<&dyn TransactionalStore>,
    attempt: u32,
) -> Failure {
    let mut failure = Failure {
        class: ErrorClass::Timeout,
        message: what,
        permanent: false,
        retry_after: None,
        first_failed_ms: now_ms(),
        attempt,
        unavailable: false,
    };
    let used = notes.is_some_and(|n| n.used_transaction.load(Ordering::SeqCst));
    if let (true, Some(store)) = (used, probe) {
        if let Err(down) = store.answers().await {
            failure.class = ErrorClass::Unavailable;
            failure.message = format!("{}; the database does not answer: {down}", failure.message);
            failure.unavailable = true;
        }
    }
    failure
}
