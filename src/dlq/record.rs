//! A dead-letter record with its provenance headers decoded into typed fields.

use std::fmt;

use bytes::Bytes;

use crate::message::headers;
use crate::message::Headers;

pub use crate::message::ErrorClass;

/// Where a dead-lettered record was first delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// `steadfast-original-topic`.
    pub topic: String,
    /// `steadfast-original-partition`.
    pub partition: Option<i32>,
    /// `steadfast-original-offset`.
    pub offset: Option<i64>,
    /// `steadfast-original-timestamp`, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// One record of a dead-letter topic, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqRecord {
    /// The dead-letter topic.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The dead-letter record's own timestamp (milliseconds since the epoch).
    pub timestamp_ms: Option<i64>,
    /// The record key (the original key).
    pub key: Option<Bytes>,
    /// The record value (the original payload).
    pub value: Option<Bytes>,
    /// Every header, in order, as stored.
    pub headers: Headers,
    /// Positions in `headers` (in [`Headers::iter`] order) of the headers that have no value
    /// at all (null), which `headers` holds as empty values: a replayed copy keeps them null.
    pub null_headers: Vec<usize>,
    /// The first delivery; `None` when the original-topic header is missing.
    pub original: Option<Original>,
    /// `steadfast-group`: the consumer group that gave up.
    pub group: Option<String>,
    /// `steadfast-error-class`.
    pub error_class: Option<ErrorClass>,
    /// `steadfast-error-message`.
    pub error_message: Option<String>,
    /// `steadfast-attempts`: handler attempts made, all tiers counted.
    pub attempts: Option<u32>,
    /// `steadfast-first-failure-at`, in milliseconds since the epoch.
    pub first_failure_at_ms: Option<i64>,
    /// `steadfast-last-failure-at`, in milliseconds since the epoch.
    pub last_failure_at_ms: Option<i64>,
}

/// Where a record is: `<topic>/<partition>/<offset>`, the form of `steadfast-replay-of`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordRef {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

impl RecordRef {
    /// Parses `<topic>/<partition>/<offset>` (topic names cannot hold `/`).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().rsplitn(3, '/');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let topic = parts.next().filter(|t| !t.is_empty())?.to_owned();
        Some(RecordRef {
            topic,
            partition,
            offset,
        })
    }
}

/// Bytes shown to a person: the text when they are UTF-8, else lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// Valid UTF-8, as text.
    Text(String),
    /// Not UTF-8: lowercase hex, two digits a byte.
    Hex(String),
}

impl Shown {
    /// `bytes` as text when UTF-8, else as hex.
    pub fn of(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => Shown::Text(s.to_owned()),
            Err(_) => Shown::Hex(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        }
    }
    /// The shown text (`hex:` before hex).
    pub fn display(&self) -> String {
        match self {
            Shown::Text(s) => s.clone(),
            Shown::Hex(h) => format!("hex:{h}"),
        }
    }
    /// `"utf8"` or `"hex"`.
    pub fn encoding(&self) -> &'static str {
        match self {
            Shown::Text(_) => "utf8",
            Shown::Hex(_) => "hex",
        }
    }
    /// The text or the hex digits alone.
    pub fn as_str(&self) -> &str {
        match self {
            Shown::Text(s) | Shown::Hex(s) => s,
        }
    }
}

impl DlqRecord {
    /// Decodes the provenance headers of a record read at `topic`/`partition`/`offset`.
    /// Headers that are missing or do not parse leave their field `None`.
    pub fn decode(
        topic: impl Into<String>,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: Headers,
    ) -> Self {
        let time = |name| headers.get_str(name).and_then(headers::parse_time_ms);
        let original = headers
            .get_str(headers::ORIGINAL_TOPIC)
            .filter(|t| !t.is_empty())
            .map(|t| Original {
                topic: t.to_owned(),
                partition: headers
                    .get_i64(headers::ORIGINAL_PARTITION)
                    .and_then(|p| i32::try_from(p).ok()),
                offset: headers.get_i64(headers::ORIGINAL_OFFSET),
                timestamp_ms: time(headers::ORIGINAL_TIMESTAMP),
            });
        DlqRecord {
            topic: topic.into(),
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            original,
            group: headers.get_str(headers::GROUP).map(str::to_owned),
            error_class: headers
                .get_str(headers::ERROR_CLASS)
                .map(|c| c.parse().unwrap_or(ErrorClass::Other(c.to_owned()))),
            error_message: headers.get_str(headers::ERROR_MESSAGE).map(str::to_owned),
            attempts: headers
                .get_i64(headers::ATTEMPTS)
                .and_then(|a| u32::try_from(a).ok()),
            first_failure_at_ms: time(headers::FIRST_FAILURE),
            last_failure_at_ms: time(headers::LAST_FAILURE),
            headers,
            null_headers: Vec::new(),
        }
    }

    /// The record with the headers at `positions` (in [`Headers::iter`] order) marked null.
    pub fn with_null_headers(mut self, positions: Vec<usize>) -> Self {
        self.null_headers = positions;
        self
    }

    /// Every header in order, `None` for a null one.
    pub fn header_values(&self) -> impl Iterator<Item = (&str, Option<&Bytes>)> {
        self.headers
            .iter()
            .enumerate()
            .map(|(i, (n, v))| (n, (!self.null_headers.contains(&i)).then_some(v)))
    }

    /// Where this record is in the dead-letter topic.
    pub fn position(&self) -> RecordRef {
        RecordRef {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The failure time the time filters compare: the last failure header, or the
    /// dead-letter record's own timestamp when that header is missing.
    pub fn failed_at_ms(&self) -> Option<i64> {
        self.last_failure_at_ms.or(self.timestamp_ms)
    }

    /// Headers other than steadfast's provenance, delivery-state and replay headers: the
    /// user's own, `None` for a null one.
    pub fn other_headers(&self) -> impl Iterator<Item = (&str, Option<&Bytes>)> {
        self.header_values()
            .filter(|(n, _)| !headers::ALL.contains(n) && !headers::REPLAY.contains(n))
    }

    /// The key as shown to a person (text, or hex when not UTF-8).
    pub fn key_shown(&self) -> Option<Shown> {
        self.key.as_deref().map(Shown::of)
    }

    /// The value as shown to a person (text, or hex when not UTF-8).
    pub fn value_shown(&self) -> Option<Shown> {
        self.value.as_deref().map(Shown::of)
    }

    /// The record as a JSON object: position, timestamps (RFC 3339), key and value (text,
    /// or hex with `"key_encoding": "hex"`), the decoded provenance and the other headers.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let time = |ms: Option<i64>| ms.map(headers::format_time_ms);
        let shown = |s: Option<Shown>| match s {
            Some(s) => (Value::from(s.as_str()), Value::from(s.encoding())),
            None => (Value::Null, Value::Null),
        };
        let (key, key_encoding) = shown(self.key_shown());
        let (value, value_encoding) = shown(self.value_shown());
        let original = self.original.as_ref().map(|o| {
            json!({
                "topic": o.topic,
                "partition": o.partition,
                "offset": o.offset,
                "timestamp": time(o.timestamp_ms),
            })
        });
        let mut other = Map::new();
        for (name, v) in self.other_headers() {
            let v = v.map_or(Value::Null, |v| Value::from(Shown::of(v).display()));
            other.insert(name.to_owned(), v);
        }
        json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": time(self.timestamp_ms),
            "key": key,
            "key_encoding": key_encoding,
            "value": value,
            "value_encoding": value_encoding,
            "original": original,
            "group": self.group,
            "error_class": self.error_class.as_ref().map(ErrorClass::as_str),
            "error_message": self.error_message,
            "attempts": self.attempts,
            "first_failure_at": time(self.first_failure_at_ms),
            "last_failure_at": time(self.last_failure_at_ms),
            "headers": Value::Object(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_lettered() -> Headers {
        [
            ("trace", &b"abc"[..]),
            (headers::ORIGINAL_TOPIC, b"orders"),
            (headers::ORIGINAL_PARTITION, b"2"),
            (headers::ORIGINAL_OFFSET, b"41"),
            (headers::ORIGINAL_TIMESTAMP, b"2025-12-02T00:00:00.123Z"),
            (headers::GROUP, b"billing"),
            (headers::ERROR_CLASS, b"permanent"),
            (headers::ERROR_MESSAGE, b"no such account"),
            (headers::ATTEMPTS, b"3"),
            (headers::FIRST_FAILURE, b"2025-12-02T00:00:01Z"),
            (headers::LAST_FAILURE, b"2025-12-02T00:00:05Z"),
        ]
        .into_iter()
        .map(|(n, v)| (n, Bytes::copy_from_slice(v)))
        .collect()
    }

    #[test]
    fn every_provenance_header_is_decoded_into_its_field() {
        let r = DlqRecord::decode(
            "orders.dlq",
            0,
            7,
            Some(1),
            Some(Bytes::from_static(b"k1")),
            Some(Bytes::from_static(&[0xff, 0x00])),
            dead_lettered(),
        );
        assert_eq!(
            r.original,
            Some(Original {
                topic: "orders".into(),
                partition: Some(2),
                offset: Some(41),
                timestamp_ms: Some(1_764_633_600_123),
            })
        );
        assert_eq!(r.group.as_deref(), Some("billing"));
        assert_eq!(r.error_class, Some(ErrorClass::Permanent));
        assert_eq!(r.error_message.as_deref(), Some("no such account"));
        assert_eq!(r.attempts, Some(3));
        assert_eq!(r.first_failure_at_ms, Some(1_764_633_601_000));
        assert_eq!(r.last_failure_at_ms, Some(1_764_633_605_000));
        assert_eq!(r.failed_at_ms(), Some(1_764_633_605_000));
        let other: Vec<&str> = r.other_headers().map(|(n, _)| n).collect();
        assert_eq!(other, ["trace"]);
        let nulled = r.clone().with_null_headers(vec![0]);
        assert_eq!(
            nulled.other_headers().collect::<Vec<_>>(),
            [("trace", None)]
        );
        assert_eq!(
            nulled.to_json()["headers"]["trace"],
            serde_json::Value::Null
        );
        assert_eq!(r.key_shown(), Some(Shown::Text("k1".into())));
        assert_eq!(r.value_shown(), Some(Shown::Hex("ff00".into())));
        let json = r.to_json();
        assert_eq!(json["original"]["offset"], 41);
        assert_eq!(json["value_encoding"], "hex");
        assert_eq!(json["headers"]["trace"], "abc");
    }

    #[test]
    fn missing_or_garbled_headers_leave_fields_empty() {
        let h: Headers = [
            (headers::ERROR_CLASS, Bytes::from_static(b"cosmic-ray")),
            (headers::ATTEMPTS, Bytes::from_static(b"many")),
            (headers::LAST_FAILURE, Bytes::from_static(b"yesterday")),
        ]
        .into_iter()
        .collect();
        let r = DlqRecord::decode("t.dlq", 0, 0, Some(99), None, None, h);
        assert_eq!(r.original, None);
        assert_eq!(r.error_class, Some(ErrorClass::Other("cosmic-ray".into())));
        assert_eq!(r.attempts, None);
        assert_eq!(r.last_failure_at_ms, None);
        assert_eq!(
            r.failed_at_ms(),
            Some(99),
            "falls back to the record timestamp"
        );
    }

    #[test]
    fn record_refs_round_trip_and_reject_garbage() {
        let r = RecordRef {
            topic: "orders.dlq".into(),
            partition: 3,
            offset: 17,
        };
        assert_eq!(r.to_string(), "orders.dlq/3/17");
        assert_eq!(RecordRef::parse("orders.dlq/3/17"), Some(r));
        assert_eq!(RecordRef::parse("orders.dlq/x/17"), None);
        assert_eq!(RecordRef::parse("/3/17"), None);
        assert_eq!(RecordRef::parse("17"), None);
    }
}
