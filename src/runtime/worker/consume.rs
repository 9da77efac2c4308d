//! The consume loop: records in, pause/resume decisions out, periodic commits; and the
//! shutdown drain that follows it.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::broker::{envelope_of, run_within, TopicNames, Within};
use crate::observe::Meters;
use crate::policy::{Breaker, BreakerPhase};
use crate::runtime::endpoint::{refresh_gauges, refresh_tier_lag};
use crate::runtime::rebalance::{commit_list, WorkerContext};
use crate::runtime::shared::Shared;

use super::queues::{InTurn, PartitionQueue};

/// The worker's consumer.
pub(super) type WorkerConsumer = StreamConsumer<WorkerContext>;

/// How long the in-flight bound may stay reached before every partition is paused so that
/// the loop can keep polling (rebalance callbacks, `max.poll.interval.ms`) without taking
/// records. Shorter stalls just wait for completions: pausing and resuming a partition costs
/// a fetch round trip and the prefetched records.
const STALL_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// How often the loop commits and refreshes what it reports.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    /// Between commits (and gauge refreshes).
    pub(super) commit_interval: Duration,
    /// Between reads of the retry tiers' lag.
    pub(super) lag_interval: Duration,
}

/// The consume loop's state.
pub(super) struct ConsumeLoop<'a> {
    consumer: &'a WorkerConsumer,
    /// The main queue and the split partitions' queues (see `queues`).
    queues: InTurn<'a>,
    committer: Committer,
    shared: &'a Arc<Shared>,
    shutdown: &'a CancellationToken,
    commit_tick: Interval,
    /// The circuit breakers (the handler's and its named dependencies') with their phases.
    breakers: Vec<(Breaker, watch::Receiver<BreakerPhase>)>,
    /// Reads the retry tiers' log ends for their lag (see `refresh_tier_lag`).
    lag_reader: Option<Arc<BaseConsumer>>,
    lag_interval: Duration,
    lag_read_at: Instant,
    /// Since when the in-flight bound has been reached.
    full_since: Option<Instant>,
    topics: TopicNames,
}

impl<'a> ConsumeLoop<'a> {
    /// A loop over `consumer` and the queues of its split `partitions` until `shutdown`, at
    /// `pace`.
    pub(super) fn new(
        consumer: &'a Arc<WorkerConsumer>,
        partitions: &'a [PartitionQueue],
        shared: &'a Arc<Shared>,
        shutdown: &'a CancellationToken,
        pace: Pace,
        breakers: Vec<Breaker>,
        lag_reader: Option<Arc<BaseConsumer>>,
    ) -> Self {
        let mut commit_tick = tokio::time::interval(pace.commit_interval);
        commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ConsumeLoop {
            consumer: consumer.as_ref(),
            queues: InTurn::new(consumer, partitions),
            committer: Committer {
                consumer: consumer.clone(),
                running: None,
            },
            shared,
            shutdown,
            commit_tick,
            breakers: breakers
                .into_iter()
                .map(|breaker| {
                    let phase = breaker.watch();
                    (breaker, phase)
                })
                .collect(),
            lag_reader,
            lag_interval: pace.lag_interval,
            lag_read_at: Instant::now(),
            full_since: None,
            topics: TopicNames::trusting(shared.tier_topics()),
        }
    }

    /// Runs until the shutdown token is cancelled.
    pub(super) async fn run(&mut self) {
        loop {
            let (full, stalled) = self.shared.full_and_stalled();
            if full && !stalled {
                if self.wait_while_full().await.is_break() {
                    return;
                }
                continue;
            }
            if !full {
                self.full_since = None;
                if stalled {
                    self.shared.set_stalled(false);
                    apply_control(self.consumer, self.shared);
                }
            }
            if self.step().await.is_break() {
                return;
            }
        }
    }

    /// With the in-flight bound reached: takes no record, waits for a completion, a decision,
    /// a commit tick, or the stall deadline (then pauses every partition).
    async fn wait_while_full(&mut self) -> ControlFlow<()> {
        let (consumer, shared) = (self.consumer, self.shared);
        let since = *self.full_since.get_or_insert_with(Instant::now);
        let stall_at = since + STALL_BEFORE_PAUSE;
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return ControlFlow::Break(()),
            _ = shared.woken() => apply_control(consumer, shared),
            Some(open) = breaker_change(&mut self.breakers, &shared.meters) => {
                shared.set_breaker_open(open);
                apply_control(consumer, shared);
            }
            _ = self.commit_tick.tick() => self.committer.commit(shared),
            _ = tokio::time::sleep_until(stall_at.into()) => {
                shared.set_stalled(true);
                apply_control(consumer, shared);
            }
        }
        ControlFlow::Continue(())
    }

    /// Takes the next record, decision, breaker change or commit tick.
    async fn step(&mut self) -> ControlFlow<()> {
        let (consumer, shared) = (self.consumer, self.shared);
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return ControlFlow::Break(()),
            _ = shared.woken() => apply_control(consumer, shared),
            Some(open) = breaker_change(&mut self.breakers, &shared.meters) => {
                shared.set_breaker_open(open);
                apply_control(consumer, shared);
            }
            _ = self.commit_tick.tick() => self.on_tick(),
            received = self.queues.recv() => return self.on_received(received).await,
        }
        ControlFlow::Continue(())
    }

    /// A record or an error from a queue: a record goes to the dispatcher; after an error the
    /// loop waits a little before it polls again.
    async fn on_received(
        &mut self,
        received: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> ControlFlow<()> {
        match received {
            Ok(message) => self.on_record(message),
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = self.shutdown.cancelled() => return ControlFlow::Break(()),
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// A commit tick: commits, refreshes the gauges, reports keys parked too long, and reads
    /// the retry tiers' lag when it is time.
    fn on_tick(&mut self) {
        self.committer.commit(self.shared);
        refresh_gauges(self.shared);
        self.shared.report_long_parked(Instant::now());
        self.shared.refetch_idle();
        apply_control(self.consumer, self.shared);
        if let Some(reader) = &self.lag_reader {
            if self.lag_read_at.elapsed() >= self.lag_interval {
                self.lag_read_at = Instant::now();
                refresh_tier_lag(self.shared, reader);
            }
        }
    }

    /// Waits for the commit under way, if any (before the final commit at shutdown).
    pub(super) async fn finish_commits(&mut self) {
        if let Some(running) = self.committer.running.take() {
            let _ = running.await;
        }
    }

    /// A delivered record: into the dispatcher, then its decisions carried out.
    fn on_record(&mut self, message: BorrowedMessage<'_>) {
        self.shared.health.broker_up();
        let envelope = envelope_of(&message, &mut self.topics);
        drop(message);
        self.shared.meters.consumed();
        self.shared.accept(envelope);
        apply_control(self.consumer, self.shared);
    }
}

/// The next change of the breakers' phases: `Some(true)` when one is open, `Some(false)` when
/// none is (they half-opened or closed); never resolves without a breaker (or once they are
/// all gone). An open breaker is moved to half-open when its open period passes, whether or
/// not a call asks (the partitions it paused bring none).
async fn breaker_change(
    breakers: &mut Vec<(Breaker, watch::Receiver<BreakerPhase>)>,
    meters: &Meters,
) -> Option<bool> {
    enum Woken {
        Changed,
        Gone(usize),
        Probe,
    }
    loop {
        if breakers.is_empty() {
            return std::future::pending().await;
        }
        let probes_at = breakers.iter().filter_map(|(b, _)| b.probes_at()).min();
        let woken = {
            let changes = breakers.iter_mut().map(|(_, rx)| Box::pin(rx.changed()));
            let probe = async {
                match probes_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                (changed, at, _) = futures::future::select_all(changes) => match changed {
                    Ok(()) => Woken::Changed,
                    Err(_) => Woken::Gone(at),
                },
                () = probe => Woken::Probe,
            }
        };
        match woken {
            Woken::Changed => break,
            Woken::Gone(at) => {
                breakers.remove(at);
            }
            // Publishes the half-open phase: seen as a change next time round.
            Woken::Probe => breakers.iter().for_each(|(b, _)| b.advance()),
        }
    }
    let phases: Vec<BreakerPhase> = breakers
        .iter_mut()
        .map(|(_, rx)| *rx.borrow_and_update())
        .collect();
    let open_ones: Vec<&str> = breakers
        .iter()
        .zip(&phases)
        .filter(|(_, phase)| **phase == BreakerPhase::Open)
        .map(|((breaker, _), _)| breaker.name())
        .collect();
    let rank = |phase: &BreakerPhase| match phase {
        BreakerPhase::Closed => 0.0,
        BreakerPhase::HalfOpen => 1.0,
        BreakerPhase::Open => 2.0,
    };
    meters
        .breaker
        .set(phases.iter().map(rank).fold(0.0, f64::max));
    let open = !open_ones.is_empty();
    if open {
        tracing::warn!(breakers = ?open_ones, "circuit breaker open: partitions paused, polling continues");
    } else {
        tracing::info!("circuit breakers probing or closed: partitions resumed");
    }
    Some(open)
}

/// Carries out the dispatcher's pause and resume decisions.
fn apply_control(consumer: &WorkerConsumer, shared: &Shared) {
    for (tp, offset) in shared.take_seeks() {
        // Records let go behind a parked key are read again from here (asynchronously: a
        // zero timeout; one lost on the way is asked for again, see `RESEEK_AFTER`); the
        // records of other keys read again are skipped.
        let (topic, partition) = (&tp.0, tp.1);
        tracing::debug!(%topic, partition, offset, "reading a partition again from the first record let go behind a key");
        if let Err(e) = consumer.seek(topic, partition, Offset::Offset(offset), Duration::ZERO) {
            tracing::warn!(%topic, partition, offset, error = %e, "seek failed; asked again at the next commit tick");
            shared.seek_failed(&tp);
        }
    }
    let decisions = shared.take_control();
    if decisions.is_empty() {
        return;
    }
    let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
    for ((topic, partition), paused) in decisions {
        if paused {
            pause.add_partition(&topic, partition);
        } else {
            resume.add_partition(&topic, partition);
        }
    }
    if pause.count() > 0 {
        if let Err(e) = consumer.pause(&pause) {
            tracing::warn!(error = %e, "pause failed");
        }
    }
    if resume.count() > 0 {
        if let Err(e) = consumer.resume(&resume) {
            tracing::warn!(error = %e, "resume failed");
        }
    }
}

/// The loop's periodic commits: synchronous, on a blocking thread, one at a time, so that
/// the loop goes on meanwhile and a commit the broker refuses is known and made again at the
/// next tick. (librdkafka reports the failure of an asynchronous manual commit only in its
/// log: a refused commit counted as made, and a partition whose last commit was refused kept
/// its lag, and replayed more after a crash, until its commit point moved again.)
struct Committer {
    consumer: Arc<WorkerConsumer>,
    /// The commit under way.
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Committer {
    /// Commits what changed since the last commit, unless a commit is still under way (what
    /// changed meanwhile is taken at a later tick).
    fn commit(&mut self, shared: &Arc<Shared>) {
        if self.running.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let epoch = *shared.commit_gate.lock();
        let commits = shared.take_commits(false);
        if commits.is_empty() {
            return;
        }
        let (consumer, shared) = (self.consumer.clone(), shared.clone());
        self.running = Some(tokio::task::spawn_blocking(move || {
            let gate = shared.commit_gate.lock();
            if *gate != epoch {
                // A revoke or the final commit came first: these offsets may be older than
                // what it committed. Those of partitions still assigned go at the next tick.
                drop(gate);
                shared.forget_commits();
                return;
            }
            if let Err(e) = consumer.commit(&commit_list(&commits), CommitMode::Sync) {
                tracing::warn!(error = %e, "commit failed; trying again at the next interval");
                shared.forget_commits();
            }
        }));
    }
}

/// Commits each partition's lowest unfinished offset with its finished-offset metadata
/// (`all`: every partition's, not only those that changed).
fn commit(
    consumer: &WorkerConsumer,
    shared: &Shared,
    mode: CommitMode,
    all: bool,
) -> Result<(), KafkaError> {
    let mut gate = shared.commit_gate.lock();
    *gate += 1;
    let commits = shared.take_commits(all);
    if commits.is_empty() {
        return Ok(());
    }
    consumer
        .commit(&commit_list(&commits), mode)
        .inspect_err(|_| shared.forget_commits())
}

/// The final commit of a stopping worker ([`commit`] of every partition), waited for at most
/// `limit` ([`run_within`]): past it the stop goes on without it and the next owner replays
/// from the last commit. A commit past the limit goes on on its thread, which holds the
/// consumer (and the worker's shared state) until librdkafka gives up: its revoke and the
/// consumer's close come then, after the worker returned.
pub(super) fn final_commit(consumer: &Arc<WorkerConsumer>, shared: &Arc<Shared>, limit: Duration) {
    let commit_all = |consumer: &WorkerConsumer, shared: &Shared| {
        if let Err(e) = commit(consumer, shared, CommitMode::Sync, true) {
            tracing::warn!(error = %e, "the final commit failed: the next owner replays from the last commit");
        }
    };
    let (c, s) = (consumer.clone(), shared.clone());
    match run_within(limit, "final commit", move || commit_all(&c, &s)) {
        Within::Ended => {}
        Within::Panicked => tracing::error!("the final commit panicked"),
        Within::TimedOut => tracing::warn!(
            ?limit,
            "the final commit did not end in time (the broker does not answer); stopping without it: the next owner replays from the last commit"
        ),
        Within::NotRun => commit_all(consumer, shared),
    }
}

/// Stops fetching and waits for running handlers, up to `limit`; past it, `handler_shutdown`
/// tells the handlers still running that they are abandoned.
pub(super) async fn drain(
    consumer: &WorkerConsumer,
    shared: &Arc<Shared>,
    limit: Duration,
    handler_shutdown: &CancellationToken,
) {
    let assigned = shared.stop();
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in &assigned {
        tpl.add_partition(topic, *partition);
    }
    if tpl.count() > 0 {
        let _ = consumer.pause(&tpl);
    }
    let deadline = Instant::now() + limit;
    loop {
        let notified = shared.woken();
        let running = shared.running();
        if running == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(running, "drain deadline passed; abandoning running handlers (their messages are delivered again)");
            handler_shutdown.cancel();
            return;
        }
        let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BreakerSettings;

    fn breaker(open_ms: u64) -> Breaker {
        Breaker::new(
            "test",
            BreakerSettings {
                failure_rate: 0.5,
                window: Duration::from_secs(10),
                min_calls: 1,
                open_for: Duration::from_millis(open_ms),
                half_open_probes: 1,
            },
        )
    }

    fn watched(breakers: &[&Breaker]) -> Vec<(Breaker, watch::Receiver<BreakerPhase>)> {
        breakers.iter().map(|b| ((*b).clone(), b.watch())).collect()
    }

    /// The partitions pause while any breaker (the handler's or a dependency's) is open, and
    /// resume only when none is.
    #[tokio::test]
    async fn partitions_pause_while_any_breaker_is_open() {
        let meters = Meters::noop();
        let (handler, payments) = (breaker(60_000), breaker(60_000));
        let mut breakers = watched(&[&handler, &payments]);
        payments.record(false);
        assert_eq!(breaker_change(&mut breakers, &meters).await, Some(true));
        handler.record(false);
        handler.record(true);
        assert_eq!(
            breaker_change(&mut breakers, &meters).await,
            Some(true),
            "the dependency's breaker is still open"
        );
    }

    /// An open breaker that no call asks (its partitions are paused) still probes when its
    /// open period passes: the partitions resume.
    #[tokio::test]
    async fn an_open_breaker_nobody_calls_moves_to_half_open_and_the_partitions_resume() {
        let meters = Meters::noop();
        let payments = breaker(50);
        let mut breakers = watched(&[&payments]);
        payments.record(false);
        assert_eq!(breaker_change(&mut breakers, &meters).await, Some(true));
        let resumed = tokio::time::timeout(
            Duration::from_secs(5),
            breaker_change(&mut breakers, &meters),
        )
        .await;
        assert_eq!(resumed, Ok(Some(false)), "half-open after its open period");
    }
}
