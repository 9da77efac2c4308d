//! Held retry-tier records: a tier record carries the time it is due ([`headers::DUE_AT`]);
//! one delivered earlier is held by the dispatcher, its partition paused, and a timer hands it
//! to its lane once it is due.

use std::sync::Arc;
use std::time::Duration;

use crate::message::{headers, Envelope};
use crate::policy;
use crate::runtime::dispatch::TopicPartition;
use crate::runtime::shared::Shared;

/// Reads the delivery state of a record the consumer delivered: a retry-tier record
/// (`is_tier`) keeps it, and its due time is returned; a first delivery loses whatever
/// delivery state its producer wrote and starts at attempt 1.
pub(crate) fn read_delivery_state(envelope: &mut Envelope, is_tier: bool) -> Option<i64> {
    if is_tier {
        return headers::due_at_ms(&envelope.headers);
    }
    for name in headers::DELIVERY_STATE {
        envelope.headers.remove(name);
    }
    envelope.attempt = 1;
    None
}

/// Hands the record of `tp` held at its assignment `epoch` to its lane at `due_ms` (unless
/// the worker stops first).
pub(crate) fn release_when_due(shared: &Arc<Shared>, tp: TopicPartition, due_ms: i64, epoch: u64) {
    let wait = Duration::from_millis(u64::try_from(due_ms - policy::now_ms()).unwrap_or(0));
    tracing::debug!(topic = %tp.0, partition = tp.1, ?wait, "retry-tier message not due: partition paused");
    let task = shared.clone();
    shared.runtime.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(wait) => release(&task, &tp, epoch),
            _ = task.shutdown.cancelled() => {}
        }
    });
}

/// Releases the held retry-tier record of `tp` now that it is due: it joins its lane, the
/// partition resumes, and what may start starts.
fn release(shared: &Arc<Shared>, tp: &TopicPartition, epoch: u64) {
    shared.change_and_start(|d| d.release_held(tp, epoch));
}
