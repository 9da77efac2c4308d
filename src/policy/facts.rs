//! Reads the facts the protective policies work on (store key, version, id) once per
//! delivery, at the top of the protected part of the stack.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::headers;
use crate::message::{Envelope, Facts, HandlerNotes, Message, Outcome};
use crate::store::key_text;

/// Reads a delivery's facts: the message type's `key`, `version` and `id`.
pub type Describe = Arc<dyn Fn(&Envelope) -> Facts + Send + Sync>;

/// The [`Describe`] of message type `M` consumed by `group`: the store key is
/// `<group>/<original topic>/<record key>` (the record key, or the message's own key when
/// the record has none); version and id come from the decoded payload, and are absent when
/// it does not decode (the handler then dead-letters it).
pub fn describe<M: Message>(group: &str) -> Describe {
    let group: Arc<str> = Arc::from(group);
    Arc::new(move |envelope: &Envelope| {
        let decoded = envelope
            .payload
            .as_deref()
            .and_then(|payload| M::decode(payload).ok());
        let key = match (&envelope.key, &decoded) {
            (Some(key), _) => key_text(key),
            (None, Some(message)) => key_text(&message.key()),
            (None, None) => String::new(),
        };
        let topic = headers::original_topic(envelope);
        Facts {
            store_key: format!("{group}/{topic}/{key}"),
            version: decoded.as_ref().and_then(Message::version),
            id: decoded
                .as_ref()
                .and_then(Message::id)
                .map(|id| format!("{group}/{id}")),
        }
    })
}

/// Attaches the facts and a fresh set of handler notes to every delivery.
#[derive(Clone)]
pub struct FactsLayer {
    describe: Describe,
}

impl std::fmt::Debug for FactsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactsLayer").finish_non_exhaustive()
    }
}

impl FactsLayer {
    /// Reads facts with `describe`.
    pub fn new(describe: Describe) -> Self {
        FactsLayer { describe }
    }
}

impl<S> Layer<S> for FactsLayer {
    type Service = FactsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FactsService {
            inner,
            describe: self.describe.clone(),
        }
    }
}

/// See [`FactsLayer`].
#[derive(Clone)]
pub struct FactsService<S> {
    inner: S,
    describe: Describe,
}

impl<S: std::fmt::Debug> std::fmt::Debug for FactsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactsService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Envelope> for FactsService<S>
where
    S: Service<Envelope, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut envelope: Envelope) -> Self::Future {
        envelope.guard.facts = Some(Arc::new((self.describe)(&envelope)));
        envelope.guard.notes = Some(Arc::new(HandlerNotes::default()));
        self.inner.call(envelope)
    }
}

/// The facts of a delivery, when a [`FactsLayer`] attached them.
pub(crate) fn facts_of(envelope: &Envelope) -> Option<Arc<Facts>> {
    envelope.guard.facts.clone()
}
