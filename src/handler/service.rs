//! The innermost service: decodes the payload, calls the handler, catches a panic, and
//! classifies the result as an [`Outcome`].

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::{Context, Handler, HandlerError};
use crate::message::{Envelope, Failure, Message, Outcome};
use crate::policy::{now_ms, OutcomeFuture};

/// Runs a [`Handler`] on envelopes.
#[derive(Debug)]
pub struct HandlerService<H> {
    handler: Arc<H>,
    group: Arc<str>,
    shutdown: Arc<CancellationToken>,
}

impl<H> Clone for HandlerService<H> {
    fn clone(&self) -> Self {
        HandlerService {
            handler: self.handler.clone(),
            group: self.group.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl<H: Handler> HandlerService<H> {
    /// Runs `handler` for `group`; its context's shutdown token is `shutdown`.
    pub fn new(handler: Arc<H>, group: &str, shutdown: CancellationToken) -> Self {
        HandlerService {
            handler,
            group: Arc::from(group),
            shutdown: Arc::new(shutdown),
        }
    }
}

fn failure(class: &'static str, message: String, permanent: bool, attempt: u32) -> Outcome {
    Outcome::Failed(Failure {
        class,
        message,
        permanent,
        retry_after: None,
        first_failed_ms: now_ms(),
        attempt,
        unavailable: false,
    })
}

impl<H: Handler> Service<Envelope> for HandlerService<H> {
    type Response = Outcome;
    type Error = Infallible;
    type Future = OutcomeFuture;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let handler = self.handler.clone();
        let group = self.group.clone();
        let shutdown = self.shutdown.clone();
        Box::pin(async move {
            let attempt = envelope.attempt;
            let payload = envelope.payload.clone().unwrap_or_default();
            let message = match H::Message::decode(&payload) {
                Ok(m) => m,
                Err(e) => return Ok(failure("decode", e.to_string(), true, attempt)),
            };
            let cx = Context::new(envelope, attempt, group, shutdown);
            let result = AssertUnwindSafe(handler.handle_message(message, &cx))
                .catch_unwind()
                .await;
            Ok(match result {
                Ok(Ok(())) => Outcome::Ack { attempt },
                Ok(Err(e)) => {
                    let retry_after = match &e {
                        HandlerError::RetryAfter(d, _) => Some(*d),
                        _ => None,
                    };
                    Outcome::Failed(Failure {
                        class: e.class(),
                        message: e.message().to_owned(),
                        permanent: matches!(e, HandlerError::Permanent(_)),
                        retry_after,
                        first_failed_ms: now_ms(),
                        attempt,
                        unavailable: matches!(e, HandlerError::Unavailable(_)),
                    })
                }
                Err(panic) => {
                    let text = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "handler panicked".to_owned());
                    failure("panic", format!("handler panicked: {text}"), true, attempt)
                }
            })
        })
    }
}
