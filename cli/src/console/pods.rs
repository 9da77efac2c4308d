//! The pods page: for each `--worker` probe endpoint, its `/readyz` answer and what its
//! `/metrics` say of the breaker, parked keys, records in flight and handler latency.

use std::collections::BTreeMap;

use axum::extract::State;
use maud::{html, Markup};
use prometheus_parse::{Scrape, Value};
use serde::Deserialize;

use super::layout;
use super::state::Shared;

/// A worker's `/readyz` answer.
#[derive(Debug, Deserialize)]
struct Readiness {
    ready: bool,
    #[serde(default)]
    reasons: Vec<String>,
}

/// What the console shows of a worker's metrics (summed over its label sets).
#[derive(Debug, Default, PartialEq)]
struct PodMetrics {
    /// The breaker's state, the worst over groups: 0 closed, 1 half-open, 2 open.
    breaker: Option<f64>,
    /// Keys parked behind a retry-tier record.
    parked_keys: f64,
    /// Records delivered and not finished.
    in_flight: f64,
    /// Records finished, by outcome.
    outcomes: BTreeMap<String, f64>,
    /// Handler attempts measured.
    attempts: f64,
    /// Their mean duration, in seconds.
    mean_seconds: Option<f64>,
    /// The bucket bound at or below which 99 % of them finished, in seconds.
    p99_seconds: Option<f64>,
}

/// One worker as looked at.
#[derive(Debug)]
struct Pod {
    url: String,
    readiness: Result<Readiness, String>,
    metrics: Result<PodMetrics, String>,
}

/// `GET /pods`.
pub(crate) async fn page(State(console): State<Shared>) -> Markup {
    let looks = console.workers.iter().map(|url| look(&console.http, url));
    let pods = futures::future::join_all(looks).await;
    render(&pods)
}

async fn look(http: &reqwest::Client, url: &str) -> Pod {
    let base = url.trim_end_matches('/');
    let readiness = async {
        let response = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map_err(|e| format!("{base}/readyz: {}", causes(&e)))?;
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{base}/readyz: {}", causes(&e)))?;
        serde_json::from_slice::<Readiness>(&body)
            .map_err(|e| format!("{base}/readyz did not answer as a steadfast worker: {e}"))
    };
    let metrics = async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{base}/metrics: {}", causes(&e)))?
            .text()
            .await
            .map_err(|e| format!("{base}/metrics: {}", causes(&e)))?;
        parse_metrics(&text)
    };
    let (readiness, metrics) = futures::join!(readiness, metrics);
    Pod {
        url: url.to_owned(),
        readiness,
        metrics,
    }
}

/// An error with its causes, `: `-separated (reqwest's own message leaves them out).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The console's view of a Prometheus text exposition.
fn parse_metrics(text: &str) -> Result<PodMetrics, String> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .map_err(|e| format!("the metrics do not parse: {e}"))?;
    let mut m = PodMetrics::default();
    let (mut sum, mut count) = (0.0, 0.0);
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for s in &scrape.samples {
        let scalar = match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            _ => None,
        };
        match (s.metric.as_str(), scalar) {
            ("steadfast_breaker_state", Some(v)) => {
                m.breaker = Some(m.breaker.map_or(v, |b: f64| b.max(v)))
            }
            ("steadfast_parked_keys", Some(v)) => m.parked_keys += v,
            ("steadfast_in_flight_messages", Some(v)) => m.in_flight += v,
            ("steadfast_messages_total", Some(v)) => {
                let outcome = s.labels.get("outcome").unwrap_or("other").to_owned();
                *m.outcomes.entry(outcome).or_default() += v;
            }
            ("steadfast_handler_duration_seconds_sum", Some(v)) => sum += v,
            ("steadfast_handler_duration_seconds_count", Some(v)) => count += v,
            ("steadfast_handler_duration_seconds", None) => {
                if let Value::Histogram(hs) = &s.value {
                    for h in hs {
                        *buckets.entry(h.less_than.to_bits()).or_default() += h.count;
                    }
                }
            }
            _ => {}
        }
    }
    m.attempts = count;
    m.mean_seconds = (count > 0.0).then(|| sum / count);
    // Bounds are positive floats: their bit patterns sort as the numbers do.
    let total = buckets.values().copied().fold(0.0, f64::max);
    m.p99_seconds = (total > 0.0)
        .then(|| {
            buckets
                .iter()
                .find(|(_, c)| **c >= 0.99 * total)
                .map(|(bound, _)| f64::from_bits(*bound))
        })
        .flatten();
    Ok(m)
}

fn breaker_text(state: Option<f64>) -> (&'static str, &'static str) {
    match state {
        None => ("-", "badge"),
        Some(s) if s >= 2.0 => ("open", "badge bad"),
        Some(s) if s >= 1.0 => ("half-open", "badge bad"),
        Some(_) => ("closed", "badge good"),
    }
}

fn seconds(s: Option<f64>) -> String {
    match s {
        None => "-".to_owned(),
        Some(s) if s.is_infinite() => "> largest bucket".to_owned(),
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

fn render(pods: &[Pod]) -> Markup {
    layout::page(
        "Pods",
        html! {
            h1 { "Pods" }
            @if pods.is_empty() {
                p.muted { "No workers given: start the console with --worker http://<pod>:<probe port> (repeatable)." }
            }
            div.pods {
                @for pod in pods {
                    section.pod {
                        h2.mono { (pod.url) }
                        @match &pod.readiness {
                            Ok(r) if r.ready => p { span.badge.good.ready { "ready" } },
                            Ok(r) => {
                                p { span.badge.bad.ready { "not ready" } }
                                ul.reasons { @for reason in &r.reasons { li { (reason) } } }
                            }
                            Err(e) => p.error { (e) },
                        }
                        @match &pod.metrics {
                            Ok(m) => {
                                @let (breaker, class) = breaker_text(m.breaker);
                                table.metrics {
                                    tbody {
                                        tr { th { "Breaker" } td { span class=(class) { (breaker) } } }
                                        tr { th { "Parked keys" } td.num.parked { (m.parked_keys) } }
                                        tr { th { "In flight" } td.num.in-flight { (m.in_flight) } }
                                        tr { th { "Handler attempts" } td.num { (m.attempts) } }
                                        tr { th { "Handler latency (mean)" } td.num { (seconds(m.mean_seconds)) } }
                                        tr { th { "Handler latency (p99 bucket)" } td.num { (seconds(m.p99_seconds)) } }
                                        @for (outcome, n) in &m.outcomes {
                                            tr { th { "Finished: " (outcome) } td.num { (n) } }
                                        }
                                    }
                                }
                            }
                            Err(e) => p.error { (e) },
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_label_sets() {
        let text = "\
# TYPE steadfast_breaker_state gauge
steadfast_breaker_state{group=\"a\"} 0
steadfast_breaker_state{group=\"b\"} 2
# TYPE steadfast_parked_keys gauge
steadfast_parked_keys{group=\"a\"} 3
# TYPE steadfast_in_flight_messages gauge
steadfast_in_flight_messages{group=\"a\"} 7
# TYPE steadfast_messages_total counter
steadfast_messages_total{outcome=\"ok\"} 90
steadfast_messages_total{outcome=\"dead_lettered\"} 10
# TYPE steadfast_handler_duration_seconds histogram
steadfast_handler_duration_seconds_bucket{le=\"0.001\"} 50
steadfast_handler_duration_seconds_bucket{le=\"0.01\"} 99
steadfast_handler_duration_seconds_bucket{le=\"0.1\"} 100
steadfast_handler_duration_seconds_bucket{le=\"+Inf\"} 100
steadfast_handler_duration_seconds_sum 0.5
steadfast_handler_duration_seconds_count 100
";
        let m = parse_metrics(text).expect("parses");
        assert_eq!(m.breaker, Some(2.0));
        assert_eq!(m.parked_keys, 3.0);
        assert_eq!(m.in_flight, 7.0);
        assert_eq!(m.outcomes.get("dead_lettered"), Some(&10.0));
        assert_eq!(m.attempts, 100.0);
        assert_eq!(m.mean_seconds, Some(0.005));
        assert_eq!(m.p99_seconds, Some(0.01));
    }
}
