//! A tracing span per message: topic, partition, offset, key and attempt.

use std::sync::Arc;

use tracing::Instrument;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::stack::Assembly;
use crate::message::{Envelope, Outcome};

/// Runs each delivery in a `message` span.
#[derive(Debug)]
pub(crate) struct Trace;

/// Always on, outermost.
pub(crate) fn build(_: &Assembly<'_>) -> Option<Wrap> {
    Some(wrap(Trace))
}

impl Policy for Trace {
    fn call(
        self: Arc<Self>,
        envelope: Envelope,
        next: Next,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let span = tracing::info_span!(
            "message",
            topic = %envelope.topic,
            partition = envelope.partition,
            offset = envelope.offset,
            key = %envelope.key_text(),
            attempt = envelope.attempt,
        );
        async move {
            let outcome = next.run(envelope).await;
            tracing::debug!(?outcome, "finished");
            outcome
        }
        .instrument(span)
    }
}
