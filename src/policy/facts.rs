//! Reads the facts the protective policies work on (store key, version, id) once per
//! delivery, at the top of the protected part of the stack.

use std::sync::Arc;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::stack::{Assembly, Describe};
use crate::message::headers;
use crate::message::{Envelope, Facts, HandlerNotes, Message, Outcome};
use crate::store::key_text;

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
pub(crate) struct FactsPolicy {
    describe: Describe,
}

impl std::fmt::Debug for FactsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactsPolicy").finish_non_exhaustive()
    }
}

/// On when a policy that works on facts is (a store or the transactional store).
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    a.needs_facts().then(|| {
        wrap(FactsPolicy {
            describe: a.describe.clone(),
        })
    })
}

impl Policy for FactsPolicy {
    fn call(
        self: Arc<Self>,
        mut envelope: Envelope,
        next: Next,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        envelope.guard.facts = Some(Arc::new((self.describe)(&envelope)));
        envelope.guard.notes = Some(Arc::new(HandlerNotes::default()));
        async move { next.run(envelope).await }
    }
}

/// The facts of a delivery, when the facts policy attached them.
pub(crate) fn facts_of(envelope: &Envelope) -> Option<Arc<Facts>> {
    envelope.guard.facts.clone()
}
