//! A time limit per handler attempt; an attempt that runs over is a transient failure.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use std::sync::atomic::Ordering;

use crate::store::postgres::PostgresStores;

use super::{now_ms, Failure, OutcomeFuture};
use crate::message::{Envelope, Outcome};

/// Limits each attempt to a duration.
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    limit: Duration,
    probe: Option<PostgresStores>,
}

impl TimeoutLayer {
    /// Attempts longer than `limit` fail with class `timeout`.
    pub fn new(limit: Duration) -> Self {
        TimeoutLayer { limit, probe: None }
    }
    /// When an attempt that asked for a transaction of `stores` runs over and the database
    /// does not answer, the failure is an outage (`unavailable`: no attempt spent), not a
    /// timeout.
    pub fn probing(mut self, stores: Option<PostgresStores>) -> Self {
        self.probe = stores;
        self
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            limit: self.limit,
            probe: self.probe.clone(),
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    limit: Duration,
    probe: Option<PostgresStores>,
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
        let probe = self.probe.clone();
        let notes = envelope.guard.notes.clone();
        Box::pin(async move {
            match tokio::time::timeout(limit, inner.call(envelope)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    let mut failure = Failure {
                        class: "timeout",
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
                    if let (true, Some(stores)) = (used, &probe) {
                        if let Err(down) = stores.answers().await {
                            failure.class = "unavailable";
                            failure.message = format!(
                                "{}; the database does not answer: {down}",
                                failure.message
                            );
                            failure.unavailable = true;
                        }
                    }
                    Ok(Outcome::Failed(failure))
                }
            }
        })
    }
}
