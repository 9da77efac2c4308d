//! Records as delivered by librdkafka, copied into owned envelopes.

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};

use crate::message::{Envelope, Headers};
use crate::policy::headers;

/// The topic names a worker reads, shared so that an envelope's topic costs no allocation.
#[derive(Debug, Default)]
pub(crate) struct TopicNames(Vec<Arc<str>>);

impl TopicNames {
    fn get(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.0.iter().find(|t| &***t == topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        self.0.push(t.clone());
        t
    }
}

/// An owned envelope of a delivered record; its attempt is the attempts header plus one.
pub(crate) fn envelope_of(message: &BorrowedMessage<'_>, topics: &mut TopicNames) -> Envelope {
    let mut h = Headers::new();
    if let Some(borrowed) = message.headers() {
        for header in borrowed.iter() {
            h.push(
                header.key,
                Bytes::copy_from_slice(header.value.unwrap_or_default()),
            );
        }
    }
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
