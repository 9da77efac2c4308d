//! A time limit per handler attempt; an attempt that runs over is a transient failure.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use super::{now_ms, Failure, OutcomeFuture};
use crate::message::{Envelope, Outcome};

/// Limits each attempt to a duration.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// Attempts longer than `limit` fail with class `timeout`.
    pub fn new(limit: Duration) -> Self {
        TimeoutLayer { limit }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            limit: self.limit,
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<Envelope> for TimeoutService<S>
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
        let mut inner = self.inner.clone();
        let limit = self.limit;
        let attempt = envelope.attempt;
        Box::pin(async move {
            match tokio::time::timeout(limit, inner.call(envelope)).await {
                Ok(outcome) => outcome,
                Err(_) => Ok(Outcome::Failed(Failure {
                    class: "timeout",
                    message: format!("attempt ran over {limit:?}"),
                    permanent: false,
                    retry_after: None,
                    first_failed_ms: now_ms(),
                    unavailable: false,
                    attempt,
                })),
            }
        })
    }
}
