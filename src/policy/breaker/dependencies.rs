//! Circuit breakers of named dependencies (`[dependencies.<name>]`): a handler wraps its calls
//! to a downstream in [`crate::Context::dependency`]; each name has a breaker of its own, with
//! the same window, thresholds and phases as the handler's breaker. While one is open its
//! calls fail at once as [`HandlerError::Unavailable`] (waited out in place without spending
//! an attempt, never dead-lettered) and the worker pauses its partitions, polling on, as for
//! the handler's breaker; they resume when it probes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;

use parking_lot::Mutex;

use super::state::{Breaker, BreakerPhase, Permit};
use crate::config::BreakerConfig;
use crate::handler::HandlerError;

/// The breakers of a handler's named dependencies.
#[derive(Debug, Default)]
pub struct Dependencies {
    by_name: HashMap<String, Breaker>,
    /// Names asked for without a breaker, warned about once each.
    unknown: Mutex<HashSet<String>>,
}

impl Dependencies {
    /// A closed breaker for each of `configs`, named `<group>/<name>` in logs.
    pub fn new(group: &str, configs: &BTreeMap<String, BreakerConfig>) -> Self {
        Dependencies {
            by_name: configs
                .iter()
                .map(|(name, config)| {
                    (
                        name.clone(),
                        Breaker::new(&format!("{group}/{name}"), config.settings()),
                    )
                })
                .collect(),
            unknown: Mutex::default(),
        }
    }

    /// The breakers (the worker follows their phases, pausing its partitions while one is
    /// open, and moves an open one to half-open when its open period passed).
    pub fn breakers(&self) -> Vec<Breaker> {
        self.by_name.values().cloned().collect()
    }

    /// Runs `call`, a call to the dependency `name`, through its breaker: at once as
    /// [`HandlerError::Unavailable`] while the breaker is open; otherwise the call's result,
    /// counted (a failure other than a permanent one counts as failed), and an error that
    /// opened the breaker turned into `Unavailable` too. A name without a breaker runs the
    /// call as it is (with a warning, once).
    pub async fn call<T>(
        &self,
        name: &str,
        call: impl Future<Output = Result<T, HandlerError>>,
    ) -> Result<T, HandlerError> {
        let Some(breaker) = self.by_name.get(name) else {
            if self.unknown.lock().insert(name.to_owned()) {
                tracing::warn!(
                    dependency = name,
                    "no breaker is configured for this dependency ([dependencies.{name}]): its calls are not guarded"
                );
            }
            return call.await;
        };
        let (permit, probe) = breaker.permit_probe();
        if let Permit::WaitUntil(_) = permit {
            return Err(HandlerError::unavailable(format!(
                "{name}: circuit open, not called"
            )));
        }
        // A call dropped before it ended (the handler's time limit, a batch's) counts as
        // failed: a dependency that hangs is failing, and a half-open probe that never ends
        // would otherwise hold its place for good.
        let mut pending = Unfinished::new(breaker, probe);
        let result = call.await;
        pending.end();
        let failed = matches!(&result, Err(e) if !matches!(e, HandlerError::Permanent(_)));
        if breaker.record(!failed) == BreakerPhase::Open && failed {
            if let Err(e) = result {
                return Err(HandlerError::unavailable(format!(
                    "{name}: circuit opened by this failure: {e}"
                )));
            }
        }
        result
    }
}

/// A call through a breaker that has not ended: recorded as failed when dropped so (it hung
/// past a time limit). One unwound by a panic gives no verdict on the dependency (the panic
/// is the code's): a half-open probe's place is given back.
pub(super) struct Unfinished<'a> {
    breaker: Option<&'a Breaker>,
    /// The half-open round of the probe place the call took, if it took one.
    probe: Option<u64>,
}

impl<'a> Unfinished<'a> {
    /// A call through `breaker` that took the probe place of `probe`'s round, if any.
    pub(super) fn new(breaker: &'a Breaker, probe: Option<u64>) -> Self {
        Unfinished {
            breaker: Some(breaker),
            probe,
        }
    }

    /// The call ended: its result is recorded by the caller.
    pub(super) fn end(&mut self) {
        self.breaker = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let Some(breaker) = self.breaker.take() else {
            return;
        };
        if std::thread::panicking() {
            if let Some(round) = self.probe {
                breaker.give_back(round);
            }
        } else {
            breaker.record(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn payments(min_calls: u32, open_ms: u64) -> Dependencies {
        let config = BreakerConfig {
            failure_rate_percent: 50,
            window_ms: 60_000,
            min_calls,
            open_ms,
            half_open_probes: 1,
        };
        Dependencies::new("g", &BTreeMap::from([("payments".to_owned(), config)]))
    }

    #[tokio::test]
    async fn an_open_breaker_fails_calls_as_unavailable_without_making_them_and_probes_later() {
        let deps = payments(2, 100);
        let mut watch = deps.breakers().remove(0).watch();
        let fail = || async { Err::<(), _>(HandlerError::transient("refused")) };
        assert!(matches!(
            deps.call("payments", fail()).await,
            Err(HandlerError::Transient(_))
        ));
        // The second failure opens it: reported as unavailable (no attempt spent).
        assert!(matches!(
            deps.call("payments", fail()).await,
            Err(HandlerError::Unavailable(_))
        ));
        assert_eq!(*watch.borrow_and_update(), BreakerPhase::Open);
        let mut made = false;
        let refused = deps
            .call("payments", async {
                made = true;
                Ok(())
            })
            .await;
        assert!(matches!(refused, Err(HandlerError::Unavailable(_))));
        assert!(!made, "no call while open");
        deps.breakers().remove(0).until_probing().await;
        assert!(deps.call("payments", async { Ok(()) }).await.is_ok());
        assert_eq!(*watch.borrow_and_update(), BreakerPhase::Closed);
    }

    #[tokio::test]
    async fn permanent_failures_do_not_count_and_unknown_names_pass_through() {
        let deps = payments(1, 60_000);
        let permanent = deps
            .call("payments", async {
                Err::<(), _>(HandlerError::permanent("bad request"))
            })
            .await;
        assert!(matches!(permanent, Err(HandlerError::Permanent(_))));
        assert!(
            deps.call("payments", async { Ok(()) }).await.is_ok(),
            "closed"
        );
        let other = deps
            .call("ledger", async {
                Err::<(), _>(HandlerError::transient("x"))
            })
            .await;
        assert!(matches!(other, Err(HandlerError::Transient(_))));
        assert!(deps.call("payments", async { Ok(()) }).await.is_ok());
    }

    /// A call to `payments` that never ends, cut by a 20 ms time limit.
    async fn hang(deps: &Dependencies) {
        let cut = tokio::time::timeout(
            Duration::from_millis(20),
            deps.call(
                "payments",
                std::future::pending::<Result<(), HandlerError>>(),
            ),
        )
        .await;
        assert!(cut.is_err(), "timed out");
    }

    #[tokio::test]
    async fn a_call_dropped_unfinished_counts_as_failed_and_frees_its_probe() {
        let deps = payments(1, 50);
        // A hanging call cut by a time limit: counted, and the breaker opens.
        hang(&deps).await;
        let breaker = deps.breakers().remove(0);
        assert!(breaker.probes_at().is_some(), "open after the hung call");
        breaker.until_probing().await;
        // The one probe hangs too and is cut: it counts as failed (open again), so the
        // breaker probes again after its open period instead of waiting for it for good.
        hang(&deps).await;
        assert!(breaker.probes_at().is_some(), "open again");
        breaker.until_probing().await;
        assert!(
            deps.call("payments", async { Ok(()) }).await.is_ok(),
            "a later probe goes through and closes it"
        );
        assert!(breaker.probes_at().is_none());
    }
}
