//! A tracing span per message: topic, partition, offset, key and attempt.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::Instrument;

use super::OutcomeFuture;
use crate::message::{Envelope, Outcome};

/// Wraps each message's processing in a `message` span.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
}

impl<S> Service<Envelope> for TraceService<S>
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
        let span = tracing::info_span!(
            "message",
            topic = %envelope.topic,
            partition = envelope.partition,
            offset = envelope.offset,
            key = %envelope.key_text(),
            attempt = envelope.attempt,
        );
        let mut inner = self.inner.clone();
        Box::pin(
            async move {
                let outcome = inner.call(envelope).await;
                if let Ok(outcome) = &outcome {
                    tracing::debug!(?outcome, "finished");
                }
                outcome
            }
            .instrument(span),
        )
    }
}
