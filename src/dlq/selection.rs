//! Which dead-letter records a listing or a replay takes: the filters, and the fingerprint
//! a replay's default id is made of.

use bytes::Bytes;

use super::error::DlqError;
use super::record::{DlqRecord, ErrorClass};

/// The filters of [`list`](super::Dlq::list) and [`replay`](super::Dlq::replay); every
/// filter that is set must match. Built with [`Selection::new`] and the `with_*` setters.
///
/// The time filters compare the failure time: the `steadfast-last-failure-at` header, or
/// the dead-letter record's own timestamp when that header is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The dead-letter topic to read.
    pub topic: String,
    /// Only records with exactly this key.
    pub key: Option<Bytes>,
    /// Only records of this error class.
    pub error_class: Option<ErrorClass>,
    /// Only records that failed at or after this time (milliseconds since the epoch).
    pub failed_from_ms: Option<i64>,
    /// Only records that failed before this time (milliseconds since the epoch).
    pub failed_until_ms: Option<i64>,
    /// Only records first delivered on this topic.
    pub original_topic: Option<String>,
    /// Only records first delivered on this partition.
    pub original_partition: Option<i32>,
    /// Only records first delivered at or after this offset.
    pub original_offset_from: Option<i64>,
    /// Only records first delivered before this offset.
    pub original_offset_until: Option<i64>,
}

impl Selection {
    /// Every record of the dead-letter topic `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        Selection {
            topic: topic.into(),
            ..Selection::default()
        }
    }
    /// Only records with exactly this key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Only records of this error class.
    pub fn with_error_class(mut self, class: ErrorClass) -> Self {
        self.error_class = Some(class);
        self
    }
    /// Only records that failed in `[from, until)` (milliseconds since the epoch; either
    /// end open when `None`).
    pub fn with_failed_between(mut self, from: Option<i64>, until: Option<i64>) -> Self {
        self.failed_from_ms = from;
        self.failed_until_ms = until;
        self
    }
    /// Only records first delivered on this topic.
    pub fn with_original_topic(mut self, topic: impl Into<String>) -> Self {
        self.original_topic = Some(topic.into());
        self
    }
    /// Only records first delivered on this partition.
    pub fn with_original_partition(mut self, partition: i32) -> Self {
        self.original_partition = Some(partition);
        self
    }
    /// Only records first delivered at an offset in `[from, until)` (either end open when
    /// `None`).
    pub fn with_original_offsets(mut self, from: Option<i64>, until: Option<i64>) -> Self {
        self.original_offset_from = from;
        self.original_offset_until = until;
        self
    }

    /// Refuses an empty topic and ranges whose start is not before their end.
    pub fn validate(&self) -> Result<(), DlqError> {
        if self.topic.is_empty() {
            return Err(DlqError::InvalidSelection(
                "no dead-letter topic given".into(),
            ));
        }
        if let (Some(from), Some(until)) = (self.failed_from_ms, self.failed_until_ms) {
            if from >= until {
                return Err(DlqError::InvalidSelection(
                    "the failure time range is empty: `from` must be before `until`".into(),
                ));
            }
        }
        if let (Some(from), Some(until)) = (self.original_offset_from, self.original_offset_until) {
            if from >= until {
                return Err(DlqError::InvalidSelection(
                    "the original offset range is empty: `from` must be below `until`".into(),
                ));
            }
        }
        if self.original_partition.is_some_and(|p| p < 0) {
            return Err(DlqError::InvalidSelection(
                "a partition is not negative".into(),
            ));
        }
        Ok(())
    }

    /// Whether `record` passes every filter that is set. A record without the header a
    /// filter looks at does not pass that filter.
    pub fn matches(&self, record: &DlqRecord) -> bool {
        if self
            .key
            .as_ref()
            .is_some_and(|k| record.key.as_ref() != Some(k))
        {
            return false;
        }
        if self
            .error_class
            .as_ref()
            .is_some_and(|c| record.error_class.as_ref() != Some(c))
        {
            return false;
        }
        if self.failed_from_ms.is_some() || self.failed_until_ms.is_some() {
            let Some(at) = record.failed_at_ms() else {
                return false;
            };
            if self.failed_from_ms.is_some_and(|from| at < from)
                || self.failed_until_ms.is_some_and(|until| at >= until)
            {
                return false;
            }
        }
        let original = record.original.as_ref();
        if let Some(topic) = &self.original_topic {
            if original.map(|o| &o.topic) != Some(topic) {
                return false;
            }
        }
        if let Some(partition) = self.original_partition {
            if original.and_then(|o| o.partition) != Some(partition) {
                return false;
            }
        }
        if self.original_offset_from.is_some() || self.original_offset_until.is_some() {
            let Some(offset) = original.and_then(|o| o.offset) else {
                return false;
            };
            if self.original_offset_from.is_some_and(|from| offset < from)
                || self
                    .original_offset_until
                    .is_some_and(|until| offset >= until)
            {
                return false;
            }
        }
        true
    }

    /// A stable fingerprint of the selection (16 hex digits, FNV-1a over a canonical text of
    /// every filter): the default replay id, and the check that a replay id is not reused
    /// for another selection.
    pub fn fingerprint(&self) -> String {
        self.fingerprint_with_target(None)
    }

    /// The fingerprint of this selection replayed into `to` (see
    /// [`ReplayOptions::with_to`](super::ReplayOptions::with_to)); without a target, the
    /// [`fingerprint`](Self::fingerprint).
    pub(crate) fn fingerprint_with_target(&self, to: Option<&str>) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        let key = self
            .key
            .as_ref()
            .map(|k| k.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let canonical = [
            format!("topic={}", self.topic),
            format!("key={}", opt(key)),
            format!(
                "class={}",
                opt(self.error_class.as_ref().map(ToString::to_string))
            ),
            format!("from={}", opt(self.failed_from_ms.map(|v| v.to_string()))),
            format!("until={}", opt(self.failed_until_ms.map(|v| v.to_string()))),
            format!("otopic={}", opt(self.original_topic.clone())),
            format!(
                "opartition={}",
                opt(self.original_partition.map(|v| v.to_string()))
            ),
            format!(
                "ofrom={}",
                opt(self.original_offset_from.map(|v| v.to_string()))
            ),
            format!(
                "ountil={}",
                opt(self.original_offset_until.map(|v| v.to_string()))
            ),
        ]
        .join("\n");
        let canonical = match to {
            Some(to) => format!("{canonical}\nto={to}"),
            None => canonical,
        };
        format!("{:016x}", fnv1a(canonical.as_bytes()))
    }
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::headers;
    use crate::message::Headers;

    fn record(
        key: &str,
        class: &str,
        otopic: &str,
        opartition: i32,
        ooffset: i64,
        failed: &str,
    ) -> DlqRecord {
        let h: Headers = [
            (headers::ORIGINAL_TOPIC, otopic.to_owned()),
            (headers::ORIGINAL_PARTITION, opartition.to_string()),
            (headers::ORIGINAL_OFFSET, ooffset.to_string()),
            (headers::ERROR_CLASS, class.to_owned()),
            (headers::LAST_FAILURE, failed.to_owned()),
        ]
        .into_iter()
        .collect();
        DlqRecord::decode(
            "orders.dlq",
            0,
            0,
            None,
            Some(Bytes::from(key.to_owned())),
            None,
            h,
        )
    }

    fn ms(text: &str) -> Option<i64> {
        headers::parse_time_ms(text)
    }

    #[test]
    fn each_filter_takes_only_matching_records() {
        let r = record("k1", "permanent", "orders", 2, 40, "2025-01-01T10:00:00Z");
        let all = Selection::new("orders.dlq");
        assert!(all.matches(&r));
        assert!(all.clone().with_key("k1").matches(&r));
        assert!(!all.clone().with_key("k2").matches(&r));
        assert!(all
            .clone()
            .with_error_class(ErrorClass::Permanent)
            .matches(&r));
        assert!(!all.clone().with_error_class(ErrorClass::Decode).matches(&r));
        assert!(all.clone().with_original_topic("orders").matches(&r));
        assert!(!all.clone().with_original_topic("payments").matches(&r));
        assert!(all.clone().with_original_partition(2).matches(&r));
        assert!(!all.clone().with_original_partition(1).matches(&r));
        assert!(all
            .clone()
            .with_original_offsets(Some(40), Some(41))
            .matches(&r));
        assert!(!all
            .clone()
            .with_original_offsets(Some(41), None)
            .matches(&r));
        assert!(!all
            .clone()
            .with_original_offsets(None, Some(40))
            .matches(&r));
        let t = all
            .clone()
            .with_failed_between(ms("2025-01-01T10:00:00Z"), ms("2025-01-01T11:00:00Z"));
        assert!(t.matches(&r), "from is inclusive");
        let t = all
            .clone()
            .with_failed_between(None, ms("2025-01-01T10:00:00Z"));
        assert!(!t.matches(&r), "until is exclusive");
        let both = all.with_key("k1").with_error_class(ErrorClass::Transient);
        assert!(!both.matches(&r), "every filter must match");
    }

    #[test]
    fn a_record_without_the_filtered_header_does_not_match() {
        let bare = DlqRecord::decode("orders.dlq", 0, 0, None, None, None, Headers::new());
        let all = Selection::new("orders.dlq");
        assert!(all.matches(&bare));
        assert!(!all.clone().with_original_topic("orders").matches(&bare));
        assert!(!all.clone().with_original_partition(0).matches(&bare));
        assert!(!all.clone().with_key("k").matches(&bare));
        assert!(!all.with_failed_between(Some(0), None).matches(&bare));
    }

    #[test]
    fn empty_ranges_are_refused() {
        assert!(Selection::new("t").validate().is_ok());
        assert!(Selection::new("").validate().is_err());
        assert!(Selection::new("t")
            .with_failed_between(Some(5), Some(5))
            .validate()
            .is_err());
        assert!(Selection::new("t")
            .with_original_offsets(Some(9), Some(3))
            .validate()
            .is_err());
    }

    #[test]
    fn the_fingerprint_is_stable_and_tells_selections_apart() {
        let a = Selection::new("orders.dlq").with_error_class(ErrorClass::Permanent);
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert_eq!(
            Selection::new("orders.dlq").fingerprint(),
            "4df71be70eee58e3"
        );
        assert_ne!(a.fingerprint(), Selection::new("orders.dlq").fingerprint());
        assert_ne!(
            Selection::new("t").with_original_partition(1).fingerprint(),
            Selection::new("t")
                .with_original_offsets(Some(1), None)
                .fingerprint()
        );
    }
}
