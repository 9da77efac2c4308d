//! The overview: topics (partitions, records, rate), consumer groups (state, members, total
//! lag) and dead-letter topics (records).

use axum::extract::State;
use maud::{html, Markup};

use super::cluster::{self, GroupRow, TopicRow};
use super::error::ConsoleError;
use super::layout::{self, segment};
use super::state::Shared;

/// `GET /`.
pub(crate) async fn page(State(console): State<Shared>) -> Result<Markup, ConsoleError> {
    let c = console.clone();
    let (topics, groups) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            cluster::topics(&c.connection)?,
            cluster::groups(&c.connection)?,
        ))
    })
    .await??;
    Ok(render(&console, &topics, &groups))
}

fn render(console: &Shared, topics: &[TopicRow], groups: &[GroupRow]) -> Markup {
    let latest = console.history.latest();
    let lag_of = |group: &str| {
        latest
            .as_ref()
            .and_then(|s| s.groups.get(group))
            .map(|lags| lags.values().sum::<i64>())
    };
    let dead_letters: Vec<&TopicRow> = topics.iter().filter(|t| t.is_dead_letter()).collect();
    layout::page(
        "Overview",
        html! {
            h1 { "Overview" }
            h2 { "Consumer groups" }
            @if groups.is_empty() {
                p.muted { "No consumer groups." }
            } @else {
                table #groups {
                    thead { tr { th { "Group" } th { "State" } th.num { "Members" } th.num { "Lag" } } }
                    tbody {
                        @for g in groups {
                            tr {
                                td { a href=(format!("/groups/{}", segment(&g.name))) { (g.name) } }
                                td { (layout::or_dash((!g.state.is_empty()).then_some(&g.state))) }
                                td.num { (g.members) }
                                td.num { (layout::or_dash(lag_of(&g.name))) }
                            }
                        }
                    }
                }
                p.muted {
                    "Lag as of the last sample"
                    @if let Some(s) = &latest { " (" (layout::time_ms(Some(s.at_ms))) ")" }
                    "."
                }
            }
            h2 { "Topics" }
            table #topics {
                thead { tr { th { "Topic" } th.num { "Partitions" } th.num { "Records" } th.num { "Rate (msg/s)" } } }
                tbody {
                    @for t in topics {
                        tr {
                            td { (t.name) }
                            td.num { (t.partitions) }
                            td.num { (t.records) }
                            td.num { (console.history.rate(&t.name).map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))) }
                        }
                    }
                }
            }
            h2 { "Dead-letter topics" }
            @if dead_letters.is_empty() {
                p.muted { "No dead-letter topics (named <topic>.dlq)." }
            } @else {
                table #dead-letters {
                    thead { tr { th { "Topic" } th.num { "Records" } } }
                    tbody {
                        @for t in dead_letters {
                            tr {
                                td { a href=(format!("/dlq?{}", serde_urlencoded::to_string([("topic", &t.name)]).unwrap_or_default())) { (t.name) } }
                                td.num { (t.records) }
                            }
                        }
                    }
                }
            }
        },
    )
}
