//! A time limit per handler attempt; an attempt that runs over is a transient failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::clock::now_ms;
use super::stack::Assembly;
use crate::message::{Envelope, ErrorClass, Failure, Outcome};
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
        let mut failure = Failure {
            class: ErrorClass::Timeout,
            message: format!("attempt ran over {limit:?}"),
            permanent: false,
            retry_after: None,
            first_failed_ms: now_ms(),
            attempt,
            unavailable: false,
        };
        let used = notes
            .as_ref()
            .is_some_and(|n| n.used_transaction.load(Ordering::SeqCst));
        if let (true, Some(store)) = (used, &self.probe) {
            if let Err(down) = store.answers().await {
                failure.class = ErrorClass::Unavailable;
                failure.message =
                    format!("{}; the database does not answer: {down}", failure.message);
                failure.unavailable = true;
            }
        }
        Outcome::Failed(failure)
    }
}
