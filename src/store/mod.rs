//! The stores behind the protective policies, one small trait per concern, each with a
//! memory, a Redis and a Postgres backend:
//!
//! - [`LockStore`]: a lease lock per key with a fencing token that strictly increases per key;
//! - [`DedupStore`]: two-phase deduplication of message ids (reserve → complete / release);
//! - [`VersionStore`]: the last applied version per key, advanced by compare-and-set;
//! - [`RateLimitStore`]: permits of a named rate limit shared by the workers using it;
//! - [`TransactionalStore`]: the handler's Postgres transaction with the message's id,
//!   version and fencing token already recorded in it (the once-only path).
//!
//! A worker takes a handle of each ([`crate::WorkerBuilder::lock_store`] and its siblings), or
//! connects the backends its configuration names by URL. A backend of your own implements the
//! trait and runs the exported [`conformance`] suite (see [`crate::store_conformance_tests`]);
//! every backend here passes it (Redis and Postgres in `tests/store_conformance_<backend>.rs`,
//! memory from the outside crate `tests/dependent`). A store call that fails is an infrastructure failure ([`StoreError`]): the policies back off and
//! try again, never dead-letter the message and never spend one of its attempts.
//!
//! ## What the fencing token protects, and what it cannot
//!
//! A lease can run out while its holder still works (a long GC-like pause, a stalled network):
//! another worker then takes the lock and both believe they hold it. The token tells them
//! apart: every grant of a key's lock gets a larger token than every earlier grant. A
//! downstream that remembers the largest token it has accepted per key (the transactional
//! store does this inside the handler's Postgres transaction, [`LockStore::fence`] does it in
//! the store) refuses the late writer's smaller token. It cannot protect a downstream that
//! does not check the token: there the lock only narrows the window.
//!
//! Tokens must keep growing after a store loses its memory. The Redis backend seeds every
//! grant from the Redis server's clock in microseconds (`max(last + 1, now_us)`), so a Redis
//! without persistence that restarts and forgets its counters still hands out larger tokens
//! than before, as long as its clock did not step back and no key was granted more than a
//! million times a second. The Postgres backend keeps its counters in a table and needs no
//! such seed; the memory backend lives and dies with the process.

mod coalesce;
pub mod conformance;
pub(crate) mod guards;
mod handles;
pub mod memory;
mod once;
pub mod postgres;
pub mod redis;

pub use self::handles::StoreHandles;
pub use self::once::{OnceBatch, OnceRecord, OnceStart, OnceVerdict};
pub use self::postgres::OnceTransaction;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

/// A store call that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or dropped the connection: retry with backoff.
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        /// `redis` or `postgres`.
        backend: &'static str,
        /// What the client reported.
        message: String,
        /// The client's own error, when there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// The store answered with an error (a script or a statement failed).
    #[error("{backend} refused the call: {message}")]
    Failed {
        /// `redis` or `postgres`.
        backend: &'static str,
        /// What the store reported.
        message: String,
        /// The client's own error, when there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// The store refused access: the credentials (a wrong password, an unknown user) or a
    /// right the user lacks (Redis `NOPERM`). Not an outage, so a worker's start fails with it
    /// at once instead of waiting; fix the URL or the user's rights.
    #[error("{backend} refused access: {message}")]
    Auth {
        /// `redis` or `postgres`.
        backend: &'static str,
        /// What the store reported.
        message: String,
        /// The client's own error, when there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// A store URL that cannot be used.
    #[error("store URL `{url}`: {reason}")]
    Url {
        /// The URL as given (without its password).
        url: String,
        /// Why.
        reason: String,
    },
    /// Applying the schema migrations failed.
    #[error("migration {version}: {message}")]
    Migration {
        /// The migration's version.
        version: u32,
        /// What failed.
        message: String,
    },
}

/// The driver's error under a [`StoreError`] (a `redis::RedisError`, a
/// `tokio_postgres::Error`), shared: store errors are cloned to every caller waiting on a call.
#[derive(Debug, Clone)]
pub struct Cause(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Wraps a driver error.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(std::sync::Arc::new(error))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl StoreError {
    /// The same error with `cause` as its source (for the variants that carry one).
    pub fn caused_by(mut self, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        if let StoreError::Unavailable { cause, .. }
        | StoreError::Failed { cause, .. }
        | StoreError::Auth { cause, .. } = &mut self
        {
            *cause = Some(Cause::new(error));
        }
        self
    }

    /// An unreachable store (retried with backoff), without a client error under it.
    pub fn unavailable(backend: &'static str, message: impl Into<String>) -> Self {
        StoreError::Unavailable {
            backend,
            message: message.into(),
            cause: None,
        }
    }

    /// A call the store refused, without a client error under it.
    pub fn failed(backend: &'static str, message: impl Into<String>) -> Self {
        StoreError::Failed {
            backend,
            message: message.into(),
            cause: None,
        }
    }

    /// Refused credentials, without a client error under it.
    pub fn auth(backend: &'static str, message: impl Into<String>) -> Self {
        StoreError::Auth {
            backend,
            message: message.into(),
            cause: None,
        }
    }

    /// Whether the store was unreachable (rather than refusing the call or the credentials):
    /// the only failure a worker waits out at start.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// The error's kind, as the `kind` label of `steadfast_store_errors_total`:
    /// `unavailable`, `failed`, `auth`, `url` or `migration`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable { .. } => "unavailable",
            StoreError::Failed { .. } => "failed",
            StoreError::Auth { .. } => "auth",
            StoreError::Url { .. } => "url",
            StoreError::Migration { .. } => "migration",
        }
    }
}

/// A lease lock per key with a fencing token.
///
/// Tokens strictly increase per key across every grant, also across store restarts (see the
/// module docs). A lease not renewed within its time-to-live expires, and the key may be
/// granted to someone else with a larger token.
#[async_trait]
pub trait LockStore: Send + Sync + fmt::Debug {
    /// The backend's name in metrics (`memory`, `redis`, `postgres`).
    fn backend(&self) -> &'static str {
        "custom"
    }

    /// Takes the lock of `key` for `ttl` if nobody holds it: `Some(token)` when granted,
    /// `None` when another holder's lease is still running.
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<u64>, StoreError>;
    /// Extends the lease of the grant `token` to `ttl` from now; `false` when the lease has
    /// already expired or the key was granted to someone else.
    async fn renew(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError>;
    /// Gives up the grant `token`; releasing a lease already lost is not an error.
    async fn release(&self, key: &str, token: u64) -> Result<(), StoreError>;
    /// The fencing check of a write made under `token`: accepted (and remembered) when no
    /// larger token of `key` was accepted before, refused otherwise.
    async fn fence(&self, key: &str, token: u64) -> Result<bool, StoreError>;
}

/// The state of a message id when a worker asks to handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The id is reserved for the caller: handle the message, then complete or release.
    Reserved,
    /// Another worker holds a running reservation: wait and ask again.
    InProgress,
    /// The id was handled successfully before: drop the message as a duplicate.
    Completed,
}

/// Two-phase deduplication of message ids: `reserve` before the handler, `complete` after it
/// succeeded, `release` when it failed. An id is never marked before its handler succeeded;
/// a reservation whose holder crashed expires after its lease.
#[async_trait]
pub trait DedupStore: Send + Sync + fmt::Debug {
    /// The backend's name in metrics (`memory`, `redis`, `postgres`).
    fn backend(&self) -> &'static str {
        "custom"
    }

    /// Reserves `id` for `owner` for `lease`, unless it is completed or reserved by a
    /// running holder.
    async fn reserve(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Reservation, StoreError>;
    /// Marks `id` as handled, remembered for `ttl`.
    async fn complete(&self, id: &str, owner: &str, ttl: Duration) -> Result<(), StoreError>;
    /// Drops `owner`'s reservation of `id` (the handler failed); a completed id stays
    /// completed and another owner's reservation stays.
    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError>;
}

/// The last applied version per key, for dropping stale messages.
#[async_trait]
pub trait VersionStore: Send + Sync + fmt::Debug {
    /// The backend's name in metrics (`memory`, `redis`, `postgres`).
    fn backend(&self) -> &'static str {
        "custom"
    }

    /// The last applied version of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<i64>, StoreError>;
    /// Records `version` as applied if it is newer than the stored one (compare-and-set);
    /// `true` when it was stored.
    async fn advance(&self, key: &str, version: i64) -> Result<bool, StoreError>;
}

/// A rate limit: `per_second` permits a second after bursts of at most `burst` (a burst of 0
/// counts as 1), shared by every worker that uses the same store and `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// The limit's name: workers with the same name share it.
    pub name: String,
    /// Permits a second (a positive finite number).
    pub per_second: f64,
    /// Permits that may be taken at once.
    pub burst: u32,
}

/// Permits of named rate limits (GCRA, reservation style): a permit is always granted, with
/// the time to wait before using it.
#[async_trait]
pub trait RateLimitStore: Send + Sync + fmt::Debug {
    /// The backend's name in metrics (`memory`, `redis`).
    fn backend(&self) -> &'static str {
        "custom"
    }
    /// Takes a permit of `limit`; returns how long to wait before using it. At most `burst`
    /// permits are usable at once, then `per_second` a second.
    async fn reserve(&self, limit: &RateLimit) -> Result<Duration, StoreError>;
}

/// The once-only path: transactions in which the message's records are written before the
/// handler's own statements (see [`OnceRecord`]), so both commit or roll back together.
#[async_trait]
pub trait TransactionalStore: Send + Sync + fmt::Debug {
    /// Begins a transaction and records `record` in it; see [`OnceStart`] for the outcomes.
    async fn begin_once(&self, record: &OnceRecord) -> Result<OnceStart, StoreError>;
    /// Begins one transaction for a batch's `records` (ids, version keys and lock keys
    /// distinct) and checks them all in one round trip; nothing is recorded until
    /// [`OnceTransaction::commit_batch`] records the applied ones. A store without batches
    /// refuses, and a batch handler's `transaction()` fails with the reason.
    async fn begin_once_batch(&self, records: &[OnceRecord]) -> Result<OnceBatch, StoreError> {
        let _ = records;
        Err(StoreError::Failed {
            backend: "custom",
            message:
                "this transactional store has no batch transactions (implement `begin_once_batch`)"
                    .to_owned(),
            cause: None,
        })
    }
    /// Whether the database answers (an attempt that used a transaction and failed is an
    /// outage, with no attempt spent, when it does not).
    async fn answers(&self) -> Result<(), StoreError>;
}

/// The text form of a record key in store keys: UTF-8 as is, other bytes as `hex:<hex>`.
pub fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            let mut out = String::with_capacity(4 + key.len() * 2);
            out.push_str("hex:");
            for b in key {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

/// Whole milliseconds of `d`, at least 1 (stores refuse a zero time-to-live).
pub(crate) fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_are_not_utf8_are_hex_encoded() {
        assert_eq!(key_text(b"acct-1"), "acct-1");
        assert_eq!(key_text(&[0xff, 0x00, 0x10]), "hex:ff0010");
    }
}
