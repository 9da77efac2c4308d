//! The store conformance suite against the Postgres backends, each test in a fresh schema.

use std::sync::Arc;

use steadfast::store::postgres::PostgresStores;
use steadfast::store::{DedupStore, LockStore, VersionStore};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Stores in a schema of their own.
async fn stores() -> PostgresStores {
    let schema = format!("sf_test_{}", uuid::Uuid::new_v4().simple());
    PostgresStores::connect(URL, &schema)
        .await
        .unwrap_or_else(|e| panic!("start PostgreSQL on 127.0.0.1:5432 (scripts/services.sh): {e}"))
}

async fn lock() -> Arc<dyn LockStore> {
    Arc::new(stores().await.lock_store())
}
async fn dedup() -> Arc<dyn DedupStore> {
    Arc::new(stores().await.dedup_store())
}
async fn version() -> Arc<dyn VersionStore> {
    Arc::new(stores().await.version_store())
}

steadfast::store_conformance_tests!(
    lock: lock().await,
    dedup: dedup().await,
    version: version().await,
);
