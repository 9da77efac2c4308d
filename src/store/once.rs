//! What a transactional store records in a handler's transaction, and how the transaction
//! starts: the backend-neutral half of the once-only path ([`super::TransactionalStore`]).

use super::postgres::OnceTransaction;

/// What steadfast records in a handler's transaction before handing it over.
#[derive(Debug, Clone, Default)]
pub struct OnceRecord {
    /// The message id, recorded once: a second transaction with it is a duplicate.
    pub id: Option<String>,
    /// The key whose version the message carries (set together with `version`).
    pub version_key: Option<String>,
    /// The message's version, which must be newer than the key's applied version.
    pub version: Option<i64>,
    /// The lock key and the fencing token the message is handled under. Postgres keeps a
    /// key's version and token in one row: the worker gives both the same key; a record whose
    /// lock key differs from its version key locks two rows, and two such transactions that
    /// cross keys can deadlock (Postgres ends one of them, which fails as transient).
    pub fence: Option<(String, u64)>,
}

/// How a transactional attempt starts.
#[derive(Debug)]
pub enum OnceStart {
    /// Nothing refused the message: run the handler's statements in the transaction, then
    /// commit it.
    Apply(OnceTransaction),
    /// The id was applied by a committed transaction before.
    Duplicate,
    /// A version at least as new was applied for the key before.
    Stale,
    /// A larger fencing token was accepted for the lock key: the lease was lost.
    Fenced,
}

/// What the checks at the start of a batch's transaction found for one of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnceVerdict {
    /// Nothing refused the record: the handler applies it in the transaction.
    Apply,
    /// Its id was applied by a committed transaction before.
    Duplicate,
    /// A version at least as new was applied for its key before.
    Stale,
    /// A larger fencing token was accepted for its lock key: the lease was lost.
    Fenced,
}

/// How a batch's transaction starts: a verdict per record, in the order given, and the open
/// transaction when at least one record is to be applied.
#[derive(Debug)]
pub struct OnceBatch {
    /// Open while some record's verdict is [`OnceVerdict::Apply`]; rolled back otherwise.
    pub transaction: Option<OnceTransaction>,
    /// One verdict per record.
    pub verdicts: Vec<OnceVerdict>,
}
