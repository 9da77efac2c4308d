//! Records as delivered by librdkafka, copied into owned envelopes.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};

use crate::message::headers;
use crate::message::{Envelope, Headers};

/// The headers of a delivered record, owned, each under `name_of` its name (a null value as
/// an empty one).
pub(crate) fn headers_of<'a>(
    message: &'a BorrowedMessage<'_>,
    name_of: impl Fn(&'a str) -> Cow<'a, str>,
) -> Headers {
    let mut h = Headers::new();
    if let Some(borrowed) = message.headers() {
        for header in borrowed.iter() {
            h.push(
                name_of(header.key),
                Bytes::copy_from_slice(header.value.unwrap_or_default()),
            );
        }
    }
    h
}

/// The topic names a worker reads, shared so that an envelope's topic costs no allocation,
/// and which topics' routing headers steadfast wrote.
#[derive(Debug, Default)]
pub(crate) struct TopicNames {
    names: Vec<Arc<str>>,
    /// `None`: every topic (the read-back of retry tiers and of a dead-letter topic, which
    /// only steadfast writes).
    trusted: Option<Vec<Arc<str>>>,
}

impl TopicNames {
    /// Names for a consume loop whose trusted topics are `tiers`, its group's retry tiers: on
    /// the records of every other topic (the source topic, which anyone may produce to) the
    /// routing headers ([`headers::ALL`]) are set aside (see [`envelope_of`]).
    pub(crate) fn trusting(tiers: impl IntoIterator<Item = Arc<str>>) -> Self {
        TopicNames {
            names: Vec::new(),
            trusted: Some(tiers.into_iter().collect()),
        }
    }

    fn get(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.names.iter().find(|t| &***t == topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        self.names.push(t.clone());
        t
    }

    fn is_trusted(&self, topic: &str) -> bool {
        self.trusted
            .as_ref()
            .is_none_or(|tiers| tiers.iter().any(|t| &**t == topic))
    }
}

/// An owned envelope of a delivered record; its attempt is the attempts header plus one.
///
/// A record of a source topic that arrives with routing headers of steadfast's own
/// (`steadfast-original-topic`, `steadfast-retry-tier`, `steadfast-attempts`, …) got them
/// from its producer: they are kept under [`headers::untrusted`] names (for debugging) and
/// read by nothing, so a producer can neither steer where the record's copies and replays go,
/// nor whose keys its dedup, lock and version facts touch, nor its attempts and tier.
pub(crate) fn envelope_of(message: &BorrowedMessage<'_>, topics: &mut TopicNames) -> Envelope {
    let h = if topics.is_trusted(message.topic()) {
        headers_of(message, Cow::Borrowed)
    } else {
        headers_of(message, |name| {
            if headers::ALL.contains(&name) {
                Cow::Owned(headers::untrusted(name))
            } else {
                Cow::Borrowed(name)
            }
        })
    };
    let attempt = headers::attempts_before(&h) + 1;
    Envelope {
        topic: topics.get(message.topic()),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(Bytes::copy_from_slice),
        payload: message.payload().map(Bytes::copy_from_slice),
        headers: h,
        timestamp_ms: message.timestamp().to_millis(),
        attempt,
        guard: crate::message::Guard::default(),
    }
}
