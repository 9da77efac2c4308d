//! The fate of a message: every message ends in an [`Outcome`], never in a swallowed error.

use std::time::Duration;

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
    /// The handler failed and in-place retries are spent: the message must be routed.
    Route {
        /// Where it goes.
        target: RouteTarget,
        /// Error class (`transient`, `permanent`, `decode`, `panic`, `timeout`).
        error_class: &'static str,
        /// The last error message.
        error: String,
        /// Attempts made so far, all tiers counted.
        attempts: u32,
    },
    /// The message was routed and its copy acknowledged by the broker.
    Routed {
        /// Where it went.
        target: RouteTarget,
        /// Error class of the last failure.
        error_class: &'static str,
    },
    /// Not finished (shutdown, revoke deadline, or infrastructure outage past a deadline):
    /// the offset stays unfinished and the message is delivered again later.
    Requeue,
    /// The handler asked to try again after this long without spending an attempt.
    Later(Duration),
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
