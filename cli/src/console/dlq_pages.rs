//! The dead-letter browser: the CLI's filters over a dead-letter topic, a record with every
//! provenance header decoded, and replay of a selection (a dry-run preview, an explicit
//! confirmation, then a page that follows the progress).

use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use steadfast::dlq::{DlqRecord, ErrorClass, ReplayOptions, ReplayReport, Selection, Shown};

use super::cluster;
use super::error::ConsoleError;
use super::layout::{self, or_dash, segment, time_ms};
use super::state::Shared;
use crate::text::cut;
use crate::time::parse_rfc3339_ms;

/// Rows the list shows at most (the count says how many matched).
const SHOWN: usize = 500;

/// The filters of the list and of a replay, as the form sends them (empty means unset).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub(crate) struct Filters {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    error_class: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    original_topic: String,
    #[serde(default)]
    original_partition: String,
    #[serde(default)]
    original_offset_from: String,
    #[serde(default)]
    original_offset_until: String,
}

/// The error classes a filter can name.
const CLASSES: [&str; 5] = ["transient", "permanent", "decode", "panic", "timeout"];

impl Filters {
    /// The selection these filters make, or what is wrong with them.
    fn selection(&self) -> Result<Selection, ConsoleError> {
        let time = |name: &str, text: &str| -> Result<Option<i64>, ConsoleError> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            parse_rfc3339_ms(text)
                .map(Some)
                .map_err(|e| ConsoleError::BadRequest(format!("{name}: {e}")))
        };
        fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<Option<T>, ConsoleError> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            text.parse()
                .map(Some)
                .map_err(|_| ConsoleError::BadRequest(format!("{name}: `{text}` is not a number")))
        }
        let mut s = Selection::new(self.topic.trim())
            .with_failed_between(time("from", &self.from)?, time("until", &self.until)?)
            .with_original_offsets(
                number("original offset from", &self.original_offset_from)?,
                number("original offset until", &self.original_offset_until)?,
            );
        if !self.key.is_empty() {
            s = s.with_key(self.key.clone().into_bytes());
        }
        let class = self.error_class.trim();
        if !class.is_empty() {
            let parsed: ErrorClass = class.parse().unwrap_or(ErrorClass::Other(class.to_owned()));
            s = s.with_error_class(parsed);
        }
        if !self.original_topic.trim().is_empty() {
            s = s.with_original_topic(self.original_topic.trim());
        }
        if let Some(p) = number("original partition", &self.original_partition)? {
            s = s.with_original_partition(p);
        }
        s.validate()?;
        Ok(s)
    }

    /// These filters as a query string (unset ones left out).
    fn query(&self) -> String {
        let pairs = [
            ("topic", &self.topic),
            ("key", &self.key),
            ("error_class", &self.error_class),
            ("from", &self.from),
            ("until", &self.until),
            ("original_topic", &self.original_topic),
            ("original_partition", &self.original_partition),
            ("original_offset_from", &self.original_offset_from),
            ("original_offset_until", &self.original_offset_until),
        ];
        let set: Vec<(&str, &String)> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        serde_urlencoded::to_string(set).unwrap_or_default()
    }

    /// The filters as hidden fields of a form.
    fn hidden(&self) -> Markup {
        html! {
            input type="hidden" name="topic" value=(self.topic);
            input type="hidden" name="key" value=(self.key);
            input type="hidden" name="error_class" value=(self.error_class);
            input type="hidden" name="from" value=(self.from);
            input type="hidden" name="until" value=(self.until);
            input type="hidden" name="original_topic" value=(self.original_topic);
            input type="hidden" name="original_partition" value=(self.original_partition);
            input type="hidden" name="original_offset_from" value=(self.original_offset_from);
            input type="hidden" name="original_offset_until" value=(self.original_offset_until);
        }
    }

    /// The filter form, filled in.
    fn form(&self) -> Markup {
        html! {
            form.filters #filters method="get" action="/dlq" {
                label { "Dead-letter topic" input name="topic" value=(self.topic) required; }
                label { "Key" input name="key" value=(self.key); }
                label { "Error class"
                    select name="error_class" {
                        option value="" { "any" }
                        @for c in CLASSES {
                            option value=(c) selected[self.error_class == c] { (c) }
                        }
                    }
                }
                label { "Failed from (RFC 3339)" input name="from" value=(self.from) placeholder="2026-12-01T00:00:00Z"; }
                label { "Failed until" input name="until" value=(self.until); }
                label { "Original topic" input name="original_topic" value=(self.original_topic); }
                label { "Original partition" input name="original_partition" value=(self.original_partition) size="4"; }
                label { "Original offset from" input name="original_offset_from" value=(self.original_offset_from) size="8"; }
                label { "Original offset until" input name="original_offset_until" value=(self.original_offset_until) size="8"; }
                button type="submit" { "Filter" }
            }
        }
    }
}

/// `GET /dlq`: the dead-letter topics, or one topic's records that pass the filters.
pub(crate) async fn list(
    State(console): State<Shared>,
    Query(filters): Query<Filters>,
) -> Result<Markup, ConsoleError> {
    if filters.topic.trim().is_empty() {
        let c = console.clone();
        let topics = tokio::task::spawn_blocking(move || cluster::topics(&c.connection)).await??;
        let dead_letters: Vec<_> = topics.into_iter().filter(|t| t.is_dead_letter()).collect();
        return Ok(layout::page(
            "Dead letters",
            html! {
                h1 { "Dead letters" }
                (filters.form())
                @if dead_letters.is_empty() {
                    p.muted { "No dead-letter topics (named <topic>.dlq); give another topic above." }
                } @else {
                    table #dead-letters {
                        thead { tr { th { "Topic" } th.num { "Records" } } }
                        tbody {
                            @for t in &dead_letters {
                                tr {
                                    td { a href=(format!("/dlq?{}", serde_urlencoded::to_string([("topic", &t.name)]).unwrap_or_default())) { (t.name) } }
                                    td.num { (t.records) }
                                }
                            }
                        }
                    }
                }
            },
        ));
    }
    let selection = filters.selection()?;
    let records = console.dlq.list(&selection).await?;
    Ok(render_list(&console, &filters, &records))
}

fn render_list(console: &Shared, filters: &Filters, records: &[DlqRecord]) -> Markup {
    layout::page(
        &format!("Dead letters of {}", filters.topic),
        html! {
            h1 { "Dead letters: " span.mono { (filters.topic) } }
            (filters.form())
            p #matched { (records.len()) " record(s) match" @if records.len() > SHOWN { " (the first " (SHOWN) " shown)" } "." }
            @if !records.is_empty() {
                form #replay method="post" action="/dlq/replay/preview" {
                    input type="hidden" name="form" value=(console.auth.form_token());
                    (filters.hidden())
                    button type="submit" { "Replay these " (records.len()) " record(s)…" }
                    span.muted { " A preview comes first: nothing is produced until you confirm." }
                }
                table #records {
                    thead { tr { th { "Record" } th { "Key" } th { "Class" } th { "Original" } th.num { "Attempts" } th { "Last failure" } th { "Message" } } }
                    tbody {
                        @for r in records.iter().take(SHOWN) {
                            tr {
                                td { a href=(record_link(r)) { (r.partition) "/" (r.offset) } }
                                td.mono { (or_dash(r.key_shown().map(|k| k.display()))) }
                                td { (or_dash(r.error_class.as_ref())) }
                                td.mono { (original(r)) }
                                td.num { (or_dash(r.attempts)) }
                                td { (time_ms(r.last_failure_at_ms)) }
                                td { (cut(r.error_message.as_deref().unwrap_or("-"), 80)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn record_link(r: &DlqRecord) -> String {
    format!(
        "/dlq/record/{}/{}/{}",
        segment(&r.topic),
        r.partition,
        r.offset
    )
}

fn original(r: &DlqRecord) -> String {
    match &r.original {
        Some(o) => format!("{}/{}/{}", o.topic, or_dash(o.partition), or_dash(o.offset)),
        None => "-".to_owned(),
    }
}

/// `GET /dlq/record/{topic}/{partition}/{offset}`: one record, every header decoded.
pub(crate) async fn record(
    State(console): State<Shared>,
    Path((topic, partition, offset)): Path<(String, i32, i64)>,
) -> Result<Markup, ConsoleError> {
    let r = console.dlq.show(&topic, partition, offset).await?;
    let original = r.original.as_ref();
    let shown = |s: Option<Shown>| or_dash(s.map(|s| s.display()));
    let rows: Vec<(&str, String)> = vec![
        ("error class", or_dash(r.error_class.as_ref())),
        ("error message", or_dash(r.error_message.as_ref())),
        ("attempts", or_dash(r.attempts)),
        ("first failure", time_ms(r.first_failure_at_ms)),
        ("last failure", time_ms(r.last_failure_at_ms)),
        ("group", or_dash(r.group.as_ref())),
        ("original topic", or_dash(original.map(|o| o.topic.clone()))),
        (
            "original partition",
            or_dash(original.and_then(|o| o.partition)),
        ),
        ("original offset", or_dash(original.and_then(|o| o.offset))),
        (
            "original timestamp",
            time_ms(original.and_then(|o| o.timestamp_ms)),
        ),
        ("timestamp", time_ms(r.timestamp_ms)),
    ];
    let back = Filters {
        topic: topic.clone(),
        ..Filters::default()
    };
    Ok(layout::page(
        &format!("Record {}", r.position()),
        html! {
            h1 { "Record " span.mono { (r.position().to_string()) } }
            p { a href=(format!("/dlq?{}", back.query())) { "All records of " (topic) } }
            h2 { "Provenance" }
            table #provenance {
                tbody {
                    @for (name, value) in &rows {
                        tr { th { (name) } td.mono { (value) } }
                    }
                }
            }
            h2 { "Key" }
            pre #key { (shown(r.key_shown())) }
            h2 { "Value" }
            pre #value { (shown(r.value_shown())) }
            h2 { "Other headers" }
            table #headers {
                tbody {
                    @for (name, value) in r.other_headers() {
                        tr {
                            th.mono { (name) }
                            td.mono { (value.map_or_else(|| "(null)".to_owned(), |v| Shown::of(v).display())) }
                        }
                    }
                }
            }
        },
    ))
}

/// A replay form: the form token, the filters, and for the start the replay id and the
/// confirmation.
#[derive(Debug, Deserialize)]
pub(crate) struct ReplayForm {
    form: String,
    #[serde(flatten)]
    filters: Filters,
    #[serde(default)]
    replay_id: String,
    #[serde(default)]
    confirm: String,
    /// The previewed plan's digest: the replay starts only if it still holds.
    #[serde(default)]
    plan: String,
    /// At most this many records a second (empty: no limit).
    #[serde(default)]
    rate: String,
}

impl ReplayForm {
    /// The rate limit given, if any.
    fn rate(&self) -> Result<Option<std::num::NonZeroU32>, ConsoleError> {
        let text = self.rate.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            ConsoleError::BadRequest(format!(
                "rate: `{text}` is not a number of records a second above 0"
            ))
        })
    }
}

/// A digest of what a dry run would replay (each record and where it goes), so that a
/// confirmation replays what its preview showed: records dead-lettered (or replayed) since
/// make the start refuse.
fn plan_digest(report: &ReplayReport) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    report.replay_id.hash(&mut hasher);
    for r in &report.replayed {
        r.of.hash(&mut hasher);
        r.topic.hash(&mut hasher);
        r.partition.hash(&mut hasher);
    }
    format!("{}:{:016x}", report.replayed.len(), hasher.finish())
}

/// A dry run of `selection`.
async fn dry_run(console: &Shared, selection: &Selection) -> Result<ReplayReport, ConsoleError> {
    Ok(console
        .dlq
        .replay(selection, ReplayOptions::default().with_dry_run(true))
        .await?)
}

/// `POST /dlq/replay/preview`: a dry run of the selection, with the confirmation form.
pub(crate) async fn preview(
    State(console): State<Shared>,
    Form(form): Form<ReplayForm>,
) -> Result<Markup, ConsoleError> {
    console.auth.check_form(&form.form)?;
    let selection = form.filters.selection()?;
    let report = dry_run(&console, &selection).await?;
    Ok(render_preview(&console, &form.filters, &report))
}

fn render_preview(console: &Shared, filters: &Filters, report: &ReplayReport) -> Markup {
    let n = report.replayed.len();
    layout::page(
        "Replay preview",
        html! {
            h1 { "Replay preview" }
            p #preview-summary {
                "Would replay " strong #would-replay { (n) } " record(s) of " span.mono { (filters.topic) }
                " (" (report.already_replayed) " already replayed under replay id "
                span.mono #replay-id { (report.replay_id) } ")."
            }
            p.muted { "Each record goes back to its original topic once in total: a second replay of this selection replays nothing." }
            @if n > 0 {
                table #preview {
                    thead { tr { th { "Dead-letter record" } th { "To" } th { "Key" } } }
                    tbody {
                        @for r in report.replayed.iter().take(SHOWN) {
                            tr {
                                td.mono { (r.of.to_string()) }
                                td.mono { (r.topic) "/" (or_dash(r.partition)) }
                                td.mono { (r.key) }
                            }
                        }
                    }
                }
            }
            form #confirm method="post" action="/dlq/replay" {
                input type="hidden" name="form" value=(console.auth.form_token());
                input type="hidden" name="replay_id" value=(report.replay_id);
                input type="hidden" name="plan" value=(plan_digest(report));
                (filters.hidden())
                label { input type="checkbox" name="confirm" value="yes" required; " Produce these " (n) " record(s) to their original topics" }
                " "
                label { "at most " input type="number" name="rate" min="1" size="6" placeholder="any"; " a second" }
                " "
                button.danger type="submit" { "Replay" }
            }
            p { a href=(format!("/dlq?{}", filters.query())) { "Back without replaying" } }
        },
    )
}

/// `POST /dlq/replay`: starts the confirmed replay and sends the browser to its progress.
pub(crate) async fn start(
    State(console): State<Shared>,
    Form(form): Form<ReplayForm>,
) -> Result<Response, ConsoleError> {
    console.auth.check_form(&form.form)?;
    if form.confirm != "yes" {
        return Err(ConsoleError::BadRequest(
            "the replay was not confirmed: tick the box on the preview".to_owned(),
        ));
    }
    if form.replay_id.trim().is_empty() {
        return Err(ConsoleError::BadRequest(
            "no replay id: start from the preview".to_owned(),
        ));
    }
    let selection = form.filters.selection()?;
    let rate = form.rate()?;
    let now = dry_run(&console, &selection).await?;
    if now.replay_id != form.replay_id.trim() || plan_digest(&now) != form.plan {
        return Err(ConsoleError::Conflict(format!(
            "the selection changed since the preview (it would now replay {} record(s)): \
             preview it again",
            now.replayed.len()
        )));
    }
    let job = console.replays.start(
        &console.dlq,
        selection,
        form.replay_id.trim().to_owned(),
        rate,
        form.filters.query(),
    );
    Ok(Redirect::to(&format!("/replays/{}", job.id)).into_response())
}

/// `GET /replays/{job}`: a replay's progress (the page reloads itself while it runs) and,
/// once finished, its report.
pub(crate) async fn progress(
    State(console): State<Shared>,
    Path(job): Path<u64>,
) -> Result<Markup, ConsoleError> {
    let job = console
        .replays
        .get(job)
        .ok_or_else(|| ConsoleError::NotFound(format!("no replay {job} in this console")))?;
    let outcome = job
        .outcome
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let (done, total) = (
        job.done.load(Ordering::Relaxed),
        job.total.load(Ordering::Relaxed),
    );
    let state = match &outcome {
        None => "running",
        Some(Ok(_)) => "finished",
        Some(Err(_)) => "failed",
    };
    Ok(layout::page_with(
        "Replay",
        outcome.is_none().then_some(1),
        html! {
            h1 { "Replay " span.mono { (job.replay_id) } }
            p { "State: " strong #replay-state { (state) } }
            @if outcome.is_none() && total == 0 {
                p.muted #replay-reading { "Reading the selection…" }
            } @else {
                p { progress #replay-progress max=(total.max(1)) value=(done) {} " " span #replay-count { (done) " / " (total) } " record(s)" }
            }
            @match &outcome {
                Some(Ok(report)) => p #replay-summary {
                    "Replayed " strong #replayed { (report.replayed.len()) } " record(s); "
                    (report.already_replayed) " already replayed before"
                    @if report.found_past_commit > 0 { " (" (report.found_past_commit) " found past the last commit)" }
                    "."
                },
                Some(Err(e)) => p.error #replay-error { (e) " — the replay can be resumed: confirm the same selection again." },
                None => p.muted { "This page follows the replay." },
            }
            p { a href=(format!("/dlq?{}", job.query)) { "Back to the dead letters" } }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_make_the_cli_selection_and_refuse_bad_input() {
        let filters = Filters {
            topic: "orders.dlq".into(),
            key: "k-1".into(),
            error_class: "permanent".into(),
            from: "2026-12-01T00:00:00Z".into(),
            original_partition: "2".into(),
            ..Filters::default()
        };
        let s = filters.selection().expect("valid");
        assert_eq!(s.topic, "orders.dlq");
        assert_eq!(s.key.as_deref(), Some(&b"k-1"[..]));
        assert_eq!(s.error_class, Some(ErrorClass::Permanent));
        assert_eq!(s.failed_from_ms, Some(1_796_083_200_000));
        assert_eq!(s.original_partition, Some(2));
        assert_eq!(
            filters.query(),
            "topic=orders.dlq&key=k-1&error_class=permanent&from=2026-12-01T00%3A00%3A00Z&original_partition=2"
        );
        for bad in [
            Filters {
                topic: "t".into(),
                from: "yesterday".into(),
                ..Filters::default()
            },
            Filters {
                topic: "t".into(),
                original_partition: "x".into(),
                ..Filters::default()
            },
            Filters::default(),
        ] {
            assert!(
                matches!(
                    bad.selection(),
                    Err(ConsoleError::BadRequest(_) | ConsoleError::Dlq(_))
                ),
                "{bad:?}"
            );
        }
    }
}
