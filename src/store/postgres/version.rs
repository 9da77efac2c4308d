//! The last applied version per key in `steadfast_versions`. Reads of concurrent callers go
//! out as one `SELECT … = ANY($1)` (see [`Coalesced`]): a batch's records, checked for
//! staleness one by one, take one pooled connection and one round trip, not one each.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::{column, execute, query};
use crate::store::coalesce::{Coalesced, Combine};
use crate::store::{StoreError, VersionStore};

/// [`VersionStore`] in Postgres; the transactional path advances the same table.
#[derive(Clone)]
pub struct PostgresVersionStore {
    pool: Pool,
    schema: String,
    reads: Coalesced<VersionReads>,
    advance: String,
}

/// Version reads as one statement.
#[derive(Clone)]
struct VersionReads {
    pool: Pool,
    sql: String,
}

impl Combine for VersionReads {
    /// A version key.
    type Request = String;
    /// Its version, if one is stored.
    type Answer = Option<i64>;
    const BACKEND: &'static str = "postgres";

    async fn run(&self, keys: Vec<String>) -> Result<Vec<Option<i64>>, StoreError> {
        let rows = query(&self.pool, &self.sql, &[&keys]).await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key: String = column(row, "version_key")?;
            found.insert(key, column::<i64>(row, "version")?);
        }
        Ok(keys.iter().map(|k| found.get(k).copied()).collect())
    }
}

impl PostgresVersionStore {
    /// The version store of `schema` (a checked plain identifier).
    pub(crate) fn new(pool: Pool, schema: &str) -> Self {
        Self {
            reads: Coalesced::new(VersionReads {
                pool: pool.clone(),
                sql: format!(
                    "SELECT version_key, version FROM \"{schema}\".steadfast_versions
                     WHERE version_key = ANY($1) AND version > {NO_VERSION}"
                ),
            }),
            pool,
            schema: schema.to_owned(),
            advance: advance_sql(schema),
        }
    }
}

/// The stored version of a key whose row holds only a fencing token (migration 2): the
/// smallest `bigint`, so every version is newer, for this release and the one before alike.
/// A message whose version is that number counts as having none.
pub(crate) const NO_VERSION: i64 = i64::MIN;

/// The compare-and-set upsert: stored (one row) when newer than the stored version (every
/// version is newer than [`NO_VERSION`]).
pub(crate) fn advance_sql(schema: &str) -> String {
    format!(
        "INSERT INTO \"{schema}\".steadfast_versions AS v (version_key, version) VALUES ($1, $2)
         ON CONFLICT (version_key) DO UPDATE SET version = EXCLUDED.version
             WHERE v.version < EXCLUDED.version"
    )
}

#[async_trait]
impl VersionStore for PostgresVersionStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn get(&self, key: &str) -> Result<Option<i64>, StoreError> {
        self.reads.call(key.to_owned()).await
    }

    async fn advance(&self, key: &str, version: i64) -> Result<bool, StoreError> {
        Ok(execute(&self.pool, &self.advance, &[&key, &version]).await? == 1)
    }
}

impl fmt::Debug for PostgresVersionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresVersionStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::postgres::PostgresStores;
    use crate::store::VersionStore;

    /// Concurrent reads share statements, and each caller gets its own key's version (keys
    /// stored, keys never stored, one key asked for twice).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_share_statements_and_keep_their_own_answers() {
        let schema = format!("versions_{}", uuid::Uuid::new_v4().simple());
        let stores = PostgresStores::connect("postgres://postgres@127.0.0.1:5432/test", &schema)
            .await
            .unwrap_or_else(|e| {
                panic!("start PostgreSQL on 127.0.0.1:5432 (scripts/services.sh): {e}")
            });
        let versions = stores.version_store();
        for i in 0..100i64 {
            assert!(versions
                .advance(&format!("k{i}"), i * 3)
                .await
                .expect("advance"));
        }
        let mut keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        keys.push("k7".to_owned());
        let answers = futures::future::join_all(keys.iter().map(|key| {
            let versions = versions.clone();
            async move { versions.get(key).await }
        }))
        .await;
        for (key, answer) in keys.iter().zip(answers) {
            let i: i64 = key[1..].parse().expect("numbered key");
            let expected = (i < 100).then_some(i * 3);
            assert_eq!(answer.expect("get"), expected, "{key}");
        }
        assert!(
            versions.reads.operations() < keys.len() as u64,
            "{} concurrent reads took {} statements",
            keys.len(),
            versions.reads.operations()
        );
        let client = stores.pool().get().await.expect("connection");
        client
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .expect("schema dropped");
    }
}
