//! What the protective policies learned about a record on its way in, carried with the
//! envelope to the layers inside them and to the handler's context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::DropReason;

/// The facts the stale, lock and dedup policies work on, read once per delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The key as the stores know it: `<group>/<original topic>/<record key>`.
    pub store_key: String,
    /// The message's version, when its type declares one and the payload decodes.
    pub version: Option<i64>,
    /// The message's id as the stores know it (`<group>/<id>`), when its type declares one.
    pub id: Option<String>,
}

/// The lease of a key lock held while a record is handled.
#[derive(Debug)]
pub struct LeaseState {
    /// The fencing token of the grant.
    pub token: u64,
    lost: AtomicBool,
}

impl LeaseState {
    /// A running lease with `token`.
    pub fn new(token: u64) -> Self {
        LeaseState {
            token,
            lost: AtomicBool::new(false),
        }
    }
    /// Whether the lease ran out or a newer holder's write was seen.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
    /// Marks the lease lost.
    pub fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }
}

/// What the handler's context reports back to the layers around it.
#[derive(Debug, Default)]
pub struct HandlerNotes {
    /// The transactional store recorded the id and version in the handler's committed
    /// transaction: the layers need not record them again.
    pub recorded: AtomicBool,
    /// The transactional store found the message already applied or stale.
    pub skipped: Mutex<Option<DropReason>>,
    /// The handler asked for a database transaction (a failure may be the database's).
    pub used_transaction: AtomicBool,
    /// A transaction was handed over and neither committed nor rolled back yet.
    pub handed: AtomicBool,
}

/// See the module docs. Empty until a policy fills it.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Set by the first policy that needs them.
    pub facts: Option<Arc<Facts>>,
    /// Set by the key-lock policy while it holds the key.
    pub lease: Option<Arc<LeaseState>>,
    /// Shared with the handler's context for one delivery.
    pub notes: Option<Arc<HandlerNotes>>,
}
