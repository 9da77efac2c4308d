//! The last applied version per key in `steadfast_versions`.

use std::fmt;

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::{column, execute, query_opt};
use crate::store::{StoreError, VersionStore};

/// [`VersionStore`] in Postgres; the transactional path advances the same table.
#[derive(Clone)]
pub struct PostgresVersionStore {
    pool: Pool,
    schema: String,
    get: String,
    advance: String,
}

impl PostgresVersionStore {
    /// The version store of `schema` (a checked plain identifier).
    pub(crate) fn new(pool: Pool, schema: &str) -> Self {
        Self {
            pool,
            schema: schema.to_owned(),
            get: format!(
                "SELECT version FROM \"{schema}\".steadfast_versions WHERE version_key = $1"
            ),
            advance: advance_sql(schema),
        }
    }
}

/// The compare-and-set upsert: stored (one row) when newer than the stored version.
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
        let row = query_opt(&self.pool, &self.get, &[&key]).await?;
        row.map(|row| column(&row, "version")).transpose()
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
