//! A record as the broker delivered it, owned, with where it came from and its attempt count.

use std::sync::Arc;

use bytes::Bytes;

/// Record headers in order; values are raw bytes (steadfast's own are UTF-8 text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Bytes)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a header.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push((name.into(), value.into()));
    }
    /// Replaces every header named `name` with one of `value`.
    pub fn set(&mut self, name: &str, value: impl Into<Bytes>) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_owned(), value.into()));
    }
    /// Removes every header named `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }
    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    /// The last value of `name` as UTF-8 text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }
    /// The last value of `name` parsed as a decimal number.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.get_str(name).and_then(|s| s.trim().parse().ok())
    }
    /// Every header in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }
    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

/// One record as delivered: topic, partition, offset, key, payload, headers, timestamp.
/// Cloning is cheap (the bytes are shared).
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The topic the record was read from (a retry tier's topic for a retried record).
    pub topic: Arc<str>,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record key.
    pub key: Option<Bytes>,
    /// The record value.
    pub payload: Option<Bytes>,
    /// The record headers.
    pub headers: Headers,
    /// The record timestamp in milliseconds since the epoch, if any.
    pub timestamp_ms: Option<i64>,
    /// The attempt this handler call is (1-based, in-place retries and retry tiers counted);
    /// set by the runtime from the attempts header.
    pub attempt: u32,
    /// What the protective policies learned on the way in (empty when none is configured).
    pub guard: super::Guard,
}

impl Envelope {
    /// A record of `topic` with a key and a payload, for tests and the [`crate::testing`] worker.
    pub fn new(topic: impl AsRef<str>, key: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Envelope {
            topic: Arc::from(topic.as_ref()),
            key: Some(key.into()),
            payload: Some(payload.into()),
            partition: 0,
            offset: 0,
            headers: Headers::new(),
            timestamp_ms: None,
            attempt: 1,
            guard: super::Guard::default(),
        }
    }
    /// The same record at `offset`.
    pub fn with_offset(mut self, offset: i64) -> Self {
        self.offset = offset;
        self
    }
    /// The same record on `partition`.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }
    /// The key as UTF-8 text, lossily, for logs.
    pub fn key_text(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
impl Envelope {
    /// A delivery of key `k` whose facts the store policies read: store key `k`, `version`,
    /// `id`.
    pub(crate) fn of_key_k(version: Option<i64>, id: Option<&str>) -> Envelope {
        let mut envelope = Envelope::new("t", "k", "p");
        envelope.guard.facts = Some(std::sync::Arc::new(super::Facts {
            store_key: "k".into(),
            version,
            id: id.map(str::to_owned),
        }));
        envelope
    }
}
