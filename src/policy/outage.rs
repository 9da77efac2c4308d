//! Store and dependency outages: calls are tried again with backoff until they answer. An
//! outage never fails a message, never spends one of its attempts and never lets the worker
//! commit past it; a shutdown while waiting requeues the message, and so does a revoke that
//! gave the message's partition to another owner while it waited before its handler. A store that answers with
//! an error (a refusal: missing rights, a script error) is waited out the same way, visibly
//! (a rate-limited log line, the readiness probe, `steadfast_store_errors_total`), unless
//! `stores.dead_letter_after_refusals` sends a message that needs it before its handler to
//! the dead-letter topic after that many refusals.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::clock::now_ms;
use crate::message::{Envelope, ErrorClass, Failure, Outcome};
use crate::store::StoreError;

/// The longest a store call may take before it counts as unanswered.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Backoff between tries while a store is unreachable: 50 ms doubling to 5 s, with jitter,
/// without end.
pub(crate) fn outage_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
        .build()
}

/// Sleeps `delay` while a message waits before its handler (another holder's lock or
/// reservation, a rate permit, a store that does not answer, the next attempt); `false`
/// when `shutdown` fired first or the message's partition went to another owner (its job
/// was abandoned at a revoke past the drain timeout): the message is requeued, and the
/// new owner runs it instead of both.
pub(crate) async fn wait_before_handler(delay: Duration, shutdown: &CancellationToken) -> bool {
    let abandoned = super::route::abandoned();
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.cancelled() => false,
        _ = abandoned.cancelled() => false,
    }
}

/// Ends when `shutdown` fires or the job this task runs is abandoned (see
/// [`wait_before_handler`]).
pub(crate) async fn stopped_before_handler(shutdown: &CancellationToken) {
    let abandoned = super::route::abandoned();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = abandoned.cancelled() => {}
    }
}

/// Sleeps `delay`; `false` when `shutdown` fired first.
pub(crate) async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Why a store call ended without an answer.
#[derive(Debug)]
pub(crate) enum Unanswered {
    /// The worker is shutting down, or the message's partition went to another owner: the
    /// message is requeued.
    Shutdown,
    /// The store refused the call `tries` times (`stores.dead_letter_after_refusals`).
    Refused {
        /// The call, as named in the logs.
        what: &'static str,
        /// The last refusal.
        error: StoreError,
        /// How many times it refused.
        tries: u32,
    },
}

impl Unanswered {
    /// The message's outcome: requeued at a shutdown; dead-lettered with class `store` after
    /// the refusals.
    pub(crate) fn outcome(self, envelope: &Envelope) -> Outcome {
        match self {
            Unanswered::Shutdown => Outcome::Requeue,
            Unanswered::Refused { what, error, tries } => Outcome::Failed(Failure::new(
                ErrorClass::Store,
                format!("the store refused `{what}` {tries} times: {error}"),
                true,
                envelope.attempt,
                now_ms(),
            )),
        }
    }
}

/// Runs `call` until it succeeds, backing off while it fails; `None` when `shutdown` fired.
/// `what` names the call in the warnings logged while the store is down. For calls after the
/// handler ran (its effect landed): they wait for the store whatever it answers.
pub(crate) async fn until_available<T, F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    answered(what, shutdown, None, false, call).await.ok()
}

/// Runs `call` until it succeeds, backing off while the store is unreachable or refuses it;
/// with `give_up_after`, ends after that many refusals ([`Unanswered::Refused`]). An outage
/// never ends the wait. For calls before the handler runs: an abandoned job stops waiting
/// ([`wait_before_handler`]).
pub(crate) async fn until_answered<T, F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    give_up_after: Option<NonZeroU32>,
    call: F,
) -> Result<T, Unanswered>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    answered(what, shutdown, give_up_after, true, call).await
}

/// [`until_answered`], and [`until_available`] (`before_handler` false: a call recording a
/// handled message waits until the store answers whatever became of the partition).
async fn answered<T, F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    give_up_after: Option<NonZeroU32>,
    before_handler: bool,
    mut call: F,
) -> Result<T, Unanswered>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delays = outage_backoff();
    let mut refusals = 0u32;
    loop {
        if shutdown.is_cancelled() || (before_handler && super::route::is_abandoned()) {
            return Err(Unanswered::Shutdown);
        }
        let answer = match tokio::time::timeout(CALL_TIMEOUT, call()).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Unavailable {
                backend: "store",
                message: format!("no answer within {CALL_TIMEOUT:?}"),
                cause: None,
            }),
        };
        let error = match answer {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        if !error.is_unavailable() {
            refusals = refusals.saturating_add(1);
            if give_up_after.is_some_and(|limit| refusals >= limit.get()) {
                tracing::error!(call = what, error = %error, refusals, "the store keeps refusing the call: the message goes to the dead-letter topic (class `store`)");
                return Err(Unanswered::Refused {
                    what,
                    error,
                    tries: refusals,
                });
            }
        }
        log_failure(what, &error, delay);
        let waited = if before_handler {
            wait_before_handler(delay, shutdown).await
        } else {
            pause(delay, shutdown).await
        };
        if !waited {
            return Err(Unanswered::Shutdown);
        }
    }
}

/// How often at most a failing call is logged, per call name; the lines in between are
/// counted in the next one.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Per call name: when it was last logged and the failures left unlogged since.
static LOGGED: LazyLock<Mutex<HashMap<&'static str, (Instant, u64)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Logs a failed try of `what`, at most once per [`LOG_EVERY`] per call name across the
/// process: every waiting message retries, and a line each would bury the cause.
fn log_failure(what: &'static str, error: &StoreError, delay: Duration) {
    let unlogged = {
        let mut logged = LOGGED.lock();
        let now = Instant::now();
        match logged.get_mut(what) {
            Some((at, skipped)) if now.saturating_duration_since(*at) < LOG_EVERY => {
                *skipped = skipped.saturating_add(1);
                return;
            }
            Some((at, skipped)) => {
                *at = now;
                std::mem::take(skipped)
            }
            None => {
                logged.insert(what, (now, 0));
                0
            }
        }
    };
    if error.is_unavailable() {
        tracing::warn!(call = what, error = %error, ?delay, unlogged, "store call failed; trying again");
    } else {
        // A refusal that does not pass (a wrong type, missing rights): loud, but never a
        // reason to drop the message, and by default not to dead-letter it either.
        tracing::error!(call = what, error = %error, ?delay, unlogged, "the store refuses the call; the messages that need it wait until it is fixed (or set `stores.dead_letter_after_refusals`)");
    }
}

/// Runs `run` again, after a backoff ([`outage_backoff`]), each time it ends with an error,
/// until it ends well or `stop` fires during a backoff (then its last error); `what` names it
/// in the error logged at each restart. For a task the worker must not lose while it runs
/// (the delay relay).
pub(crate) async fn restart_on_error<T, E, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut run: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = outage_backoff();
    loop {
        match run().await {
            Ok(done) => return Ok(done),
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::error!(error = %e, ?delay, "{what} stopped with an error; starting it again");
                if !pause(delay, stop).await {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A run that fails twice, then ends well, is started three times and its result
    /// returned; a stop during a backoff returns the last error without another run.
    #[tokio::test(start_paused = true)]
    async fn a_failed_run_is_started_again_until_it_ends_well_or_the_stop() {
        let runs = std::sync::atomic::AtomicU32::new(0);
        let stop = CancellationToken::new();
        let result: Result<u32, String> = restart_on_error("the task", &stop, || async {
            let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n < 3 {
                Err(format!("run {n} failed"))
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(result, Ok(3));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);

        let runs = std::sync::atomic::AtomicU32::new(0);
        let stopped = CancellationToken::new();
        stopped.cancel();
        let result: Result<u32, String> = restart_on_error("the task", &stopped, || async {
            let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Err(format!("run {n} failed"))
        })
        .await;
        assert_eq!(result, Err("run 1 failed".to_owned()));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_waited_out_and_a_shutdown_ends_the_wait() {
        let tries = AtomicU32::new(0);
        let shutdown = CancellationToken::new();
        let value = until_available("test", &shutdown, || async {
            if tries.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(StoreError::Unavailable {
                    backend: "redis",
                    message: "down".into(),
                    cause: None,
                })
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(value, Some(7));
        assert_eq!(tries.load(Ordering::SeqCst), 4);

        shutdown.cancel();
        let never: Option<u32> = until_available("test", &shutdown, || async {
            Err(StoreError::Unavailable {
                backend: "redis",
                message: "down".into(),
                cause: None,
            })
        })
        .await;
        assert_eq!(never, None);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_end_the_wait_only_with_a_limit_and_outages_never_count() {
        let shutdown = CancellationToken::new();
        // Two outages, then refusals: the outages do not count towards the limit of 3.
        let tries = AtomicU32::new(0);
        let ended = until_answered("test", &shutdown, NonZeroU32::new(3), || async {
            if tries.fetch_add(1, Ordering::SeqCst) < 2 {
                Err::<u32, _>(StoreError::unavailable("redis", "down"))
            } else {
                Err(StoreError::failed("redis", "NOPERM"))
            }
        })
        .await;
        match ended {
            Err(Unanswered::Refused {
                tries: refusals,
                error,
                ..
            }) => {
                assert_eq!(refusals, 3);
                assert!(!error.is_unavailable());
            }
            other => panic!("expected a refusal: {other:?}"),
        }
        assert_eq!(tries.load(Ordering::SeqCst), 5);

        // Without a limit, refusals are waited out until the store answers.
        let tries = AtomicU32::new(0);
        let value = until_answered("test", &shutdown, None, || async {
            if tries.fetch_add(1, Ordering::SeqCst) < 20 {
                Err(StoreError::failed("redis", "NOPERM"))
            } else {
                Ok(9)
            }
        })
        .await;
        assert_eq!(value.ok(), Some(9));

        let envelope = Envelope::new("t", &b"k"[..], &b"{}"[..]).with_offset(4);
        let Outcome::Failed(failure) = (Unanswered::Refused {
            what: "dedup reserve",
            error: StoreError::failed("redis", "NOPERM"),
            tries: 3,
        })
        .outcome(&envelope) else {
            panic!("a refusal fails the message");
        };
        assert_eq!(failure.class, ErrorClass::Store);
        assert!(failure.permanent && !failure.unavailable);
        assert!(
            failure.message.contains("dedup reserve"),
            "{}",
            failure.message
        );
    }

    /// A job abandoned at a revoke stops waiting before its handler (requeued) but not after
    /// it: a call recording a handled message goes on until the store answers.
    #[tokio::test(start_paused = true)]
    async fn an_abandoned_job_stops_waiting_before_its_handler_but_records_what_it_handled() {
        let shutdown = CancellationToken::new();
        let abandoned = std::sync::Arc::new(CancellationToken::new());
        abandoned.cancel();
        let tries = AtomicU32::new(0);
        let before = tokio::time::timeout(
            Duration::from_secs(3600),
            super::super::route::abandonable(
                abandoned.clone(),
                until_answered("test", &shutdown, None, || async {
                    tries.fetch_add(1, Ordering::SeqCst);
                    Err::<u32, _>(StoreError::unavailable("redis", "down"))
                }),
            ),
        )
        .await
        .expect("the wait ended");
        assert!(matches!(before, Err(Unanswered::Shutdown)), "{before:?}");
        assert_eq!(tries.load(Ordering::SeqCst), 0, "no call made");
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            super::super::route::abandonable(
                abandoned.clone(),
                wait_before_handler(Duration::from_secs(60), &shutdown),
            ),
        )
        .await;
        assert_eq!(waited, Ok(false), "the wait ended at once, not waited out");

        let tries = AtomicU32::new(0);
        let after = super::super::route::abandonable(
            abandoned,
            until_available("test", &shutdown, || async {
                if tries.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(StoreError::unavailable("redis", "down"))
                } else {
                    Ok(7)
                }
            }),
        )
        .await;
        assert_eq!(after, Some(7), "recorded after three tries");
    }
}
