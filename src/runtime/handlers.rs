//! Several handlers in one worker: each runs as a worker of its own (its consumer group, its
//! topic or topic pattern, bounds, retry policy, tiers, dead-letter topic and policies),
//! side by side on the same runtime, under one shutdown and one metrics and health endpoint.
//! One handler's stall (its breaker open, its keys parked) pauses only its own partitions;
//! an error that stops one stops them all.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::endpoint::{bind, serve, ProbeSet};
use super::stats::WorkerStats;
use crate::config::{ConfigError, WorkerConfig};
use crate::error::WorkerError;
use crate::observe::{self, Probe, Readiness};

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
    /// Its name in `/readyz`: `<group>/<topic>`, or `<group>/<pattern>`.
    fn label(&self) -> String;
    /// Runs the handler until `shutdown`, its probes in `probes`; a pattern's handler never
    /// reads a topic of `excluded` (the worker's dead-letter topics).
    fn run_in(
        self: Box<Self>,
        shutdown: CancellationToken,
        probes: Arc<ProbeSet>,
        excluded: Arc<BTreeSet<String>>,
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
/// them (a misspelt name would be ignored silently), each takes its table, no two join the
/// same consumer group (their rebalances would hold each other up), and all have the first
/// one's endpoint address (the endpoint is the worker's).
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
    let listen = |s: &&mut dyn Section| s.config().observe.listen.clone();
    if let Some(first) = sections.first().map(listen) {
        if sections.iter().any(|s| listen(s) != first) {
            return Err(ConfigError::Invalid {
                key: "observe.listen",
                reason: "the metrics and health endpoint is the worker's, for all its handlers: set it once, before the first `.handler(..)`".to_owned(),
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
    // Every handler is "starting" until its own probe takes its place, so the worker is not
    // ready while one has not begun.
    for section in &sections {
        probes.add(section.label(), Arc::new(Starting));
    }
    let _stop_endpoint = endpoint.map(|listener| serve(listener, probes.clone()));
    // A pattern never reads another handler's dead-letter topic.
    let excluded: Arc<BTreeSet<String>> = Arc::new(
        sections
            .iter()
            .filter_map(|s| s.config().dead_letter_topic.clone())
            .collect(),
    );
    let stop_all = shutdown.child_token();
    let mut running = JoinSet::new();
    for section in sections {
        let name = section.name();
        let run = section.run_in(stop_all.clone(), probes.clone(), excluded.clone());
        running.spawn(async move { (name, run.await) });
    }
    Outcome::default().finish(running, &stop_all).await
}

/// What a handler's task (or a topic's, under a pattern) ended with: its name and result.
pub(crate) type Done = (&'static str, Result<WorkerStats, WorkerError>);

/// What the tasks of a worker's handlers ended with, gathered as they end.
#[derive(Default)]
pub(crate) struct Outcome {
    stats: WorkerStats,
    first_error: Option<WorkerError>,
    panicked: Option<Box<dyn std::any::Any + Send>>,
}

impl Outcome {
    /// Takes the end of one task: its stats are added; an error (the first is kept) or a
    /// panic cancels `stop_all`, so the others drain, commit and stop.
    pub(crate) fn take(&mut self, done: Result<Done, JoinError>, stop_all: &CancellationToken) {
        match done {
            Ok((_, Ok(one))) => self.stats.add(&one),
            Ok((name, Err(e))) => {
                if self.first_error.is_none() {
                    tracing::error!(handler = name, error = %e, "a handler stopped with an error: stopping the others");
                    self.first_error = Some(e);
                }
                stop_all.cancel();
            }
            Err(e) => {
                stop_all.cancel();
                if e.is_panic() {
                    if self.panicked.is_none() {
                        self.panicked = Some(e.into_panic());
                    }
                } else {
                    tracing::error!(error = %e, "a handler's task was cancelled");
                }
            }
        }
    }

    /// Waits for every task of `running` (see [`Self::take`]); returns the stats added up, or
    /// the first error, once all have stopped; a panic in one is carried on then.
    pub(crate) async fn finish(
        mut self,
        mut running: JoinSet<Done>,
        stop_all: &CancellationToken,
    ) -> Result<WorkerStats, WorkerError> {
        while let Some(done) = running.join_next().await {
            self.take(done, stop_all);
        }
        if let Some(panic) = self.panicked {
            std::panic::resume_unwind(panic);
        }
        self.first_error.map_or(Ok(self.stats), Err)
    }
}

/// The probe of a handler (or a pattern's topic) that has not started: not ready.
pub(crate) struct Starting;

impl Probe for Starting {
    fn readiness(&self) -> Readiness {
        Readiness {
            ready: false,
            reasons: vec!["starting".to_owned()],
            ..Readiness::default()
        }
    }

    fn refresh(&self) {}
}
