//! `steadfast find`: look records up by key, header, JSON field and time on any Kafka,
//! reading only the offsets that can hold them (the time index bounds a time range) and
//! printing each match as a table row or a JSON line.
//!
//! Each partition is read from its start to the high watermark read when the search began
//! (or to the first offset at or after `--until`), one partition after the other in
//! ascending order, so matches come out ordered by partition, then offset, and `--limit N`
//! keeps the first N in that order. The time index gives, for a time T, the first offset
//! whose timestamp is at or after T; with timestamps that do not grow with the offset
//! (producer-set times out of order), a record older than `--until` written after one newer
//! than it is not read.

pub(crate) mod filter;
mod output;
pub(crate) mod scan;

use std::io::IsTerminal;
use std::num::NonZeroU64;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::message::{Headers as _, Message as _};

pub(crate) use self::filter::{Candidate, Filter, HeaderMatch, JsonFieldMatch};
use self::output::{Format, Printer};
use self::scan::Flow;
pub(crate) use self::scan::Range;
use crate::client::Connection;
use crate::time::parse_rfc3339_ms;

/// Options of `steadfast find`. Every filter given must match.
#[derive(Debug, Args)]
pub(crate) struct FindArgs {
    #[command(flatten)]
    connection: Connection,
    /// The topic to search.
    #[arg(long, short = 't')]
    topic: String,
    /// Only records whose key is exactly this text.
    #[arg(long, short = 'k')]
    key: Option<String>,
    /// Only records with a header NAME whose value is exactly VALUE (repeatable; all must
    /// match; a header repeated on the record matches when one of its values does).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = filter::parse_header)]
    headers: Vec<HeaderMatch>,
    /// Only records whose value is JSON with VALUE at the dotted PATH, such as
    /// `order.id=42` (a decimal segment indexes an array). A JSON string matches when its
    /// text is VALUE, a number when VALUE is an equal number (42 = 42.0), true, false and
    /// null when VALUE is that word (repeatable; all must match).
    #[arg(long = "json-field", value_name = "PATH=VALUE", value_parser = filter::parse_json_field)]
    json_fields: Vec<JsonFieldMatch>,
    /// Only records with a timestamp at or after this RFC 3339 time, such as
    /// 2025-01-31T12:00:00Z; reading starts at the first such offset (the time index).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339_ms)]
    from: Option<i64>,
    /// Only records with a timestamp before this RFC 3339 time; reading stops at the first
    /// offset at or after it.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339_ms)]
    until: Option<i64>,
    /// Search this partition only.
    #[arg(long, short = 'p')]
    partition: Option<i32>,
    /// Stop after this many matches, in the order partition, then offset.
    #[arg(long, value_name = "N")]
    limit: Option<NonZeroU64>,
    /// One JSON object a line instead of the table.
    #[arg(long)]
    json: bool,
}

impl FindArgs {
    /// The filters given, checked (`--from` before `--until`).
    fn filter(&self) -> anyhow::Result<Filter> {
        Filter::new()
            .with_key(self.key.as_deref())
            .with_headers(self.headers.clone())
            .with_json_fields(self.json_fields.clone())
            .with_time(self.from, self.until)
            .map_err(|e| anyhow!(e))
    }
}

/// Runs `steadfast find` (the reads are blocking, so on a blocking thread).
pub(crate) async fn find(args: FindArgs) -> anyhow::Result<()> {
    let filter = args.filter()?;
    tokio::task::spawn_blocking(move || find_blocking(&args, &filter)).await?
}

/// What a search did, for the summary on standard error.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Records read.
    pub(crate) scanned: u64,
    /// Records that matched.
    pub(crate) matched: u64,
    /// Whether the search stopped at the limit.
    pub(crate) stopped_at_limit: bool,
}

/// What a search read, and what it found.
#[derive(Debug)]
pub(crate) struct Searched {
    /// The offsets read, per partition.
    pub(crate) ranges: Vec<Range>,
    /// Counts.
    pub(crate) tally: Tally,
}

/// Searches `topic` (or one `partition` of it) for records `filter` matches, partition by
/// partition in ascending offset order, stopping after `limit` matches. `progress` is told
/// the offsets read so far and in all, `found` each match (its partition, offset and the
/// record). Blocking.
pub(crate) fn search(
    connection: &Connection,
    topic: &str,
    partition: Option<i32>,
    filter: &Filter,
    limit: Option<NonZeroU64>,
    mut progress: impl FnMut(&Range, u64, u64),
    mut found: impl FnMut(i32, i64, &Candidate<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Searched> {
    let consumer = scan::reader(connection)?;
    let all = scan::partitions(&consumer, topic)?;
    let partitions = match partition {
        None => all,
        Some(p) if all.contains(&p) => vec![p],
        Some(p) => bail!(
            "topic {topic} has no partition {p} (its partitions are 0..{})",
            all.len()
        ),
    };
    let (from, until) = filter.time_range();
    let ranges = scan::ranges(&consumer, topic, &partitions, from, until)?;
    let total: u64 = ranges.iter().map(Range::len).sum();
    let mut tally = Tally::default();
    let mut done_before = 0u64;
    for range in &ranges {
        progress(range, done_before, total);
        let flow = scan::read_range(&consumer, topic, *range, |m| {
            tally.scanned += 1;
            let read = u64::try_from(m.offset() + 1 - range.start).unwrap_or(0);
            progress(range, done_before + read, total);
            let headers: Vec<(&str, Option<&[u8]>)> = m
                .headers()
                .map(|hs| hs.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default();
            let record = Candidate {
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key(),
                headers: &headers,
                value: m.payload(),
            };
            if !filter.matches(&record) {
                return Ok(Flow::Continue);
            }
            found(m.partition(), m.offset(), &record)?;
            tally.matched += 1;
            if limit.is_some_and(|n| tally.matched >= n.get()) {
                tally.stopped_at_limit = true;
                return Ok(Flow::Stop);
            }
            Ok(Flow::Continue)
        })?;
        done_before += range.len();
        if flow == Flow::Stop {
            break;
        }
    }
    Ok(Searched { ranges, tally })
}

fn find_blocking(args: &FindArgs, filter: &Filter) -> anyhow::Result<()> {
    let topic = args.topic.as_str();
    let format = if args.json {
        Format::JsonLines
    } else {
        Format::Table
    };
    let mut printer = Printer::new(std::io::stdout().lock(), format);
    let bar = progress_bar(0);
    let mut current = None;
    printer.begin().context("writing to standard output")?;
    let searched = search(
        &args.connection,
        topic,
        args.partition,
        filter,
        args.limit,
        |range, done, total| {
            if current != Some(range.partition) {
                current = Some(range.partition);
                bar.set_length(total);
                bar.set_message(format!("{topic}/{}", range.partition));
            }
            bar.set_position(done);
        },
        |partition, offset, record| {
            bar.suspend(|| printer.record(topic, partition, offset, record))
                .context("writing to standard output")
        },
    )?;
    bar.finish_and_clear();
    printer.finish().context("writing to standard output")?;
    eprintln!("{}", summary(topic, &searched.ranges, &searched.tally));
    Ok(())
}

/// `scanned N record(s) of T (partition p: offsets a..b, …); M match(es)`, and why it stopped
/// early when the limit did.
fn summary(topic: &str, ranges: &[Range], tally: &Tally) -> String {
    let mut text = format!(
        "scanned {} record(s) of {} ({}); {} match(es)",
        tally.scanned,
        crate::text::safe(topic),
        spans(ranges),
        tally.matched
    );
    if tally.stopped_at_limit {
        text.push_str("; stopped at --limit");
    }
    text
}

/// The offsets a search read: `partition p: offsets a..b, …`.
pub(crate) fn spans(ranges: &[Range]) -> String {
    ranges
        .iter()
        .map(|r| format!("partition {}: offsets {}..{}", r.partition, r.start, r.end))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bar of offsets read on a terminal; hidden otherwise.
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} offsets, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
