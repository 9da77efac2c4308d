//! How `steadfast find` prints a found record: a tab-separated table row (text made safe for
//! a terminal, bytes that are not UTF-8 as `hex:…`), or one JSON object a line.

use std::io::Write;

use serde_json::{json, Value};
use steadfast::dlq::Shown;
use steadfast::policy::headers::format_time_ms;

use super::filter::Candidate;
use crate::text::{safe, shown};

/// The first line of the table.
pub(crate) const TABLE_HEADER: &str = "PARTITION/OFFSET\tTIMESTAMP\tKEY\tHEADERS\tVALUE";

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// A table with a header line and a count at the end.
    Table,
    /// One JSON object a line, nothing else.
    JsonLines,
}

/// Writes found records to `out` in one format.
#[derive(Debug)]
pub(crate) struct Printer<W: Write> {
    out: W,
    format: Format,
    printed: u64,
}

impl<W: Write> Printer<W> {
    /// A printer writing to `out`.
    pub(crate) fn new(out: W, format: Format) -> Self {
        Printer {
            out,
            format,
            printed: 0,
        }
    }

    /// Writes what comes before the records (the table's header line).
    pub(crate) fn begin(&mut self) -> std::io::Result<()> {
        if self.format == Format::Table {
            writeln!(self.out, "{TABLE_HEADER}")?;
        }
        Ok(())
    }

    /// Writes one record of `topic` and flushes, so a slow search shows its finds at once.
    pub(crate) fn record(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        record: &Candidate<'_>,
    ) -> std::io::Result<()> {
        match self.format {
            Format::Table => writeln!(self.out, "{}", table_row(partition, offset, record))?,
            Format::JsonLines => {
                writeln!(self.out, "{}", json_line(topic, partition, offset, record))?
            }
        }
        self.printed += 1;
        self.out.flush()
    }

    /// Writes what comes after the records (the table's count).
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        if self.format == Format::Table {
            writeln!(self.out, "{} record(s)", self.printed)?;
        }
        self.out.flush()
    }
}

/// `partition/offset  timestamp  key  headers  value`, tab-separated; `-` for a missing
/// timestamp, key or value; headers as `name=value` joined by `, `, a null value as `name`.
fn table_row(partition: i32, offset: i64, r: &Candidate<'_>) -> String {
    let dash = || "-".to_owned();
    let headers = r
        .headers
        .iter()
        .map(|(name, value)| match value {
            Some(v) => format!("{}={}", safe(name), shown(v)),
            None => safe(name),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{partition}/{offset}\t{}\t{}\t{}\t{}",
        r.timestamp_ms.map_or_else(dash, format_time_ms),
        r.key.map_or_else(dash, shown),
        if headers.is_empty() { dash() } else { headers },
        r.value.map_or_else(dash, shown),
    )
}

/// The record as one JSON object: `topic`, `partition`, `offset`, `timestamp` (RFC 3339),
/// `timestamp_ms`, `key` and `value` (text, or hex with `key_encoding`/`value_encoding`
/// `"hex"`; null when absent) and `headers` (`[{"name", "value"}]` in order, a value that is
/// not UTF-8 as `hex:…`, a null value as null).
fn json_line(topic: &str, partition: i32, offset: i64, r: &Candidate<'_>) -> Value {
    let bytes = |b: Option<&[u8]>| match b.map(Shown::of) {
        Some(s) => (Value::from(s.as_str()), Value::from(s.encoding())),
        None => (Value::Null, Value::Null),
    };
    let (key, key_encoding) = bytes(r.key);
    let (value, value_encoding) = bytes(r.value);
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|(name, v)| {
            json!({
                "name": name,
                "value": v.map(|v| Shown::of(v).display()),
            })
        })
        .collect();
    json!({
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": r.timestamp_ms.map(format_time_ms),
        "timestamp_ms": r.timestamp_ms,
        "key": key,
        "key_encoding": key_encoding,
        "value": value,
        "value_encoding": value_encoding,
        "headers": headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADERS: &[(&str, Option<&[u8]>)] = &[
        ("tenant", Some(b"acme")),
        ("bin", Some(&[0xff])),
        ("nil", None),
    ];

    fn sample() -> Candidate<'static> {
        Candidate {
            timestamp_ms: Some(1_714_564_800_250),
            key: Some(b"k\x1b1"),
            headers: HEADERS,
            value: Some(br#"{"id":1}"#),
        }
    }

    #[test]
    fn table_rows_are_safe_and_mark_what_is_missing() {
        assert_eq!(
            table_row(2, 41, &sample()),
            "2/41\t2024-05-01T12:00:00.25Z\tk\\x1b1\ttenant=acme, bin=hex:ff, nil\t{\"id\":1}"
        );
        let bare = Candidate {
            timestamp_ms: None,
            key: None,
            headers: &[],
            value: None,
        };
        assert_eq!(table_row(0, 0, &bare), "0/0\t-\t-\t-\t-");
    }

    #[test]
    fn json_lines_carry_every_field() {
        let line = json_line("orders", 2, 41, &sample());
        assert_eq!(
            line,
            json!({
                "topic": "orders",
                "partition": 2,
                "offset": 41,
                "timestamp": "2024-05-01T12:00:00.25Z",
                "timestamp_ms": 1_714_564_800_250i64,
                "key": "k\u{1b}1",
                "key_encoding": "utf8",
                "value": "{\"id\":1}",
                "value_encoding": "utf8",
                "headers": [
                    {"name": "tenant", "value": "acme"},
                    {"name": "bin", "value": "hex:ff"},
                    {"name": "nil", "value": null},
                ],
            })
        );
    }

    #[test]
    fn the_table_ends_with_a_count_and_json_lines_with_nothing() {
        let mut table = Printer::new(Vec::new(), Format::Table);
        table.begin().unwrap();
        table.record("t", 0, 1, &sample()).unwrap();
        table.finish().unwrap();
        let text = String::from_utf8(table.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], TABLE_HEADER);
        assert_eq!(lines[2], "1 record(s)");
        let mut json = Printer::new(Vec::new(), Format::JsonLines);
        json.begin().unwrap();
        json.record("t", 0, 1, &sample()).unwrap();
        json.finish().unwrap();
        let text = String::from_utf8(json.out).unwrap();
        assert_eq!(text.lines().count(), 1);
    }
}
