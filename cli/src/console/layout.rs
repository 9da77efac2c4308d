//! The frame every page shares (navigation, style sheet), the lag chart, and small
//! rendering helpers. maud escapes every interpolated value: nothing read from Kafka or a
//! worker is ever markup.

use axum::http::header;
use axum::response::IntoResponse;
use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The style sheet, embedded in the binary.
const STYLE: &str = include_str!("style.css");

/// Serves the style sheet.
pub(crate) async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
}

/// A whole page: `title` in the head and as the document's heading context, `body` in the
/// frame with the navigation.
pub(crate) fn page(title: &str, body: Markup) -> Markup {
    page_with(title, None, body)
}

/// A page that reloads itself every `refresh_seconds` (a page following a change).
pub(crate) fn page_with(title: &str, refresh_seconds: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = refresh_seconds {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · steadfast console" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                nav {
                    span.brand { "steadfast" }
                    a href="/" { "Overview" }
                    a href="/dlq" { "Dead letters" }
                    a href="/find" { "Find" }
                    a href="/pods" { "Pods" }
                }
                main { (body) }
            }
        }
    }
}

/// Characters left as they are in a path segment: the unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` as one URL path segment.
pub(crate) fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// A time in milliseconds since the epoch as RFC 3339 (UTC), or `-`.
pub(crate) fn time_ms(ms: Option<i64>) -> String {
    ms.map_or_else(
        || "-".to_owned(),
        steadfast::policy::headers::format_time_ms,
    )
}

/// A duration in milliseconds as people read it on an axis: `45 s`, `12 min`.
fn ago(ms: i64) -> String {
    let seconds = ms / 1000;
    if seconds < 120 {
        format!("{seconds} s")
    } else {
        format!("{} min", seconds / 60)
    }
}

pub(crate) use crate::text::or_dash;

/// One line of a chart: a name and its points (milliseconds since the epoch, value).
#[derive(Debug)]
pub(crate) struct Series {
    /// Shown in the legend.
    pub(crate) name: String,
    /// Points, oldest first.
    pub(crate) points: Vec<(i64, i64)>,
}

/// Line colours, in the order series are drawn (the style sheet's `.c0`…`.c7` match).
const COLOURS: [&str; 8] = [
    "#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0969da", "#57606a",
];

/// An inline SVG line chart of `series` up to `now`, over at most `span_ms` (less when the
/// oldest point is younger).
pub(crate) fn chart(series: &[Series], now_ms: i64, span_ms: i64) -> Markup {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 180.0;
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, v)| *v))
        .max()
        .unwrap_or(0)
        .max(1);
    let oldest = series
        .iter()
        .filter_map(|s| s.points.first().map(|(t, _)| *t))
        .min()
        .unwrap_or(now_ms);
    let start = oldest.max(now_ms - span_ms);
    let span_ms = (now_ms - start).max(1_000);
    let x = |t: i64| ((t - start).max(0) as f64 / span_ms.max(1) as f64) * WIDTH;
    let y = |v: i64| HEIGHT - (v as f64 / max as f64) * HEIGHT;
    html! {
        figure.chart {
            svg viewBox=(format!("-60 -10 {} {}", WIDTH + 70.0, HEIGHT + 40.0))
                width="100%" role="img" aria-label="lag over time" {
                line x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) stroke="#8c959f" {}
                line x1="0" y1="0" x2="0" y2=(HEIGHT) stroke="#8c959f" {}
                text x="-6" y="4" text-anchor="end" font-size="11" { (max) }
                text x="-6" y=(HEIGHT) text-anchor="end" font-size="11" { "0" }
                text x="0" y=(HEIGHT + 16.0) font-size="11" { "−" (ago(span_ms)) }
                text x=(WIDTH) y=(HEIGHT + 16.0) text-anchor="end" font-size="11" { "now" }
                @for (i, s) in series.iter().enumerate() {
                    @let points = s.points.iter()
                        .filter(|(t, _)| *t >= start)
                        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                        .collect::<Vec<_>>()
                        .join(" ");
                    polyline points=(points) fill="none" stroke=(COLOURS[i % COLOURS.len()])
                        stroke-width="2" {}
                }
            }
            figcaption {
                @for (i, s) in series.iter().enumerate() {
                    span class=(format!("legend c{}", i % COLOURS.len())) {
                        (s.name)
                    }
                }
            }
        }
    }
}
