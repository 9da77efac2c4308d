//! The breaker's state machine: the sliding window of calls, the phases (closed, open,
//! half-open) and the permits; shared by the policy and the consume loop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::BreakerConfig;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// The failure rate (0 to 1) at or above which the breaker opens.
    pub failure_rate: f64,
    /// The sliding window the rate is measured over.
    pub window: Duration,
    /// Calls the window must hold before the rate counts.
    pub min_calls: u32,
    /// How long the breaker stays open before probing.
    pub open_for: Duration,
    /// Probe calls in the half-open state; all must succeed to close.
    pub half_open_probes: u32,
}

impl BreakerConfig {
    /// As breaker settings.
    pub fn settings(&self) -> BreakerSettings {
        BreakerSettings {
            failure_rate: f64::from(self.failure_rate_percent) / 100.0,
            window: Duration::from_millis(self.window_ms),
            min_calls: self.min_calls,
            open_for: Duration::from_millis(self.open_ms),
            half_open_probes: self.half_open_probes,
        }
    }
}

impl Default for BreakerSettings {
    /// Opens at 50 % failures over 10 s with at least 20 calls; probes after 5 s with 3 calls.
    fn default() -> Self {
        BreakerSettings {
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerPhase {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls wait.
    Open,
    /// A few probe calls go through.
    HalfOpen,
}

/// Whether a call may go through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Call now.
    Go,
    /// Ask again at this instant.
    WaitUntil(Instant),
}

/// The breaker's state machine, without clocks of its own (the caller passes `now`).
#[derive(Debug)]
pub struct BreakerState {
    settings: BreakerSettings,
    phase: BreakerPhase,
    opened_at: Instant,
    calls: VecDeque<(Instant, bool)>,
    probes_started: u32,
    probes_succeeded: u32,
    /// Half-open periods so far: tells a probe of this period from one of an earlier one.
    rounds: u64,
}

impl BreakerState {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings, now: Instant) -> Self {
        BreakerState {
            settings,
            phase: BreakerPhase::Closed,
            opened_at: now,
            calls: VecDeque::new(),
            probes_started: 0,
            probes_succeeded: 0,
            rounds: 0,
        }
    }
    /// The current phase (an open breaker whose period passed reports half-open).
    pub fn phase(&self) -> BreakerPhase {
        self.phase
    }
    /// When an open breaker may probe; `None` when it is not open.
    pub fn probes_at(&self) -> Option<Instant> {
        (self.phase == BreakerPhase::Open).then(|| self.opened_at + self.settings.open_for)
    }
    /// Moves an open breaker whose open period passed to half-open (probes not taken yet),
    /// whether or not a call asks: a worker whose partitions it paused has no call to ask.
    pub fn advance(&mut self, now: Instant) {
        if self.probes_at().is_some_and(|at| now >= at) {
            self.phase = BreakerPhase::HalfOpen;
            self.probes_started = 0;
            self.probes_succeeded = 0;
            self.rounds += 1;
        }
    }
    /// Asks to call.
    pub fn permit(&mut self, now: Instant) -> Permit {
        self.permit_probe(now).0
    }
    /// Asks to call; with `Go` in the half-open phase, the probe's period too (see
    /// [`BreakerState::give_back`]).
    pub fn permit_probe(&mut self, now: Instant) -> (Permit, Option<u64>) {
        let permit = self.take(now);
        let probe =
            (permit == Permit::Go && self.phase == BreakerPhase::HalfOpen).then_some(self.rounds);
        (permit, probe)
    }
    /// Gives back the probe place taken in the half-open period `round` by a call that ended
    /// with no verdict on the handler (its message was handed back unfinished): another call
    /// probes in its stead. Nothing once that period is over.
    pub fn give_back(&mut self, round: u64) {
        if self.phase == BreakerPhase::HalfOpen && self.rounds == round {
            self.probes_started = self.probes_started.saturating_sub(1);
        }
    }
    fn take(&mut self, now: Instant) -> Permit {
        self.advance(now);
        if let Some(reopen) = self.probes_at() {
            return Permit::WaitUntil(reopen);
        }
        if self.phase == BreakerPhase::HalfOpen {
            if self.probes_started >= self.settings.half_open_probes.max(1) {
                return Permit::WaitUntil(now + Duration::from_millis(50));
            }
            self.probes_started += 1;
        }
        Permit::Go
    }
    /// Records a call's result.
    pub fn record(&mut self, now: Instant, success: bool) {
        match self.phase {
            BreakerPhase::Open => {}
            BreakerPhase::HalfOpen => {
                if !success {
                    self.open(now);
                } else {
                    self.probes_succeeded += 1;
                    if self.probes_succeeded >= self.settings.half_open_probes.max(1) {
                        self.phase = BreakerPhase::Closed;
                        self.calls.clear();
                    }
                }
            }
            BreakerPhase::Closed => {
                self.calls.push_back((now, success));
                while let Some((at, _)) = self.calls.front() {
                    if now.duration_since(*at) > self.settings.window {
                        self.calls.pop_front();
                    } else {
                        break;
                    }
                }
                let total = self.calls.len();
                let failed = self.calls.iter().filter(|(_, ok)| !ok).count();
                if total >= self.settings.min_calls as usize
                    && failed as f64 >= self.settings.failure_rate * total as f64
                {
                    self.open(now);
                }
            }
        }
    }
    fn open(&mut self, now: Instant) {
        self.phase = BreakerPhase::Open;
        self.opened_at = now;
        self.calls.clear();
    }
}

/// A breaker shared by every clone of its layer; the worker watches its phase to pause and
/// resume partitions.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: Arc<Mutex<BreakerState>>,
    phase: Arc<watch::Sender<BreakerPhase>>,
    name: Arc<str>,
}

impl Breaker {
    /// A closed breaker named `name` (in logs).
    pub fn new(name: &str, settings: BreakerSettings) -> Self {
        Breaker {
            state: Arc::new(Mutex::new(BreakerState::new(settings, Instant::now()))),
            phase: Arc::new(watch::channel(BreakerPhase::Closed).0),
            name: Arc::from(name),
        }
    }
    /// Its name (in logs): the group, or `<group>/<dependency>`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Follows the breaker's phase.
    pub fn watch(&self) -> watch::Receiver<BreakerPhase> {
        self.phase.subscribe()
    }
    /// Asks to make a call now: go, or wait until when; with `Go` while half-open, the
    /// probe's period, to give its place back ([`Breaker::give_back`]).
    pub(crate) fn permit_probe(&self) -> (Permit, Option<u64>) {
        let mut state = self.state.lock();
        let permit = state.permit_probe(Instant::now());
        self.publish(state.phase());
        permit
    }
    /// Gives back a probe's place (see [`BreakerState::give_back`]).
    pub(crate) fn give_back(&self, round: u64) {
        self.state.lock().give_back(round);
    }
    /// When the breaker, open, may probe; `None` when it is not open.
    pub(crate) fn probes_at(&self) -> Option<Instant> {
        self.state.lock().probes_at()
    }
    /// Moves the breaker to half-open once its open period passed (see
    /// [`BreakerState::advance`]).
    pub(crate) fn advance(&self) {
        let mut state = self.state.lock();
        let before = state.phase();
        state.advance(Instant::now());
        if state.phase() != before {
            tracing::info!(breaker = %self.name, "circuit breaker probing");
        }
        self.publish(state.phase());
    }
    /// Records a call's result; the phase after it.
    pub(crate) fn record(&self, success: bool) -> BreakerPhase {
        let mut state = self.state.lock();
        let before = state.phase();
        state.record(Instant::now(), success);
        let after = state.phase();
        if before != after {
            tracing::warn!(breaker = %self.name, from = ?before, to = ?after, "circuit breaker changed phase");
        }
        self.publish(after);
        after
    }
    /// Waits (polling, 5 s at most) until the breaker's open period passed and it probes.
    #[cfg(test)]
    pub(crate) async fn until_probing(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.probes_at().is_some() {
            assert!(Instant::now() < deadline, "the open period never passed");
            self.advance();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    fn publish(&self, phase: BreakerPhase) {
        self.phase.send_if_modified(|p| {
            let changed = *p != phase;
            *p = phase;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 4,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[test]
    fn opens_at_the_failure_rate_only_after_the_minimum_calls() {
        let t0 = Instant::now();
        let mut b = BreakerState::new(settings(), t0);
        b.record(t0, false);
        b.record(t0, false);
        b.record(t0, false);
        assert_eq!(
            b.phase(),
            BreakerPhase::Closed,
            "3 calls are under the minimum"
        );
        b.record(t0, true);
        assert_eq!(b.phase(), BreakerPhase::Open, "3 of 4 failed");
        assert_eq!(b.permit(t0), Permit::WaitUntil(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn old_calls_leave_the_window() {
        let t0 = Instant::now();
        let mut b = BreakerState::new(settings(), t0);
        for _ in 0..3 {
            b.record(t0, false);
        }
        let later = t0 + Duration::from_secs(11);
        b.record(later, true);
        b.record(later, true);
        b.record(later, true);
        b.record(later, false);
        assert_eq!(
            b.phase(),
            BreakerPhase::Closed,
            "1 of 4 in the window failed"
        );
    }

    #[test]
    fn half_open_probes_close_on_success_and_reopen_on_failure() {
        let t0 = Instant::now();
        let mut b = BreakerState::new(settings(), t0);
        for _ in 0..4 {
            b.record(t0, false);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.permit(t1), Permit::Go);
        assert_eq!(b.phase(), BreakerPhase::HalfOpen);
        assert_eq!(b.permit(t1), Permit::Go);
        assert!(
            matches!(b.permit(t1), Permit::WaitUntil(_)),
            "only 2 probes at once"
        );
        b.record(t1, false);
        assert_eq!(b.phase(), BreakerPhase::Open, "a failed probe reopens");

        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(b.permit(t2), Permit::Go);
        assert_eq!(b.permit(t2), Permit::Go);
        b.record(t2, true);
        assert_eq!(b.phase(), BreakerPhase::HalfOpen);
        b.record(t2, true);
        assert_eq!(b.phase(), BreakerPhase::Closed, "all probes succeeded");
        assert_eq!(b.permit(t2), Permit::Go);
    }
}
