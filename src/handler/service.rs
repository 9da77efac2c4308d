//! The innermost service: decodes the payload, calls the handler, catches a panic, and
//! classifies the result as an [`Outcome`].

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::{Context, Handler, HandlerError};
pub(crate) use crate::message::panic_text;
use crate::message::{Envelope, ErrorClass, Failure, HandlerNotes, Message, Outcome};
use crate::policy::{now_ms, Dependencies, OutcomeFuture};
use crate::producer::Producer;
use crate::store::TransactionalStore;

/// Runs a [`Handler`] on envelopes.
#[derive(Debug)]
pub struct HandlerService<H> {
    handler: Arc<H>,
    group: Arc<str>,
    shutdown: Arc<CancellationToken>,
    transactions: Option<Arc<dyn TransactionalStore>>,
    producer: Option<Producer>,
    dependencies: Option<Arc<Dependencies>>,
    duration: metrics::Histogram,
}

impl<H> Clone for HandlerService<H> {
    fn clone(&self) -> Self {
        HandlerService {
            handler: self.handler.clone(),
            group: self.group.clone(),
            shutdown: self.shutdown.clone(),
            transactions: self.transactions.clone(),
            producer: self.producer.clone(),
            dependencies: self.dependencies.clone(),
            duration: self.duration.clone(),
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
            producer: None,
            dependencies: None,
            duration: metrics::Histogram::noop(),
        }
    }
    /// Records each handler call's duration in `duration` (seconds).
    pub(crate) fn timed(mut self, duration: metrics::Histogram) -> Self {
        self.duration = duration;
        self
    }
    /// Hands handlers `producer` ([`Context::producer`]).
    pub fn with_producer(mut self, producer: Producer) -> Self {
        self.producer = Some(producer);
        self
    }
    /// Hands handlers transactions of `stores` ([`Context::transaction`]).
    pub fn with_transactions(mut self, stores: Option<Arc<dyn TransactionalStore>>) -> Self {
        self.transactions = stores;
        self
    }
    /// Hands handlers the breakers of their named dependencies ([`Context::dependency`]).
    pub fn with_dependencies(mut self, dependencies: Arc<Dependencies>) -> Self {
        self.dependencies = Some(dependencies);
        self
    }
}

pub(crate) fn failure(
    class: ErrorClass,
    message: String,
    permanent: bool,
    attempt: u32,
) -> Outcome {
    Outcome::Failed(Failure::new(class, message, permanent, attempt, now_ms()))
}

impl<H: Handler> Service<Envelope> for HandlerService<H> {
    type Response = Outcome;
    type Error = Infallible;
    type Future = OutcomeFuture;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let handling = self.handle(envelope);
        Box::pin(async move { Ok(handling.await) })
    }
}

impl<H: Handler> HandlerService<H> {
    /// Handles one delivery: decode, call the handler (its panic caught), classify.
    pub(crate) fn handle(
        &self,
        envelope: Envelope,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let handler = self.handler.clone();
        let group = self.group.clone();
        let shutdown = self.shutdown.clone();
        let transactions = self.transactions.clone();
        let producer = self.producer.clone();
        let dependencies = self.dependencies.clone();
        let duration = self.duration.clone();
        async move {
            let attempt = envelope.attempt;
            let payload = envelope.payload.clone().unwrap_or_default();
            let message = match H::Message::decode(&payload) {
                Ok(m) => m,
                Err(e) => return failure(ErrorClass::Decode, e.to_string(), true, attempt),
            };
            let notes = envelope.guard.notes.clone();
            // What an earlier attempt of this delivery did with a transaction is not this
            // attempt's.
            reset_notes(notes.as_deref());
            let cx = Context::new(
                envelope,
                attempt,
                group,
                shutdown,
                transactions.clone(),
                producer.as_ref(),
            )
            .with_dependencies(dependencies);
            let timer = crate::observe::Timer::start(duration);
            let result = AssertUnwindSafe(handler.handle_message(message, &cx))
                .catch_unwind()
                .await;
            drop(timer);
            outcome_of(result, notes.as_deref(), transactions.as_deref(), attempt).await
        }
    }
}

/// What a handler call's result becomes: a success (or the drop its transaction found), or a
/// failure classified by its error; a failure of a handler whose transaction's database does
/// not answer is an outage, and a panic is permanent.
pub(crate) async fn outcome_of(
    result: std::thread::Result<Result<(), HandlerError>>,
    notes: Option<&HandlerNotes>,
    transactions: Option<&dyn TransactionalStore>,
    attempt: u32,
) -> Outcome {
    match result {
        Ok(Ok(())) => match notes {
            Some(n) if n.handed.load(Ordering::SeqCst) && !n.recorded.load(Ordering::SeqCst) => {
                failure(
                    ErrorClass::Transient,
                    "the handler returned Ok without committing the transaction it was handed: nothing of it was applied".to_owned(),
                    false,
                    attempt,
                )
            }
            Some(n) => match *n.skipped.lock() {
                Some(reason) => Outcome::Drop(reason),
                None => Outcome::Ack { attempt },
            },
            None => Outcome::Ack { attempt },
        },
        Ok(Err(mut e)) => {
            if !matches!(e, HandlerError::Unavailable(_) | HandlerError::Permanent(_))
                && notes.is_some_and(|n| {
                    n.used_transaction.load(Ordering::SeqCst)
                })
            {
                if let Some(stores) = transactions {
                    if let Err(down) = stores.answers().await {
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
            let text = panic_text(panic.as_ref());
            failure(ErrorClass::Panic, format!("handler panicked: {text}"), true, attempt)
        }
    }
}

/// Clears what an earlier attempt of a delivery did with a transaction.
pub(crate) fn reset_notes(notes: Option<&HandlerNotes>) {
    if let Some(n) = notes {
        n.used_transaction.store(false, Ordering::SeqCst);
        n.handed.store(false, Ordering::SeqCst);
        *n.skipped.lock() = None;
    }
}
