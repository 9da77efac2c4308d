//! The store conformance suite against the memory backends.

use crate::conformance;

use std::sync::Arc;

use steadfast::store::memory::{MemoryDedupStore, MemoryLockStore, MemoryVersionStore};
use steadfast::store::{DedupStore, LockStore, VersionStore};

fn lock() -> Arc<dyn LockStore> {
    Arc::new(MemoryLockStore::new())
}
fn dedup() -> Arc<dyn DedupStore> {
    Arc::new(MemoryDedupStore::new())
}
fn version() -> Arc<dyn VersionStore> {
    Arc::new(MemoryVersionStore::new())
}

conformance_tests!(lock(), dedup(), version());
