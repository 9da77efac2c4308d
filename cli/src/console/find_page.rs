//! Find a message: the filters of `steadfast find` (key, header, JSON field, time range,
//! partition) over any topic, through the same search (the time index bounds the scan).

use std::num::NonZeroU64;

use axum::extract::{Query, State};
use maud::{html, Markup};
use serde::Deserialize;

use super::error::ConsoleError;
use super::layout::{self, time_ms};
use super::state::Shared;
use crate::find::filter::{parse_header, parse_json_field};
use crate::find::{search, spans, Filter, Range, Tally};
use crate::text::cut;
use crate::time::parse_rfc3339_ms;

/// Matches shown when no limit is given, and the most a page shows.
const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1_000;
/// Characters of a value shown in the table.
const VALUE_CHARS: usize = 400;

/// The search form, as sent (empty means unset).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FindForm {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    header: String,
    #[serde(default)]
    json_field: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    partition: String,
    #[serde(default)]
    limit: String,
}

/// One match, owned.
#[derive(Debug)]
struct Found {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<String>,
    headers: Vec<(String, String)>,
    value: Option<String>,
}

/// Bytes as shown: text when UTF-8, else `hex:…`.
fn shown(bytes: &[u8]) -> String {
    steadfast::dlq::Shown::of(bytes).display()
}

impl FindForm {
    fn bad(field: &str, why: impl std::fmt::Display) -> ConsoleError {
        ConsoleError::BadRequest(format!("{field}: {why}"))
    }

    /// The filter, partition and limit these fields make, or what is wrong with them.
    fn parse(&self) -> Result<(Filter, Option<i32>, NonZeroU64), ConsoleError> {
        let time = |name: &str, text: &str| -> Result<Option<i64>, ConsoleError> {
            let text = text.trim();
            (!text.is_empty())
                .then(|| parse_rfc3339_ms(text).map_err(|e| Self::bad(name, e)))
                .transpose()
        };
        let headers = match self.header.trim() {
            "" => vec![],
            text => vec![parse_header(text).map_err(|e| Self::bad("header", e))?],
        };
        let fields = match self.json_field.trim() {
            "" => vec![],
            text => vec![parse_json_field(text).map_err(|e| Self::bad("JSON field", e))?],
        };
        let filter = Filter::new()
            .with_key((!self.key.is_empty()).then_some(self.key.as_str()))
            .with_headers(headers)
            .with_json_fields(fields)
            .with_time(time("from", &self.from)?, time("until", &self.until)?)
            .map_err(|e| Self::bad("time range", e))?;
        let partition = match self.partition.trim() {
            "" => None,
            p => Some(
                p.parse()
                    .map_err(|_| Self::bad("partition", format!("`{p}` is not a number")))?,
            ),
        };
        let limit = match self.limit.trim() {
            "" => DEFAULT_LIMIT,
            n => n
                .parse::<u64>()
                .map_err(|_| Self::bad("limit", format!("`{n}` is not a number")))?,
        };
        let limit = NonZeroU64::new(limit.clamp(1, MAX_LIMIT))
            .ok_or_else(|| Self::bad("limit", "must be at least 1"))?;
        Ok((filter, partition, limit))
    }
}

/// `GET /find`: the form, and with a topic the matches.
pub(crate) async fn page(
    State(console): State<Shared>,
    Query(form): Query<FindForm>,
) -> Result<Markup, ConsoleError> {
    if form.topic.trim().is_empty() {
        return Ok(render(&form, None));
    }
    let (filter, partition, limit) = form.parse()?;
    let topic = form.topic.trim().to_owned();
    let c = console.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        let searched = search(
            &c.connection,
            &topic,
            partition,
            &filter,
            Some(limit),
            |_, _, _| {},
            |partition, offset, r| {
                found.push(Found {
                    partition,
                    offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key.map(shown),
                    headers: r
                        .headers
                        .iter()
                        .map(|(n, v)| {
                            (
                                (*n).to_owned(),
                                v.map_or_else(|| "(null)".to_owned(), shown),
                            )
                        })
                        .collect(),
                    value: r.value.map(shown),
                });
                Ok(())
            },
        )?;
        anyhow::Ok((searched.ranges, searched.tally, found))
    })
    .await??;
    Ok(render(&form, Some(&result)))
}

fn summary(ranges: &[Range], tally: &Tally) -> String {
    let mut text = format!(
        "Scanned {} record(s) ({}); {} match(es)",
        tally.scanned,
        spans(ranges),
        tally.matched
    );
    if tally.stopped_at_limit {
        text.push_str("; stopped at the limit");
    }
    text
}

fn render(form: &FindForm, result: Option<&(Vec<Range>, Tally, Vec<Found>)>) -> Markup {
    layout::page(
        "Find",
        html! {
            h1 { "Find a message" }
            form.filters #find method="get" action="/find" {
                label { "Topic" input name="topic" value=(form.topic) required; }
                label { "Key" input name="key" value=(form.key); }
                label { "Header (NAME=VALUE)" input name="header" value=(form.header); }
                label { "JSON field (PATH=VALUE)" input name="json_field" value=(form.json_field) placeholder="order.id=42"; }
                label { "From (RFC 3339)" input name="from" value=(form.from); }
                label { "Until" input name="until" value=(form.until); }
                label { "Partition" input name="partition" value=(form.partition) size="4"; }
                label { "Limit" input name="limit" value=(form.limit) placeholder=(DEFAULT_LIMIT) size="5"; }
                button type="submit" { "Find" }
            }
            @if let Some((ranges, tally, found)) = result {
                p #find-summary { (summary(ranges, tally)) "." }
                @if !found.is_empty() {
                    table #found {
                        thead { tr { th { "Partition/offset" } th { "Timestamp" } th { "Key" } th { "Headers" } th { "Value" } } }
                        tbody {
                            @for f in found {
                                tr {
                                    td.mono { (f.partition) "/" (f.offset) }
                                    td { (time_ms(f.timestamp_ms)) }
                                    td.mono.key { (f.key.as_deref().unwrap_or("-")) }
                                    td.mono {
                                        @for (name, value) in &f.headers { div { (name) "=" (value) } }
                                    }
                                    td.mono.value { (f.value.as_deref().map_or_else(|| "-".to_owned(), |v| cut(v, VALUE_CHARS))) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
