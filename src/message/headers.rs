//! The headers steadfast writes on retry-tier and dead-letter records, and reads back.
//! Values are UTF-8 text: numbers in decimal, times in RFC 3339, so kcat shows them.
//!
//! A record replayed from the dead-letter topic ([`crate::dlq`]) keeps the provenance headers
//! but loses the per-delivery state ([`ATTEMPTS`], [`RETRY_TIER`], [`DUE_AT`]), so it starts
//! fresh through the normal stack, and gains the replay headers ([`REPLAYED_BY`],
//! [`REPLAYED_AT`], [`REPLAY_OF`], [`REPLAY_ID`]; see [`REPLAY`]).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Envelope, Headers};

/// Topic of the first delivery.
pub const ORIGINAL_TOPIC: &str = "steadfast-original-topic";
/// Partition of the first delivery.
pub const ORIGINAL_PARTITION: &str = "steadfast-original-partition";
/// Offset of the first delivery.
pub const ORIGINAL_OFFSET: &str = "steadfast-original-offset";
/// Record timestamp of the first delivery (RFC 3339).
pub const ORIGINAL_TIMESTAMP: &str = "steadfast-original-timestamp";
/// The consumer group that gave up on the record.
pub const GROUP: &str = "steadfast-group";
/// `transient`, `permanent`, `decode`, `panic` or `timeout`.
pub const ERROR_CLASS: &str = "steadfast-error-class";
/// The last error's message.
pub const ERROR_MESSAGE: &str = "steadfast-error-message";
/// Handler attempts made so far, all tiers counted.
pub const ATTEMPTS: &str = "steadfast-attempts";
/// When the first attempt failed (RFC 3339).
pub const FIRST_FAILURE: &str = "steadfast-first-failure-at";
/// When the last attempt failed (RFC 3339).
pub const LAST_FAILURE: &str = "steadfast-last-failure-at";
/// The retry tier a record sits in (1-based); absent on the source topic.
pub const RETRY_TIER: &str = "steadfast-retry-tier";
/// When a retry-tier record is due (RFC 3339).
pub const DUE_AT: &str = "steadfast-due-at";

/// The delivery a retry-tier or dead-letter copy was made from: `<topic>/<partition>/<offset>`
/// (the source record, or the retry-tier record that failed again). A worker taking over a
/// partition finds the copies of its unfinished records by it, so no record is routed twice.
pub const ROUTED_FROM: &str = "steadfast-routed-from";

/// When a delayed record is due for delivery to its topic (RFC 3339), written by
/// [`crate::Producer::send_at`] and kept on the record the relay delivers
/// ([`crate::delay`]).
pub const DELIVER_AT: &str = "steadfast-deliver-at";
/// When a delayed record's hop out of its bucket topic is due (RFC 3339).
pub const DELAY_HOP_AT: &str = "steadfast-delay-hop-at";

/// The record a handler was handling when it sent this one through its context's producer
/// ([`crate::Context::producer`]): `<topic>/<partition>/<offset>`.
pub const CAUSED_BY: &str = "steadfast-caused-by";

/// Who replayed a record from the dead-letter topic (`user@host`, or as given).
pub const REPLAYED_BY: &str = "steadfast-replayed-by";
/// When a record was replayed from the dead-letter topic (RFC 3339).
pub const REPLAYED_AT: &str = "steadfast-replayed-at";
/// The dead-letter record a replayed record is a copy of: `<dlq topic>/<partition>/<offset>`.
pub const REPLAY_OF: &str = "steadfast-replay-of";
/// The id of the replay that produced a record; a resumed replay recognises its own copies by it.
pub const REPLAY_ID: &str = "steadfast-replay-id";

/// The per-delivery state headers a replay removes, so the record starts fresh.
pub const DELIVERY_STATE: [&str; 3] = [ATTEMPTS, RETRY_TIER, DUE_AT];

/// The headers a replay adds, in the order they are written.
pub const REPLAY: [&str; 4] = [REPLAYED_BY, REPLAYED_AT, REPLAY_OF, REPLAY_ID];

/// Every provenance and delivery-state header name above, in the order they are written
/// (the replay headers are in [`REPLAY`]).
pub const ALL: [&str; 13] = [
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    GROUP,
    ERROR_CLASS,
    ERROR_MESSAGE,
    ATTEMPTS,
    FIRST_FAILURE,
    LAST_FAILURE,
    RETRY_TIER,
    DUE_AT,
    ROUTED_FROM,
];

/// The headers a copy of a first delivery writes anew, whatever the record arrived with.
pub const PROVENANCE: [&str; 13] = ALL;

/// What a worker renames a header of [`ALL`] to when a record of its source topic arrives
/// with it: `steadfast-untrusted-` and the rest of the name (`steadfast-original-topic`
/// becomes `steadfast-untrusted-original-topic`). Only steadfast writes those headers, on
/// retry-tier and dead-letter copies; on a source record they came from its producer (or
/// from a replay of a dead-letter record), so nothing reads them there, and the record's
/// provenance is its own delivery.
pub fn untrusted(name: &str) -> String {
    let rest = name.strip_prefix("steadfast-").unwrap_or(name);
    format!("{UNTRUSTED_PREFIX}{rest}")
}

/// The prefix of [`untrusted`] names.
pub const UNTRUSTED_PREFIX: &str = "steadfast-untrusted-";

/// Milliseconds since the epoch as RFC 3339 text (UTC, millisecond precision).
pub fn format_time_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let t = t
                .replace_nanosecond((ms.rem_euclid(1000) as u32) * 1_000_000)
                .unwrap_or(t);
            t.format(&Rfc3339).unwrap_or_else(|_| ms.to_string())
        }
        Err(_) => ms.to_string(),
    }
}

/// RFC 3339 text as milliseconds since the epoch.
pub fn parse_time_ms(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The retry tier a record sits in; 0 on the source topic.
pub(crate) fn retry_tier(headers: &Headers) -> u32 {
    headers
        .get_i64(RETRY_TIER)
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(0)
}

/// Attempts made before this delivery.
pub(crate) fn attempts_before(headers: &Headers) -> u32 {
    headers
        .get_i64(ATTEMPTS)
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(0)
}

/// When a retry-tier record is due, in milliseconds since the epoch.
pub(crate) fn due_at_ms(headers: &Headers) -> Option<i64> {
    headers.get_str(DUE_AT).and_then(parse_time_ms)
}

/// `<topic>/<partition>/<offset>`, the value of [`ROUTED_FROM`].
pub fn routed_from(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// Parses a [`ROUTED_FROM`] value into topic, partition and offset.
pub fn parse_routed_from(text: &str) -> Option<(&str, i32, i64)> {
    let (rest, offset) = text.rsplit_once('/')?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some((topic, partition.parse().ok()?, offset.parse().ok()?))
}

/// The topic of the first delivery, as `h` (the headers of `envelope` or of its copy) says.
pub(crate) fn original_topic_of<'a>(h: &'a Headers, envelope: &'a Envelope) -> &'a str {
    h.get_str(ORIGINAL_TOPIC).unwrap_or(&envelope.topic[..])
}

/// The partition of the first delivery, as `h` says.
pub(crate) fn original_partition_of(h: &Headers, envelope: &Envelope) -> i32 {
    h.get_i64(ORIGINAL_PARTITION)
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or(envelope.partition)
}

/// The offset of the first delivery.
pub(crate) fn original_offset(envelope: &Envelope) -> i64 {
    envelope
        .headers
        .get_i64(ORIGINAL_OFFSET)
        .unwrap_or(envelope.offset)
}

/// The topic of the first delivery.
pub(crate) fn original_topic(envelope: &Envelope) -> &str {
    envelope
        .headers
        .get_str(ORIGINAL_TOPIC)
        .unwrap_or(&envelope.topic[..])
}

/// The partition of the first delivery.
pub(crate) fn original_partition(envelope: &Envelope) -> i32 {
    envelope
        .headers
        .get_i64(ORIGINAL_PARTITION)
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or(envelope.partition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339_text() {
        let ms = 1_764_633_600_123;
        let text = format_time_ms(ms);
        assert_eq!(text, "2025-12-02T00:00:00.123Z");
        assert_eq!(parse_time_ms(&text), Some(ms));
    }

    #[test]
    fn routed_from_round_trips_with_dots_and_slashes_in_the_topic() {
        let text = routed_from("a.b/c", 3, 42);
        assert_eq!(parse_routed_from(&text), Some(("a.b/c", 3, 42)));
        assert_eq!(parse_routed_from("t/x/1"), None);
    }
}
