//! The copy a replay produces of a dead-letter record: key and value unchanged, headers kept
//! except the per-delivery state, plus the replay provenance.

use super::super::record::DlqRecord;
use crate::message::Headers;
use crate::policy::headers;

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

/// The headers of the replayed copy of `record`: its own headers without
/// [`headers::DELIVERY_STATE`] (so the record starts fresh: attempt 1, not a tier record)
/// and without an earlier replay's stamp, then the replay headers.
pub(crate) fn replay_headers(record: &DlqRecord, stamp: &Stamp<'_>) -> Headers {
    let mut h = record.headers.clone();
    for name in headers::DELIVERY_STATE.iter().chain(&headers::REPLAY) {
        h.remove(name);
    }
    h.push(headers::REPLAYED_BY, stamp.by.to_owned());
    h.push(headers::REPLAYED_AT, headers::format_time_ms(stamp.at_ms));
    h.push(headers::REPLAY_OF, record.position().to_string());
    h.push(headers::REPLAY_ID, stamp.replay_id.to_owned());
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
    use bytes::Bytes;

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
        let out = replay_headers(&record, &stamp);
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
        assert_eq!(crate::policy::headers::attempts_before(&out), 0);
        assert_eq!(crate::policy::headers::retry_tier(&out), 0);
    }
}
