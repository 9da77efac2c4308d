//! Two-phase deduplication of message ids in `steadfast_dedup`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::{column, execute, query_opt, ttl_param};
use crate::store::{DedupStore, Reservation, StoreError};

/// [`DedupStore`] in Postgres: a row is a running reservation or a completion, both until
/// their `expires_at` on the database clock. Expired rows are overwritten when their id
/// comes again; nothing deletes them otherwise.
#[derive(Clone)]
pub struct PostgresDedupStore {
    pool: Pool,
    schema: String,
    reserve: String,
    complete: String,
    release: String,
}

impl PostgresDedupStore {
    /// The dedup store of `schema` (a checked plain identifier).
    pub(crate) fn new(pool: Pool, schema: &str) -> Self {
        Self {
            pool,
            schema: schema.to_owned(),
            // The upsert takes the id when it is absent, expired, or reserved by the caller
            // itself; when it refuses, the row as the statement found it tells a live
            // completion from another owner's running reservation. A row committed by a
            // concurrent statement after this one started is refused but not seen: that
            // answers `InProgress`, and the caller asks again.
            reserve: format!(
                "WITH reserved AS (
                     INSERT INTO \"{schema}\".steadfast_dedup AS d (id, owner, completed, expires_at)
                     VALUES ($1, $2, false, now() + $3::bigint * interval '1 millisecond')
                     ON CONFLICT (id) DO UPDATE
                         SET owner = EXCLUDED.owner, completed = false,
                             expires_at = EXCLUDED.expires_at
                         WHERE d.expires_at <= now()
                            OR (NOT d.completed AND d.owner = EXCLUDED.owner)
                     RETURNING true AS reserved
                 )
                 SELECT EXISTS (SELECT 1 FROM reserved) AS reserved,
                        EXISTS (SELECT 1 FROM \"{schema}\".steadfast_dedup
                                WHERE id = $1 AND completed AND expires_at > now()) AS completed"
            ),
            complete: format!(
                "INSERT INTO \"{schema}\".steadfast_dedup (id, owner, completed, expires_at)
                 VALUES ($1, $2, true, now() + $3::bigint * interval '1 millisecond')
                 ON CONFLICT (id) DO UPDATE
                     SET owner = EXCLUDED.owner, completed = true,
                         expires_at = EXCLUDED.expires_at"
            ),
            release: format!(
                "DELETE FROM \"{schema}\".steadfast_dedup
                 WHERE id = $1 AND owner = $2 AND NOT completed"
            ),
        }
    }
}

#[async_trait]
impl DedupStore for PostgresDedupStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn reserve(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Reservation, StoreError> {
        let row = query_opt(&self.pool, &self.reserve, &[&id, &owner, &ttl_param(lease)])
            .await?
            .ok_or_else(|| StoreError::Failed {
                backend: "postgres",
                message: "the reservation statement returned no row".to_owned(),
                cause: None,
            })?;
        Ok(if column(&row, "reserved")? {
            Reservation::Reserved
        } else if column(&row, "completed")? {
            Reservation::Completed
        } else {
            Reservation::InProgress
        })
    }

    async fn complete(&self, id: &str, owner: &str, ttl: Duration) -> Result<(), StoreError> {
        execute(&self.pool, &self.complete, &[&id, &owner, &ttl_param(ttl)]).await?;
        Ok(())
    }

    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        execute(&self.pool, &self.release, &[&id, &owner]).await?;
        Ok(())
    }
}

impl fmt::Debug for PostgresDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDedupStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}
