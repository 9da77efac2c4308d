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
use crate::store::postgres::PostgresStores;
use crate::store::StoreError;

/// Whether the database of the handler's transaction answers: a handler failure while it
/// does not is an outage (retried without spending an attempt), whatever the handler made
/// of the error.
async fn database_answers(stores: &PostgresStores) -> Result<(), StoreError> {
    let probe = async {
        let client = stores
            .pool()
            .get()
            .await
            .map_err(|e| StoreError::Unavailable {
                backend: "postgres",
                message: e.to_string(),
            })?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| crate::store::postgres::classify(&e))?;
        Ok(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), probe).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable {
            backend: "postgres",
            message: "no answer within 2 s".to_owned(),
        }),
    }
}

/// Runs a [`Handler`] on envelopes.
#[derive(Debug)]
pub struct HandlerService<H> {
    handler: Arc<H>,
    group: Arc<str>,
    shutdown: Arc<CancellationToken>,
    transactions: Option<PostgresStores>,
}

impl<H> Clone for HandlerService<H> {
    fn clone(&self) -> Self {
        HandlerService {
            handler: self.handler.clone(),
            group: self.group.clone(),
            shutdown: self.shutdown.clone(),
            transactions: self.transactions.clone(),
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
            transactions: None,
        }
    }
    /// Hands handlers transactions of `stores` ([`Context::transaction`]).
    pub fn with_transactions(mut self, stores: Option<PostgresStores>) -> Self {
        self.transactions = stores;
        self
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
        let transactions = self.transactions.clone();
        Box::pin(async move {
            let attempt = envelope.attempt;
            let payload = envelope.payload.clone().unwrap_or_default();
            let message = match H::Message::decode(&payload) {
                Ok(m) => m,
                Err(e) => return Ok(failure("decode", e.to_string(), true, attempt)),
            };
            let notes = envelope.guard.notes.clone();
            let cx = Context::new(envelope, attempt, group, shutdown, transactions.clone());
            let result = AssertUnwindSafe(handler.handle_message(message, &cx))
                .catch_unwind()
                .await;
            Ok(match result {
                Ok(Ok(())) => match notes.as_ref().and_then(|n| *n.skipped.lock()) {
                    Some(reason) => Outcome::Drop(reason),
                    None => Outcome::Ack { attempt },
                },
                Ok(Err(mut e)) => {
                    if !matches!(e, HandlerError::Unavailable(_) | HandlerError::Permanent(_))
                        && notes.as_ref().is_some_and(|n| {
                            n.used_transaction.load(std::sync::atomic::Ordering::SeqCst)
                        })
                    {
                        if let Some(stores) = &transactions {
                            if let Err(down) = database_answers(stores).await {
                                e = HandlerError::Unavailable(format!(
                                    "{}; the database does not answer: {down}",
                                    e.message()
                                ));
                            }
                        }
                    }
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
