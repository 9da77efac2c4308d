//! Dead-letter tooling: `steadfast dlq list|show|replay`, over the `steadfast::dlq` API.

use std::io::{IsTerminal, Write};
use std::num::NonZeroU32;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use steadfast::dlq::{Dlq, DlqRecord, ErrorClass, ReplayOptions, ReplayReport, Selection};
use steadfast::policy::headers;

use crate::client::Connection;
use crate::text::{cut, or_dash, safe};
use crate::time::parse_rfc3339_ms;

/// Options of `steadfast dlq`.
#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List the records of a dead-letter topic that match the filters, as a table (or JSON
    /// lines with --json).
    List {
        #[command(flatten)]
        filters: Filters,
        /// One JSON object a line instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show one record with every provenance header decoded, its key, value and other
    /// headers (values that are not UTF-8 are shown as `hex:…`).
    Show {
        /// The dead-letter topic.
        #[arg(long, short = 't')]
        topic: String,
        /// Partition of the record.
        #[arg(long, short = 'p')]
        partition: i32,
        /// Offset of the record.
        #[arg(long, short = 'o')]
        offset: i64,
        /// The record as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Produce the selected records back to their original topics. Resumable: run the same
    /// command again after an interruption and each record is replayed once in total; once
    /// finished, the same command replays nothing (use --fresh to replay again).
    Replay(ReplayArgs),
}

/// The filters of `list` and `replay`; every filter given must match.
#[derive(Debug, Args)]
struct Filters {
    /// The dead-letter topic.
    #[arg(long, short = 't')]
    topic: String,
    /// Only records with exactly this key.
    #[arg(long, short = 'k')]
    key: Option<String>,
    /// Only records of this error class.
    #[arg(long, value_parser = ["transient", "permanent", "decode", "panic", "timeout"])]
    error_class: Option<String>,
    /// Only records that failed at or after this RFC 3339 time, such as
    /// 2025-01-31T12:00:00Z (the last-failure header, or the record timestamp without it).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339_ms)]
    from: Option<i64>,
    /// Only records that failed before this RFC 3339 time.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339_ms)]
    until: Option<i64>,
    /// Only records first delivered on this topic.
    #[arg(long)]
    original_topic: Option<String>,
    /// Only records first delivered on this partition.
    #[arg(long)]
    original_partition: Option<i32>,
    /// Only records first delivered at or after this offset.
    #[arg(long, value_name = "OFFSET")]
    original_offset_from: Option<i64>,
    /// Only records first delivered before this offset.
    #[arg(long, value_name = "OFFSET")]
    original_offset_until: Option<i64>,
}

/// Options of `steadfast dlq replay`.
#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    filters: Filters,
    /// At most this many records a second.
    #[arg(long, value_name = "N")]
    rate: Option<NonZeroU32>,
    /// Print what would be replayed; produce and commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay under a new id, so records an earlier replay of this selection already
    /// replayed are replayed again.
    #[arg(long, conflicts_with = "replay_id")]
    fresh: bool,
    /// The replay id (default: a fingerprint of the selection).
    #[arg(long)]
    replay_id: Option<String>,
    /// Written as steadfast-replayed-by (default: user@host).
    #[arg(long)]
    by: Option<String>,
    /// Replay every selected record into this topic. Without it a record goes back to its
    /// original topic, and only to the topic the dead-letter topic is named after
    /// (`orders.dlq` replays into `orders`): records naming another topic refuse the replay.
    #[arg(long, value_name = "TOPIC")]
    to: Option<String>,
}

impl Filters {
    fn selection(&self) -> Selection {
        let mut s = Selection::new(&self.topic)
            .with_failed_between(self.from, self.until)
            .with_original_offsets(self.original_offset_from, self.original_offset_until);
        if let Some(k) = &self.key {
            s = s.with_key(k.clone().into_bytes());
        }
        if let Some(c) = &self.error_class {
            let class: ErrorClass = c.parse().unwrap_or(ErrorClass::Other(c.clone()));
            s = s.with_error_class(class);
        }
        if let Some(t) = &self.original_topic {
            s = s.with_original_topic(t);
        }
        if let Some(p) = self.original_partition {
            s = s.with_original_partition(p);
        }
        s
    }
}

/// Runs `steadfast dlq`.
pub(crate) async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    let dlq = args.connection.properties().into_iter().fold(
        Dlq::new(args.connection.bootstrap()),
        |dlq, (key, value)| dlq.with_property(key, value),
    );
    match args.action {
        DlqAction::List { filters, json } => {
            let records = dlq.list(&filters.selection()).await?;
            print_list(&records, json)
        }
        DlqAction::Show {
            topic,
            partition,
            offset,
            json,
        } => {
            let record = dlq.show(&topic, partition, offset).await?;
            print_record(&record, json)
        }
        DlqAction::Replay(replay) => run_replay(&dlq, replay).await,
    }
}

/// `text` made [`safe`] and cut to `max` characters, with `…` when cut.
fn truncated(text: &str, max: usize) -> String {
    cut(&safe(text), max)
}

fn original_text(r: &DlqRecord) -> String {
    match &r.original {
        Some(o) => format!(
            "{}/{}/{}",
            safe(&o.topic),
            or_dash(o.partition),
            or_dash(o.offset)
        ),
        None => "-".to_owned(),
    }
}

fn print_list(records: &[DlqRecord], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for r in records {
            writeln!(out, "{}", r.to_json())?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "DLQ\tKEY\tCLASS\tORIGINAL\tATTEMPTS\tLAST-FAILURE\tMESSAGE"
    )?;
    for r in records {
        writeln!(
            out,
            "{}/{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.partition,
            r.offset,
            truncated(&or_dash(r.key_shown().map(|k| k.display())), 24),
            safe(&or_dash(r.error_class.as_ref())),
            original_text(r),
            or_dash(r.attempts),
            or_dash(r.last_failure_at_ms.map(headers::format_time_ms)),
            truncated(r.error_message.as_deref().unwrap_or("-"), 60),
        )?;
    }
    writeln!(out, "{} record(s)", records.len())?;
    Ok(())
}

fn print_record(r: &DlqRecord, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", r.to_json())?;
        return Ok(());
    }
    let time = |ms: Option<i64>| or_dash(ms.map(headers::format_time_ms));
    let shown = |s: Option<steadfast::dlq::Shown>| or_dash(s.map(|s| s.display()));
    let original = r.original.as_ref();
    let rows: Vec<(&str, String)> = vec![
        ("record", r.position().to_string()),
        ("timestamp", time(r.timestamp_ms)),
        ("key", shown(r.key_shown())),
        ("value", shown(r.value_shown())),
        ("original topic", or_dash(original.map(|o| o.topic.clone()))),
        (
            "original partition",
            or_dash(original.and_then(|o| o.partition)),
        ),
        ("original offset", or_dash(original.and_then(|o| o.offset))),
        (
            "original timestamp",
            time(original.and_then(|o| o.timestamp_ms)),
        ),
        ("group", or_dash(r.group.as_ref())),
        ("error class", or_dash(r.error_class.as_ref())),
        ("error message", or_dash(r.error_message.as_ref())),
        ("attempts", or_dash(r.attempts)),
        ("first failure", time(r.first_failure_at_ms)),
        ("last failure", time(r.last_failure_at_ms)),
    ];
    for (name, value) in rows {
        writeln!(out, "{name:<20}{}", safe(&value))?;
    }
    for (name, value) in r.other_headers() {
        let shown = value.map_or_else(
            || "(null)".to_owned(),
            |v| steadfast::dlq::Shown::of(v).display(),
        );
        writeln!(
            out,
            "{:<20}{}",
            format!("header {}", safe(name)),
            safe(&shown)
        )?;
    }
    Ok(())
}

async fn run_replay(dlq: &Dlq, args: ReplayArgs) -> anyhow::Result<()> {
    let selection = args.filters.selection();
    let mut options = ReplayOptions::default()
        .with_dry_run(args.dry_run)
        .with_fresh(args.fresh);
    if let Some(rate) = args.rate {
        options = options.with_rate(rate);
    }
    if let Some(id) = &args.replay_id {
        options = options.with_replay_id(id);
    }
    if let Some(by) = &args.by {
        options = options.with_by(by);
    }
    if let Some(to) = &args.to {
        options = options.with_to(to);
    }
    let bar = (!args.dry_run && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} records, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    if let Some(bar) = &bar {
        let bar = bar.clone();
        options = options.with_progress(move |p| {
            bar.set_length(p.total);
            bar.set_position(p.done);
        });
    }
    // Said before anything is produced, so that a killed run (a --fresh one above all,
    // whose id is random) can be resumed.
    options = options.with_started(|s| {
        eprintln!(
            "replay id {} (progress in group {}); if interrupted, resume with --replay-id {}",
            s.replay_id, s.group, s.replay_id
        );
    });
    let result = dlq.replay(&selection, options).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = result.with_context(|| format!("replaying from {}", selection.topic))?;
    print_report(&report)
}

fn print_report(report: &ReplayReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let n = report.replayed.len();
    if report.dry_run {
        writeln!(
            out,
            "dry run: would replay {n} record(s) (replay id {}; {} already replayed under it)",
            report.replay_id, report.already_replayed
        )?;
        for r in &report.replayed {
            writeln!(
                out,
                "{}\t-> {}/{}\tkey {}",
                safe(&r.of.to_string()),
                safe(&r.topic),
                or_dash(r.partition),
                safe(&r.key)
            )?;
        }
        return Ok(());
    }
    if n == 0 && report.already_replayed > 0 {
        writeln!(
            out,
            "nothing to replay: replay {} already replayed {} record(s) of this selection (use --fresh to replay them again)",
            report.replay_id, report.already_replayed
        )?;
    } else if n == 0 {
        writeln!(out, "nothing to replay: no record matches the selection")?;
    } else {
        writeln!(
            out,
            "replayed {n} record(s) (replay id {}, progress in group {}; {} already replayed before, {} of them found past the last commit)",
            report.replay_id, report.group, report.already_replayed, report.found_past_commit
        )?;
    }
    Ok(())
}
