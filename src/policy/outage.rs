//! Store and dependency outages: calls are tried again with backoff until they answer. An
//! outage never fails a message, never spends one of its attempts and never lets the worker
//! commit past it; a shutdown while waiting requeues the message.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

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

/// Sleeps `delay`; `false` when `shutdown` fired first.
pub(crate) async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Runs `call` until it succeeds, backing off while it fails; `None` when `shutdown` fired.
/// `what` names the call in the warnings logged while the store is down.
pub(crate) async fn until_available<T, F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    mut call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delays = outage_backoff();
    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        let answer = match tokio::time::timeout(CALL_TIMEOUT, call()).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Unavailable {
                backend: "store",
                message: format!("no answer within {CALL_TIMEOUT:?}"),
                cause: None,
            }),
        };
        match answer {
            Ok(value) => return Some(value),
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                if !e.is_unavailable() && failures >= 10 {
                    // A refusal that does not pass (a wrong type, missing rights): loud, but
                    // still never a reason to drop or dead-letter the message.
                    tracing::error!(call = what, error = %e, failures, ?delay, "store keeps refusing the call; the message waits until it is fixed");
                } else {
                    tracing::warn!(call = what, error = %e, ?delay, "store call failed; trying again");
                }
                if !pause(delay, shutdown).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

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
}
