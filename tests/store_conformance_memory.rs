//! The store conformance suite against the memory backends.

use std::sync::Arc;

use steadfast::store::memory::{
    MemoryDedupStore, MemoryLockStore, MemoryRateLimitStore, MemoryVersionStore,
};
use steadfast::store::{DedupStore, LockStore, RateLimitStore, VersionStore};

fn lock() -> Arc<dyn LockStore> {
    Arc::new(MemoryLockStore::new())
}
fn dedup() -> Arc<dyn DedupStore> {
    Arc::new(MemoryDedupStore::new())
}
fn version() -> Arc<dyn VersionStore> {
    Arc::new(MemoryVersionStore::new())
}

fn rate() -> Arc<dyn RateLimitStore> {
    Arc::new(MemoryRateLimitStore::new())
}

steadfast::store_conformance_tests!(lock: lock(), dedup: dedup(), version: version(), rate: rate());
