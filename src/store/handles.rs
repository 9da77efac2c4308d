//! The stores a worker's policies use, as typed handles: given to the builder, or connected
//! from the configured URLs.

use std::sync::Arc;

use super::{DedupStore, LockStore, RateLimitStore, TransactionalStore, VersionStore};

/// One handle per kind of store; `None` where the worker has none (its policy is off, unless
/// the configuration names a store URL for it).
#[derive(Debug, Clone, Default)]
pub struct StoreHandles {
    /// The key lock's store.
    pub lock: Option<Arc<dyn LockStore>>,
    /// The dedup store.
    pub dedup: Option<Arc<dyn DedupStore>>,
    /// The stale-drop policy's version store.
    pub version: Option<Arc<dyn VersionStore>>,
    /// The shared rate limit's store.
    pub rate: Option<Arc<dyn RateLimitStore>>,
    /// The transactional store handed to handlers ([`crate::Context::transaction`]).
    pub transactions: Option<Arc<dyn TransactionalStore>>,
}
