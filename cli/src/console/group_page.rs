//! A consumer group: state, members with their assignments, lag per partition, and the lag
//! of the last hour as the console sampled it.

use axum::extract::{Path, State};
use maud::{html, Markup};

use super::error::ConsoleError;
use super::history::{now_ms, SPAN};
use super::layout::{self, or_dash};
use super::state::Shared;
use crate::groups::{describe_view, format_assignment, GroupView};

/// `GET /groups/{group}`.
pub(crate) async fn page(
    State(console): State<Shared>,
    Path(group): Path<String>,
) -> Result<Markup, ConsoleError> {
    let c = console.clone();
    let g = group.clone();
    let view =
        tokio::task::spawn_blocking(move || describe_view(&c.connection, &g, &[], true)).await??;
    if !view.state.exists() && view.partitions.is_empty() {
        return Err(ConsoleError::NotFound(format!("no consumer group {group}")));
    }
    Ok(render(&console, &view))
}

fn render(console: &Shared, view: &GroupView) -> Markup {
    let series = console.history.group_series(&view.group);
    layout::page(
        &format!("Group {}", view.group),
        html! {
            h1 { "Group " span.mono { (view.group) } }
            p {
                "State: " strong #state { (layout::or_dash((!view.state.state.is_empty()).then_some(&view.state.state))) }
                " · members: " (view.state.members.len())
                " · total lag: " strong #total-lag { (view.total_lag()) }
            }
            h2 { "Lag, last hour" }
            @if let Some((at_ms, lag)) = series.first().and_then(|s| s.points.last()) {
                (layout::chart(&series, now_ms(), SPAN.as_millis() as i64))
                p.muted { "Last sample: " span #sampled-lag { (lag) } " at " (layout::time_ms(Some(*at_ms))) "." }
            } @else {
                p.muted { "No sample yet: the console samples lag every few seconds." }
            }
            h2 { "Partitions" }
            table #partitions {
                thead { tr { th { "Topic" } th.num { "Partition" } th.num { "Committed" } th.num { "Log end" } th.num { "Lag" } th { "Owner" } } }
                tbody {
                    @for p in &view.partitions {
                        tr {
                            td { (p.topic) }
                            td.num { (p.partition) }
                            td.num { (or_dash(p.committed)) }
                            td.num { (p.log_end) }
                            td.num.lag { (or_dash(p.lag)) }
                            td.mono { (or_dash(p.owner.as_ref())) }
                        }
                    }
                }
            }
            h2 { "Members" }
            @if view.state.members.is_empty() {
                p.muted { "No members." }
            } @else {
                table #members {
                    thead { tr { th { "Member" } th { "Client id" } th { "Host" } th { "Instance id" } th { "Assigned" } } }
                    tbody {
                        @for m in &view.state.members {
                            tr {
                                td.mono { (m.id) }
                                td.mono { (m.client_id) }
                                td.mono { (m.host) }
                                td.mono { (or_dash(view.instance_ids.get(&m.id))) }
                                td.mono {
                                    @match &m.assignment {
                                        Ok(a) => (format_assignment(a)),
                                        Err(e) => span.error { "undecodable: " (e) },
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(e) = &view.instance_ids_error {
                p.muted { "Instance ids unavailable: " (e) }
            }
        },
    )
}
