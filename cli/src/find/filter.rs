//! The filters of `steadfast find`: how each is parsed from the command line and how a
//! record is matched against all of them (every filter given must match). Pure: no I/O.
//!
//! Matching rules:
//! - `--key K`: the record's key is exactly the bytes of `K` (a record without a key never
//!   matches).
//! - `--header NAME=VALUE` (repeatable): the record has a header called exactly `NAME`
//!   (case-sensitive) whose value is exactly the bytes of `VALUE`; with several headers of
//!   that name, one matching is enough. A header with a null value never matches.
//! - `--json-field PATH=VALUE` (repeatable): the record's value parses as JSON and the value
//!   at the dotted `PATH` (object keys; a decimal segment indexes an array) equals `VALUE`:
//!   a JSON string when its text is exactly `VALUE`; a JSON number when `VALUE` is a number
//!   of the same value (`42`, `42.0` and `4.2e1` are equal); `true`, `false` and `null` when
//!   `VALUE` is that word. So `order.id=42` finds `{"order":{"id":42}}` and
//!   `{"order":{"id":"42"}}`. Objects and arrays never match; keys containing a dot cannot
//!   be addressed.
//! - `--from T1` / `--until T2`: the record's timestamp is at or after `T1` and before
//!   `T2`; a record without a timestamp never matches a time filter.

use serde_json::Value;

/// A record as the filters see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    /// Timestamp in milliseconds since the epoch, if the record has one.
    pub(crate) timestamp_ms: Option<i64>,
    /// The key, if any.
    pub(crate) key: Option<&'a [u8]>,
    /// The headers in order (a null value as `None`).
    pub(crate) headers: &'a [(&'a str, Option<&'a [u8]>)],
    /// The value, if any.
    pub(crate) value: Option<&'a [u8]>,
}

/// `--header NAME=VALUE`: a header of that name with exactly that value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderMatch {
    name: String,
    value: Vec<u8>,
}

/// Parses `NAME=VALUE` (split at the first `=`; `NAME` must not be empty, `VALUE` may be).
pub(crate) fn parse_header(text: &str) -> Result<HeaderMatch, String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok(HeaderMatch {
            name: name.to_owned(),
            value: value.as_bytes().to_vec(),
        }),
        _ => Err(format!(
            "`{text}`: expected NAME=VALUE, such as tenant=acme"
        )),
    }
}

impl HeaderMatch {
    fn matches(&self, headers: &[(&str, Option<&[u8]>)]) -> bool {
        headers
            .iter()
            .any(|(name, value)| *name == self.name && *value == Some(self.value.as_slice()))
    }
}

/// One step of a JSON path: an object key, which is also an array index when decimal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    key: String,
    index: Option<usize>,
}

/// `--json-field PATH=VALUE`: the JSON value at a dotted path equals a value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonFieldMatch {
    path: Vec<Segment>,
    expected: String,
    /// `expected` as a number, when it is one.
    number: Option<serde_json::Number>,
}

/// Parses `PATH=VALUE`: `PATH` is dot-separated non-empty segments (`order.id`,
/// `items.0.sku`), split from `VALUE` at the first `=`.
pub(crate) fn parse_json_field(text: &str) -> Result<JsonFieldMatch, String> {
    let bad = |why: &str| format!("`{text}`: {why}; expected PATH=VALUE, such as order.id=42");
    let (path, expected) = text.split_once('=').ok_or_else(|| bad("no `=`"))?;
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    let path = path
        .split('.')
        .map(|s| {
            if s.is_empty() {
                Err(bad("the path has an empty segment"))
            } else {
                Ok(Segment {
                    key: s.to_owned(),
                    index: s
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| s.parse().ok())
                        .flatten(),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Only a plain JSON number counts (not ` 42`, `NaN` nor `"42"`).
    let number = (expected.trim() == expected)
        .then(|| serde_json::from_str::<serde_json::Number>(expected).ok())
        .flatten();
    Ok(JsonFieldMatch {
        path,
        expected: expected.to_owned(),
        number,
    })
}

impl JsonFieldMatch {
    /// Whether `document` holds the expected value at the path.
    fn matches(&self, document: &Value) -> bool {
        let mut at = document;
        for segment in &self.path {
            let next = match at {
                Value::Object(map) => map.get(&segment.key),
                Value::Array(items) => segment.index.and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(v) => at = v,
                None => return false,
            }
        }
        match at {
            Value::String(s) => *s == self.expected,
            Value::Number(n) => self.number.as_ref().is_some_and(|e| numbers_equal(n, e)),
            Value::Bool(b) => self.expected == if *b { "true" } else { "false" },
            Value::Null => self.expected == "null",
            Value::Array(_) | Value::Object(_) => false,
        }
    }
}

/// Numeric equality: exact for integers, by `f64` value when either is not an integer.
fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return a == b;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Every filter of one `find`; a record matches when it passes all of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    key: Option<Vec<u8>>,
    headers: Vec<HeaderMatch>,
    json_fields: Vec<JsonFieldMatch>,
    from_ms: Option<i64>,
    until_ms: Option<i64>,
}

impl Filter {
    /// A filter that matches every record.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Only records with exactly this key.
    pub(crate) fn with_key(mut self, key: Option<&str>) -> Self {
        self.key = key.map(|k| k.as_bytes().to_vec());
        self
    }

    /// Only records with every one of these headers.
    pub(crate) fn with_headers(mut self, headers: Vec<HeaderMatch>) -> Self {
        self.headers = headers;
        self
    }

    /// Only records whose JSON value has every one of these fields.
    pub(crate) fn with_json_fields(mut self, fields: Vec<JsonFieldMatch>) -> Self {
        self.json_fields = fields;
        self
    }

    /// Only records with a timestamp in `[from, until)` (either end open when `None`);
    /// refused when `from` is not before `until`, as no record could match.
    pub(crate) fn with_time(
        mut self,
        from: Option<i64>,
        until: Option<i64>,
    ) -> Result<Self, String> {
        if let (Some(f), Some(u)) = (from, until) {
            if f >= u {
                return Err(format!(
                    "--from ({}) is not before --until ({}): no record can match",
                    steadfast::policy::headers::format_time_ms(f),
                    steadfast::policy::headers::format_time_ms(u)
                ));
            }
        }
        self.from_ms = from;
        self.until_ms = until;
        Ok(self)
    }

    /// The time range `(from, until)`: `until` exclusive, either end open when `None`.
    pub(crate) fn time_range(&self) -> (Option<i64>, Option<i64>) {
        (self.from_ms, self.until_ms)
    }

    /// Whether `record` passes every filter (the cheap ones first, JSON last).
    pub(crate) fn matches(&self, record: &Candidate<'_>) -> bool {
        if self.from_ms.is_some() || self.until_ms.is_some() {
            let Some(ts) = record.timestamp_ms else {
                return false;
            };
            if self.from_ms.is_some_and(|f| ts < f) || self.until_ms.is_some_and(|u| ts >= u) {
                return false;
            }
        }
        if let Some(key) = &self.key {
            if record.key != Some(key.as_slice()) {
                return false;
            }
        }
        if !self.headers.iter().all(|h| h.matches(record.headers)) {
            return false;
        }
        if self.json_fields.is_empty() {
            return true;
        }
        let Some(document) = record
            .value
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
        else {
            return false;
        };
        self.json_fields.iter().all(|f| f.matches(&document))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(
        key: Option<&'a str>,
        headers: &'a [(&'a str, Option<&'a [u8]>)],
        value: &'a str,
        ts: Option<i64>,
    ) -> Candidate<'a> {
        Candidate {
            timestamp_ms: ts,
            key: key.map(str::as_bytes),
            headers,
            value: Some(value.as_bytes()),
        }
    }

    fn json(path_value: &str, document: &str) -> bool {
        let filter = Filter::new().with_json_fields(vec![parse_json_field(path_value).unwrap()]);
        filter.matches(&record(None, &[], document, None))
    }

    #[test]
    fn header_syntax_is_name_equals_value() {
        assert_eq!(
            parse_header("tenant=a=b").unwrap(),
            HeaderMatch {
                name: "tenant".into(),
                value: b"a=b".to_vec()
            }
        );
        assert_eq!(parse_header("empty=").unwrap().value, b"".to_vec());
        for bad in ["tenant", "=x", ""] {
            let e = parse_header(bad).unwrap_err();
            assert!(e.contains("expected NAME=VALUE"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn json_field_syntax_needs_a_path_of_non_empty_segments() {
        assert!(parse_json_field("order.id=42").is_ok());
        assert!(parse_json_field("items.0.sku=").is_ok());
        for (bad, why) in [
            ("order.id", "no `=`"),
            ("=42", "the path is empty"),
            (".id=1", "empty segment"),
            ("order..id=1", "empty segment"),
            ("order.=1", "empty segment"),
        ] {
            let e = parse_json_field(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn json_strings_compare_as_text_and_numbers_by_value() {
        assert!(json("order.id=42", r#"{"order":{"id":42}}"#));
        assert!(json("order.id=42", r#"{"order":{"id":"42"}}"#));
        assert!(json("order.id=42", r#"{"order":{"id":42.0}}"#));
        assert!(json("order.id=4.2e1", r#"{"order":{"id":42}}"#));
        assert!(json("order.id=-7", r#"{"order":{"id":-7}}"#));
        assert!(json(
            "n=18446744073709551615",
            r#"{"n":18446744073709551615}"#
        ));
        assert!(!json("n=9007199254740993", r#"{"n":9007199254740992}"#));
        // A string is compared as written: "42.0" is not "42".
        assert!(!json("order.id=42", r#"{"order":{"id":"42.0"}}"#));
        assert!(!json("order.id=42", r#"{"order":{"id":43}}"#));
        assert!(!json("order.id= 42", r#"{"order":{"id":42}}"#));
        assert!(json("name=Ada Lovelace", r#"{"name":"Ada Lovelace"}"#));
        assert!(json("name=", r#"{"name":""}"#));
        assert!(json("ok=true", r#"{"ok":true}"#));
        assert!(!json("ok=true", r#"{"ok":false}"#));
        assert!(json("gone=null", r#"{"gone":null}"#));
        assert!(json("gone=null", r#"{"gone":"null"}"#));
        assert!(!json("gone=", r#"{"gone":null}"#));
    }

    #[test]
    fn json_paths_walk_objects_and_arrays() {
        assert!(json(
            "items.1.sku=b",
            r#"{"items":[{"sku":"a"},{"sku":"b"}]}"#
        ));
        assert!(!json(
            "items.2.sku=b",
            r#"{"items":[{"sku":"a"},{"sku":"b"}]}"#
        ));
        assert!(json("0=x", r#"["x"]"#));
        assert!(json("m.0=x", r#"{"m":{"0":"x"}}"#));
        // Containers, missing fields, walking into scalars, values that are not JSON.
        assert!(!json("order={}", r#"{"order":{}}"#));
        assert!(!json("order.id=1", r#"{"order":1}"#));
        assert!(!json("order.id=1", r#"{"other":1}"#));
        assert!(!json("order.id=1", "not json"));
        let filter = Filter::new().with_json_fields(vec![parse_json_field("a=1").unwrap()]);
        let no_value = Candidate {
            timestamp_ms: None,
            key: None,
            headers: &[],
            value: None,
        };
        assert!(!filter.matches(&no_value));
    }

    #[test]
    fn filters_combine_with_and() {
        let headers: &[(&str, Option<&[u8]>)] = &[
            ("tag", Some(b"x")),
            ("tag", Some(b"y")),
            ("tenant", Some(b"acme")),
            ("nil", None),
        ];
        let r = record(Some("k1"), headers, r#"{"id":1}"#, Some(1_000));
        let all = |f: Filter| f.matches(&r);
        assert!(all(Filter::new()));
        assert!(all(Filter::new().with_key(Some("k1"))));
        assert!(!all(Filter::new().with_key(Some("k2"))));
        assert!(all(Filter::new().with_headers(vec![
            parse_header("tag=y").unwrap(),
            parse_header("tenant=acme").unwrap()
        ])));
        assert!(!all(Filter::new().with_headers(vec![
            parse_header("tag=y").unwrap(),
            parse_header("tenant=other").unwrap()
        ])));
        assert!(!all(
            Filter::new().with_headers(vec![parse_header("Tenant=acme").unwrap()])
        ));
        assert!(!all(
            Filter::new().with_headers(vec![parse_header("nil=").unwrap()])
        ));
        assert!(all(Filter::new()
            .with_time(Some(1_000), Some(1_001))
            .unwrap()));
        assert!(!all(Filter::new().with_time(Some(1_001), None).unwrap()));
        assert!(!all(Filter::new().with_time(None, Some(1_000)).unwrap()));
        let combined = Filter::new()
            .with_key(Some("k1"))
            .with_headers(vec![parse_header("tag=x").unwrap()])
            .with_json_fields(vec![parse_json_field("id=1").unwrap()])
            .with_time(Some(0), Some(2_000))
            .unwrap();
        assert!(all(combined.clone()));
        assert!(!all(combined.with_key(Some("k2"))));
        let keyless = record(None, &[], "{}", None);
        assert!(!Filter::new().with_key(Some("")).matches(&keyless));
        assert!(!Filter::new()
            .with_time(Some(0), None)
            .unwrap()
            .matches(&keyless));
    }

    #[test]
    fn from_must_be_before_until() {
        assert!(Filter::new().with_time(Some(5), Some(6)).is_ok());
        for (from, until) in [(6, 5), (5, 5)] {
            let e = Filter::new()
                .with_time(Some(from), Some(until))
                .unwrap_err();
            assert!(e.contains("is not before --until"), "{e}");
        }
    }
}
