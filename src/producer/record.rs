//! A record to send: a typed message encoded with its codec, to its topic, under its key,
//! with headers of the caller's choice.

use bytes::Bytes;

use super::ProduceError;
use crate::message::{Headers, Message};

/// One record for [`super::Producer::send_record`]: made from a message with [`Record::of`],
/// then given headers or another topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub(super) topic: String,
    pub(super) key: Vec<u8>,
    pub(super) payload: Vec<u8>,
    pub(super) headers: Headers,
}

impl Record {
    /// `message` encoded with its codec, for its type's topic and under its key.
    pub fn of<M: Message>(message: &M) -> Result<Record, ProduceError> {
        let payload = message.encode().map_err(|e| ProduceError::Encode {
            topic: M::TOPIC.to_owned(),
            reason: e.0,
        })?;
        Ok(Record {
            topic: M::TOPIC.to_owned(),
            key: message.key(),
            payload,
            headers: Headers::new(),
        })
    }

    /// Sends it to `topic` instead of the message type's.
    pub fn topic(mut self, topic: impl Into<String>) -> Record {
        self.topic = topic.into();
        self
    }

    /// Adds a header (one of several of that name, if set more than once).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Record {
        self.headers.push(name, value);
        self
    }

    /// The topic it goes to.
    pub fn topic_name(&self) -> &str {
        &self.topic
    }

    /// Its headers so far.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
}
