//! The copy a replay produces of a dead-letter record: key and value unchanged, headers kept
//! except the per-delivery state, plus the replay provenance.

use bytes::Bytes;

use super::super::record::DlqRecord;
use crate::message::headers;
use crate::observe::trace::{TraceContext, TRACEPARENT, TRACESTATE};

/// The headers of a replayed copy, in order; `None` is a null value, kept from the
/// dead-letter record.
pub(crate) type CopyHeaders = Vec<(String, Option<Bytes>)>;

/// Who replays, when, and under which id.
#[derive(Debug, Clone)]
pub(crate) struct Stamp<'a> {
    /// `user@host` or as given.
    pub(crate) by: &'a str,
    /// Milliseconds since the epoch.
    pub(crate) at_ms: i64,
    /// The replay id.
    pub(crate) replay_id: &'a str,
}

/// The headers of the replayed copy of `record`: its own headers (null ones null) without
/// [`headers::DELIVERY_STATE`] (so the record starts fresh: attempt 1, not a tier record)
/// and without an earlier replay's stamp, then the replay headers; `trace` (the replay's
/// span) in place of the record's `traceparent` and `tracestate` when given.
pub(crate) fn replay_headers(
    record: &DlqRecord,
    stamp: &Stamp<'_>,
    trace: Option<&TraceContext>,
) -> CopyHeaders {
    let traced = |name: &str| trace.is_some() && (name == TRACEPARENT || name == TRACESTATE);
    let dropped = |name: &str| {
        headers::DELIVERY_STATE.contains(&name) || headers::REPLAY.contains(&name) || traced(name)
    };
    let mut h: CopyHeaders = record
        .header_values()
        .filter(|(n, _)| !dropped(n))
        .map(|(n, v)| (n.to_owned(), v.cloned()))
        .collect();
    let stamp_headers = [
        (headers::REPLAYED_BY, stamp.by.to_owned()),
        (headers::REPLAYED_AT, headers::format_time_ms(stamp.at_ms)),
        (headers::REPLAY_OF, record.position().to_string()),
        (headers::REPLAY_ID, stamp.replay_id.to_owned()),
    ];
    for (name, value) in stamp_headers {
        h.push((name.to_owned(), Some(Bytes::from(value))));
    }
    if let Some(trace) = trace {
        h.push((TRACEPARENT.to_owned(), Some(trace.traceparent().into())));
        if let Some(state) = &trace.state {
            h.push((TRACESTATE.to_owned(), Some(Bytes::from(state.clone()))));
        }
    }
    h
}

/// `user@host` of this process, for `steadfast-replayed-by`.
pub(crate) fn default_replayed_by() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Headers;

    #[test]
    fn a_replayed_copy_starts_fresh_and_says_where_it_came_from() {
        let h: Headers = [
            ("user-header", "u"),
            (headers::ORIGINAL_TOPIC, "orders"),
            (headers::ERROR_CLASS, "permanent"),
            (headers::ATTEMPTS, "4"),
            (headers::RETRY_TIER, "2"),
            (headers::DUE_AT, "2025-01-01T00:00:00Z"),
            (headers::REPLAY_ID, "an-older-replay"),
        ]
        .into_iter()
        .map(|(n, v)| (n, Bytes::from(v.to_owned())))
        .collect();
        let record = DlqRecord::decode("orders.dlq", 1, 9, None, None, None, h);
        let stamp = Stamp {
            by: "ana@box",
            at_ms: 1_764_633_600_123,
            replay_id: "r1",
        };
        let copy = replay_headers(&record, &stamp, None);
        let out: Headers = copy
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().unwrap_or_default()))
            .collect();
        for gone in headers::DELIVERY_STATE {
            assert_eq!(out.get(gone), None, "{gone} is removed");
        }
        assert_eq!(out.get_str("user-header"), Some("u"));
        assert_eq!(out.get_str(headers::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(out.get_str(headers::ERROR_CLASS), Some("permanent"));
        assert_eq!(out.get_str(headers::REPLAYED_BY), Some("ana@box"));
        assert_eq!(
            out.get_str(headers::REPLAYED_AT),
            Some("2025-12-02T00:00:00.123Z")
        );
        assert_eq!(out.get_str(headers::REPLAY_OF), Some("orders.dlq/1/9"));
        assert_eq!(out.get_str(headers::REPLAY_ID), Some("r1"));
        assert_eq!(
            out.iter().filter(|(n, _)| *n == headers::REPLAY_ID).count(),
            1,
            "an earlier replay's id is replaced, not kept beside"
        );
        assert_eq!(crate::message::headers::attempts_before(&out), 0);
        assert_eq!(crate::message::headers::retry_tier(&out), 0);
    }

    #[test]
    fn a_replayed_copy_carries_the_replay_span_in_place_of_the_dead_letter_one() {
        let dead = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h: Headers = [
            ("user-header", "u"),
            (TRACEPARENT, dead),
            (TRACESTATE, "a=1"),
        ]
        .into_iter()
        .collect();
        let record = DlqRecord::decode("orders.dlq", 0, 3, None, None, None, h);
        let stamp = Stamp {
            by: "ana@box",
            at_ms: 0,
            replay_id: "r1",
        };
        let replay = TraceContext::parse(dead, Some("a=1"))
            .expect("parses")
            .child();
        let out: Headers = replay_headers(&record, &stamp, Some(&replay))
            .into_iter()
            .map(|(n, v)| (n, v.unwrap_or_default()))
            .collect();
        assert_eq!(out.iter().filter(|(n, _)| *n == TRACEPARENT).count(), 1);
        assert_eq!(TraceContext::from_headers(&out), Some(replay));
        let untraced: Headers = replay_headers(&record, &stamp, None)
            .into_iter()
            .map(|(n, v)| (n, v.unwrap_or_default()))
            .collect();
        assert_eq!(untraced.get_str(TRACEPARENT), Some(dead), "kept as it was");
    }

    #[test]
    fn a_null_header_stays_null_on_the_copy() {
        let h: Headers = [
            ("empty", ""),
            ("null", ""),
            (headers::ATTEMPTS, "4"),
            ("after", "a"),
        ]
        .into_iter()
        .collect();
        let record =
            DlqRecord::decode("orders.dlq", 0, 1, None, None, None, h).with_null_headers(vec![1]);
        let stamp = Stamp {
            by: "ana@box",
            at_ms: 0,
            replay_id: "r1",
        };
        let copy = replay_headers(&record, &stamp, None);
        let user: Vec<(&str, Option<&[u8]>)> = copy
            .iter()
            .take(3)
            .map(|(n, v)| (n.as_str(), v.as_deref()))
            .collect();
        assert_eq!(
            user,
            [
                ("empty", Some(&b""[..])),
                ("null", None),
                ("after", Some(&b"a"[..]))
            ],
            "null kept null, empty kept empty, in order"
        );
    }
}
