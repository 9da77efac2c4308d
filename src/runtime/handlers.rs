//! Several handlers in one worker: each runs as a worker of its own (its consumer group, its
//! topic or topic pattern, bounds, retry policy, tiers, dead-letter topic and policies),
//! side by side on the same runtime, under one shutdown and one metrics and health endpoint.
//! One handler's stall (its breaker open, its keys parked) pauses only its own partitions;
//! an error that stops one stops them all.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::endpoint::{bind, serve, ProbeSet};
use super::stats::WorkerStats;
use crate::config::{ConfigError, WorkerConfig};
use crate::error::WorkerError;
use crate::observe;

/// One handler of a worker, its type erased so that handlers of different types run side by
/// side.
pub(crate) trait Section: Send + Sync {
    /// The handler's name, its `#[handler(group = ..)]`: `[handlers.<name>]` names it.
    fn name(&self) -> &'static str;
    /// The handler's settings.
    fn config(&self) -> &WorkerConfig;
    /// The consumer group its consumers join.
    fn group(&self) -> String;
    /// Puts the handler's `[handlers.<name>]` table over its settings and checks them.
    fn prepare(&mut self) -> Result<(), WorkerError>;
    /// Runs the handler until `shutdown`, its probes in `probes`.
    fn run_in(
        self: Box<Self>,
        shutdown: CancellationToken,
        probes: Arc<ProbeSet>,
    ) -> BoxFuture<'static, Result<WorkerStats, WorkerError>>;
}

impl std::fmt::Debug for dyn Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("name", &self.name())
            .field("group", &self.group())
            .finish_non_exhaustive()
    }
}

/// Checks the handlers of one worker together: every `[handlers.<name>]` table names one of
/// them (a misspelt name would be ignored silently), each takes its table, and no two join
/// the same consumer group (their rebalances would hold each other up).
pub(crate) fn prepare_all(sections: &mut [&mut dyn Section]) -> Result<(), WorkerError> {
    let names: BTreeSet<&'static str> = sections.iter().map(|s| s.name()).collect();
    for section in sections.iter() {
        if let Some(unknown) = section
            .config()
            .handlers
            .keys()
            .find(|name| !names.contains(name.as_str()))
        {
            return Err(ConfigError::Parse(format!(
                "[handlers.{unknown}] names no handler of this worker; its handlers are {}",
                names.iter().copied().collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
    }
    let mut groups = BTreeSet::new();
    for section in sections.iter_mut() {
        section.prepare()?;
        let group = section.group();
        if !groups.insert(group.clone()) {
            return Err(ConfigError::Invalid {
                key: "group",
                reason: format!(
                    "two handlers of this worker join the group `{group}`: give each its own (`.group(..)` or `[handlers.<name>] group`), or one's rebalances would wait for the other's drains"
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// Runs `sections` (the first handler first) until `shutdown`, serving one endpoint for all
/// of them on `listener` or the first handler's `[observe] listen`. Returns their stats
/// added up, or the first error one stopped with (the others are stopped then).
pub(crate) async fn run_set(
    sections: Vec<Box<dyn Section>>,
    listener: Option<std::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<WorkerStats, WorkerError> {
    let listen = sections
        .first()
        .and_then(|s| s.config().observe.listen.clone());
    let endpoint = bind(listener, listen.as_deref())?;
    if endpoint.is_some() {
        // Before the first metric handle is made: handles made earlier record nowhere.
        if let Err(why) = observe::metrics::prometheus() {
            tracing::warn!(why, "/metrics will answer 503");
        }
    }
    let probes = Arc::new(ProbeSet::default());
    let _stop_endpoint = endpoint.map(|listener| serve(listener, probes.clone()));
    let stop_all = shutdown.child_token();
    let mut running = JoinSet::new();
    for section in sections {
        let name = section.name();
        let run = section.run_in(stop_all.clone(), probes.clone());
        running.spawn(async move { (name, run.await) });
    }
    join_all(running, &stop_all).await
}

/// Waits for every task of `running`, adding up their stats; the first error cancels
/// `stop_all` and is returned once all have stopped; a panic in one, the same, then carried
/// on.
pub(crate) async fn join_all(
    mut running: JoinSet<(&'static str, Result<WorkerStats, WorkerError>)>,
    stop_all: &CancellationToken,
) -> Result<WorkerStats, WorkerError> {
    let mut stats = WorkerStats::default();
    let mut first_error = None;
    let mut panicked = None;
    while let Some(done) = running.join_next().await {
        match done {
            Ok((_, Ok(one))) => stats.add(&one),
            Ok((name, Err(e))) => {
                if first_error.is_none() {
                    tracing::error!(handler = name, error = %e, "a handler stopped with an error: stopping the others");
                    first_error = Some(e);
                }
                stop_all.cancel();
            }
            Err(e) if e.is_panic() => {
                stop_all.cancel();
                panicked.get_or_insert(e.into_panic());
            }
            Err(e) => {
                tracing::error!(error = %e, "a handler's task was cancelled");
                stop_all.cancel();
            }
        }
    }
    if let Some(panic) = panicked {
        std::panic::resume_unwind(panic);
    }
    first_error.map_or(Ok(stats), Err)
}
