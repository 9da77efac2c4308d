//! The fate of a message: every message ends in an [`Outcome`], never in a swallowed error.

use std::time::Duration;

use super::ErrorClass;

/// Why a handler call failed, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Its class (also the `steadfast-error-class` header of a routed copy).
    pub class: ErrorClass,
    /// The error message.
    pub message: String,
    /// Whether retrying cannot help (dead-letter at once).
    pub permanent: bool,
    /// The least delay before the next attempt, when the handler asked for one.
    pub retry_after: Option<Duration>,
    /// When the first failure of this delivery happened (ms since the epoch).
    pub first_failed_ms: i64,
    /// The attempt that failed (1-based, all tiers counted).
    pub attempt: u32,
    /// Whether a store or a dependency was unreachable: retried with backoff without
    /// spending an attempt, never routed.
    pub unavailable: bool,
}

impl Failure {
    /// A failure of `class` at `attempt`, first failed at `first_failed_ms`; permanent or
    /// not, without a least delay, not an outage.
    pub(crate) fn new(
        class: ErrorClass,
        message: String,
        permanent: bool,
        attempt: u32,
        first_failed_ms: i64,
    ) -> Failure {
        Failure {
            class,
            message,
            permanent,
            retry_after: None,
            first_failed_ms,
            attempt,
            unavailable: false,
        }
    }
}

/// Why a message was dropped without running the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its version is not newer than the last applied version of its key.
    Stale,
    /// Its id was already handled.
    Duplicate,
}

/// Where a failed message was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// The retry tier with this number (1-based): `<topic>.retry.<n>`.
    RetryTier(u32),
    /// The dead-letter topic.
    DeadLetter,
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler succeeded (at `attempt`, counting from 1 at the first delivery).
    Ack {
        /// The attempt that succeeded.
        attempt: u32,
    },
    /// Dropped before the handler ran.
    Drop(DropReason),
    /// The handler failed; the route layer turns this into [`Outcome::Routed`] (seen only
    /// inside the policy stack and from [`crate::testing`] without routing).
    Failed(Failure),
    /// The message was routed and its copy acknowledged by the broker.
    Routed {
        /// Where it went.
        target: RouteTarget,
        /// Error class of the last failure.
        error_class: ErrorClass,
    },
    /// Not finished (shutdown, revoke deadline, or infrastructure outage past a deadline):
    /// the offset stays unfinished and the message is delivered again later.
    Requeue,
}

impl Outcome {
    /// Whether the message's offset may be marked finished.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Outcome::Ack { .. } | Outcome::Drop(_) | Outcome::Routed { .. }
        )
    }
}

/// What a panic's payload says.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".to_owned())
}
