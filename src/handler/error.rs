//! How a handler failure is classified: retry it, retry it after a delay, or dead-letter it.

use std::time::Duration;

use crate::message::ErrorClass;

/// A handler failure, classified. The class decides the message's fate:
/// [`Transient`](HandlerError::Transient) and [`RetryAfter`](HandlerError::RetryAfter) are
/// retried (in place, then through the retry tiers, then dead-lettered);
/// [`Permanent`](HandlerError::Permanent) goes to the dead-letter topic at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A failure that may pass (a timeout, a 503): retry with backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// Retry, but not before this delay (a 429 with Retry-After).
    #[error("retry after {0:?}: {1}")]
    RetryAfter(Duration, String),
    /// A failure that will not pass by retrying (a validation error): dead-letter at once.
    #[error("permanent: {0}")]
    Permanent(String),
    /// A dependency is unreachable (its connection broke, a commit failed on a lost
    /// connection): retried with backoff until it answers, without spending an attempt and
    /// never dead-lettered.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl HandlerError {
    /// A transient failure with this message.
    pub fn transient(error: impl std::fmt::Display) -> Self {
        HandlerError::Transient(error.to_string())
    }
    /// A permanent failure with this message.
    pub fn permanent(error: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(error.to_string())
    }
    /// A failure to retry after `delay`.
    pub fn retry_after(delay: Duration, error: impl std::fmt::Display) -> Self {
        HandlerError::RetryAfter(delay, error.to_string())
    }
    /// A dependency that cannot be reached, with this message.
    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        HandlerError::Unavailable(error.to_string())
    }
    /// The error class written to dead-letter headers and metrics.
    pub fn class(&self) -> ErrorClass {
        match self {
            HandlerError::Transient(_) | HandlerError::RetryAfter(..) => ErrorClass::Transient,
            HandlerError::Permanent(_) => ErrorClass::Permanent,
            HandlerError::Unavailable(_) => ErrorClass::Unavailable,
        }
    }
    /// The error message without its class.
    pub fn message(&self) -> &str {
        match self {
            HandlerError::Transient(m)
            | HandlerError::Permanent(m)
            | HandlerError::Unavailable(m) => m,
            HandlerError::RetryAfter(_, m) => m,
        }
    }
}

impl From<crate::store::StoreError> for HandlerError {
    /// An unreachable store is [`HandlerError::Unavailable`]; a refused call is transient.
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            HandlerError::Unavailable(e.to_string())
        } else {
            HandlerError::Transient(e.to_string())
        }
    }
}

impl From<tokio_postgres::Error> for HandlerError {
    /// A lost or refused connection is [`HandlerError::Unavailable`]; any other database
    /// error (a constraint, a serialization failure) is transient.
    fn from(e: tokio_postgres::Error) -> Self {
        crate::store::StoreError::from(e).into()
    }
}
