//! The worker's side of the HTTP endpoint: its listener and task; readiness from the
//! dispatcher's view and what the broker client and the stores reported; gauges refreshed
//! before each scrape; consumer lag and broker state taken from librdkafka's statistics.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::statistics::Statistics;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::dispatch::TopicPartition;
use super::shared::Shared;
use crate::error::WorkerError;
use crate::observe::{self, Health, Meters, Probe, Readiness, WorkerView};

/// Answers the probes of one worker, from its start on: until the worker consumes, it is
/// not ready (starting), with what the stores reported meanwhile.
pub(crate) struct WorkerProbe {
    /// Set once the worker consumes.
    pub(crate) shared: Arc<OnceLock<Arc<Shared>>>,
    /// What the broker client and the stores reported.
    pub(crate) health: Arc<Health>,
    /// Where readiness is recorded as a gauge.
    pub(crate) meters: Meters,
    /// How long a partition with work waiting may make no progress before the worker is not
    /// ready.
    pub(crate) stall_after: Duration,
}

impl Probe for WorkerProbe {
    fn readiness(&self) -> Readiness {
        let now = Instant::now();
        let view = match self.shared.get() {
            Some(shared) => shared.view(now),
            None => WorkerView::starting(),
        };
        let readiness = self.health.readiness(&view, self.stall_after, now);
        self.meters
            .ready
            .set(if readiness.ready { 1.0 } else { 0.0 });
        readiness
    }

    fn refresh(&self) {
        if let Some(shared) = self.shared.get() {
            refresh_gauges(shared);
        }
        // Readiness is a gauge too.
        let _ = self.readiness();
    }
}

/// The endpoint's listener: `handed` over by the application, or one bound to `address`
/// (`[observe] listen`); `None` without either.
pub(crate) fn bind(
    handed: Option<std::net::TcpListener>,
    address: Option<&str>,
) -> Result<Option<tokio::net::TcpListener>, WorkerError> {
    let failed = |address: String| move |source| WorkerError::Endpoint { address, source };
    let listener = match (handed, address) {
        (Some(listener), _) => listener,
        (None, Some(address)) => {
            std::net::TcpListener::bind(address).map_err(failed(address.to_owned()))?
        }
        (None, None) => return Ok(None),
    };
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    listener
        .set_nonblocking(true)
        .map_err(failed(address.clone()))?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(failed(address))?;
    Ok(Some(listener))
}

/// The probes of a worker of several handlers, or of a topic pattern: one per handler's
/// topic (and one per pattern's search), added as they start; ready when every one is.
#[derive(Default)]
pub(crate) struct ProbeSet {
    members: parking_lot::Mutex<Vec<(String, Arc<dyn Probe>)>>,
}

impl ProbeSet {
    /// Adds the probe of `name` (`<group>/<topic>`), in place of the one of that name
    /// before it (a "starting" placeholder).
    pub(crate) fn add(&self, name: String, probe: Arc<dyn Probe>) {
        let mut members = self.members.lock();
        match members.iter_mut().find(|(n, _)| *n == name) {
            Some(member) => member.1 = probe,
            None => members.push((name, probe)),
        }
    }

    /// The members, copied out so that no probe is asked under the lock.
    fn members(&self) -> Vec<(String, Arc<dyn Probe>)> {
        self.members.lock().clone()
    }
}

impl Probe for ProbeSet {
    fn readiness(&self) -> Readiness {
        let members = self.members();
        let mut all = Readiness {
            ready: !members.is_empty(),
            ..Readiness::default()
        };
        if members.is_empty() {
            all.reasons
                .push("starting: no handler has started yet".to_owned());
        }
        for (name, probe) in members {
            let one = probe.readiness();
            if !one.ready {
                all.ready = false;
                all.reasons
                    .extend(one.reasons.iter().map(|reason| format!("{name}: {reason}")));
            }
            all.handlers.insert(name, one);
        }
        all
    }

    fn refresh(&self) {
        for (_, probe) in self.members() {
            probe.refresh();
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the guard is dropped.
pub(crate) fn serve(listener: tokio::net::TcpListener, probe: Arc<dyn Probe>) -> DropGuard {
    let stop = CancellationToken::new();
    let address = listener.local_addr().ok();
    let until = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = observe::serve(listener, probe, until).await {
            tracing::error!(error = %e, "the metrics and health endpoint stopped");
        }
    });
    tracing::info!(?address, "serving /metrics, /healthz and /readyz");
    stop.drop_guard()
}

/// Sets the in-flight, running, parked keys, parked messages and assigned gauges from the
/// dispatcher.
pub(crate) fn refresh_gauges(shared: &Shared) {
    let g = shared.gauges();
    let m = &shared.meters;
    m.in_flight.set(g.in_flight as f64);
    m.running.set(g.running as f64);
    m.parked.set(g.parked as f64);
    m.parked_messages.set(g.parked_messages as f64);
    m.assigned.set(g.assigned as f64);
}

/// Sets the lag of the assigned retry-tier partitions from their log end and the offset their
/// commit stands at. librdkafka's statistics report none for a partition paused since it was
/// assigned (a tier partition holding a record until it is due), so they are read here, on a
/// blocking thread, with `reader` (a client of the worker's settings that joins no group).
pub(crate) fn refresh_tier_lag(
    shared: &Arc<Shared>,
    reader: &Arc<rdkafka::consumer::BaseConsumer>,
) {
    let tiers = shared.tier_watermarks();
    if tiers.is_empty() {
        return;
    }
    let (state, reader) = (shared.clone(), reader.clone());
    let task = shared.runtime.spawn_blocking(move || {
        use rdkafka::consumer::Consumer as _;
        for ((topic, partition), watermark) in tiers {
            match reader.fetch_watermarks(&topic, partition, Duration::from_secs(5)) {
                Ok((low, high)) => {
                    let from = watermark.unwrap_or(low).max(low);
                    state.meters.lag(&topic, partition, (high - from).max(0));
                }
                Err(e) => {
                    tracing::debug!(%topic, partition, error = %e, "reading a retry tier's log end failed");
                }
            }
        }
    });
    shared.helpers.track(task);
}

/// Takes consumer lag per assigned partition and broker state from a statistics report
/// (retry-tier partitions: [`refresh_tier_lag`]).
pub(crate) fn take_statistics(shared: &Shared, statistics: &Statistics) {
    let now = Instant::now();
    let assigned = shared.assigned();
    let tiers: Vec<TopicPartition> = shared
        .tier_watermarks()
        .into_iter()
        .map(|(tp, _)| tp)
        .collect();
    for (topic, partition) in &assigned {
        let Some(p) = statistics
            .topics
            .get(&topic[..])
            .and_then(|t| t.partitions.get(partition))
        else {
            continue;
        };
        let lag = if p.consumer_lag >= 0 {
            p.consumer_lag
        } else if p.hi_offset >= 0 {
            // Nothing committed yet: everything from the log start lags.
            p.hi_offset - p.lo_offset.max(0)
        } else {
            continue;
        };
        if !tiers.contains(&(topic.clone(), *partition)) {
            shared.meters.lag(topic, *partition, lag);
        }
        // Not yet delivered to the worker: past the fetch position, or fetched and queued in
        // the client. (The fetch position moves past transaction markers; the committed
        // offset does not.)
        let end = if p.ls_offset >= 0 {
            p.ls_offset
        } else {
            p.hi_offset
        };
        let backlog = if p.next_offset >= 0 {
            (end - p.next_offset).max(0) + p.fetchq_cnt.max(0)
        } else {
            lag
        };
        shared.health.set_backlog(topic, *partition, backlog, now);
    }
    shared.health.retain_backlog(&assigned);
    // Brokers learned from metadata have a node id; the bootstrap entries do not count.
    let mut known = statistics
        .brokers
        .values()
        .filter(|b| b.nodeid >= 0)
        .peekable();
    if known.peek().is_some() {
        if known.clone().any(|b| b.state == "UP") {
            shared.health.broker_up();
        } else {
            shared
                .health
                .broker_down("no connection to any broker is up".to_owned());
        }
    }
}
