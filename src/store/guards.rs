//! The three guards before a handler (stale check, key lock, dedup reservation) and the three
//! after it (dedup completion, version advance, lock release), each set in one store call:
//! what a backend that holds all three in one place offers instead of six separate calls.
//!
//! The calls keep the semantics of the separate stores ([`super::VersionStore`],
//! [`super::LockStore`], [`super::DedupStore`]) and use the same keys, so a worker using
//! them and one using the separate calls can share a store.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// What the guards before a handler are asked for one delivery.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    /// The key's store key (lock and version).
    pub(crate) key: &'a str,
    /// The message's version, when the stale check is on and the message has one.
    pub(crate) version: Option<i64>,
    /// The message's id, when dedup is on and the message has one: reserved for `owner`.
    pub(crate) id: Option<&'a str>,
    /// Who reserves the id.
    pub(crate) owner: &'a str,
    /// The lock's lease.
    pub(crate) lock_lease: Duration,
    /// The dedup reservation's lease.
    pub(crate) dedup_lease: Duration,
}

/// The answer of the guards before a handler, checked in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entered {
    /// The key's applied version is this one, not older than the message's: nothing taken.
    Stale(i64),
    /// Another holder's lease on the key runs: nothing taken, ask again.
    Held,
    /// The id was handled before: nothing taken.
    Duplicate,
    /// Another owner's reservation of the id runs: nothing taken, ask again.
    InProgress,
    /// The lock is granted with this fencing token, and the id (if any) reserved.
    Granted(u64),
}

/// What the guards after a handler do for one delivery.
#[derive(Debug, Clone)]
pub(crate) struct Exit<'a> {
    /// The key's store key.
    pub(crate) key: &'a str,
    /// The lock grant to release.
    pub(crate) token: u64,
    /// The id and its owner: completed (remembered for `ttl`) when `completed` is set,
    /// released otherwise.
    pub(crate) id: Option<(&'a str, &'a str)>,
    /// Whether the handler succeeded (the id is completed rather than released).
    pub(crate) completed: bool,
    /// How long a completed id is remembered.
    pub(crate) ttl: Duration,
    /// The version to record as applied (compare-and-set), if any.
    pub(crate) advance: Option<i64>,
}

/// The guards of one delivery in one call each way; see the module docs.
#[async_trait]
pub(crate) trait GuardStore: Send + Sync + fmt::Debug {
    /// The backend's name in metrics.
    fn backend(&self) -> &'static str;
    /// Checks the version, takes the lock and reserves the id, all or nothing.
    async fn enter(&self, entry: &Entry<'_>) -> Result<Entered, StoreError>;
    /// Extends the lock grant `token` to `lock_lease` and `owner`'s reservation of `id` to
    /// `dedup_lease`: whether the lock (first) and the reservation (second) were still held.
    async fn renew(&self, entry: &Entry<'_>, token: u64) -> Result<(bool, bool), StoreError>;
    /// Completes or releases the id, advances the version and releases the lock, at once.
    async fn exit(&self, exit: &Exit<'_>) -> Result<(), StoreError>;
}
