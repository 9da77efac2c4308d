//! A lease lock per key in `steadfast_locks`; the largest fencing token accepted per key in
//! `steadfast_versions`, beside the key's applied version.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::version::NO_VERSION;
use super::{column, execute, query_opt, token_param, token_value, ttl_param};
use crate::store::{LockStore, StoreError};

/// [`LockStore`] in Postgres: a key's row stays after a release, so its token keeps growing
/// by one per grant; leases run on the database clock.
#[derive(Clone)]
pub struct PostgresLockStore {
    pool: Pool,
    schema: String,
    acquire: String,
    renew: String,
    release: String,
    fence: String,
}

impl PostgresLockStore {
    /// The lock store of `schema` (a checked plain identifier).
    pub(crate) fn new(pool: Pool, schema: &str) -> Self {
        Self {
            pool,
            schema: schema.to_owned(),
            acquire: format!(
                "INSERT INTO \"{schema}\".steadfast_locks AS l (lock_key, token, expires_at)
                 VALUES ($1, 1, now() + $2::bigint * interval '1 millisecond')
                 ON CONFLICT (lock_key) DO UPDATE
                     SET token = l.token + 1, expires_at = EXCLUDED.expires_at
                     WHERE l.expires_at IS NULL OR l.expires_at <= now()
                 RETURNING token"
            ),
            renew: format!(
                "UPDATE \"{schema}\".steadfast_locks
                 SET expires_at = now() + $3::bigint * interval '1 millisecond'
                 WHERE lock_key = $1 AND token = $2 AND expires_at > now()"
            ),
            release: format!(
                "UPDATE \"{schema}\".steadfast_locks SET expires_at = NULL
                 WHERE lock_key = $1 AND token = $2"
            ),
            fence: fence_sql(schema),
        }
    }
}

/// The fencing upsert: accepted (one row) when no larger token of the key was accepted. The
/// token shares the key's row with its applied version, which it leaves as it is (a new row
/// holds no version: [`NO_VERSION`]).
pub(crate) fn fence_sql(schema: &str) -> String {
    format!(
        "INSERT INTO \"{schema}\".steadfast_versions AS v (version_key, version, token)
         VALUES ($1, {NO_VERSION}, $2)
         ON CONFLICT (version_key) DO UPDATE SET token = EXCLUDED.token
             WHERE v.token IS NULL OR v.token <= EXCLUDED.token"
    )
}

#[async_trait]
impl LockStore for PostgresLockStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let row = query_opt(&self.pool, &self.acquire, &[&key, &ttl_param(ttl)]).await?;
        row.map(|row| token_value(column(&row, "token")?))
            .transpose()
    }

    async fn renew(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        let token = token_param(token)?;
        let renewed = execute(&self.pool, &self.renew, &[&key, &token, &ttl_param(ttl)]).await?;
        Ok(renewed == 1)
    }

    async fn release(&self, key: &str, token: u64) -> Result<(), StoreError> {
        let token = token_param(token)?;
        execute(&self.pool, &self.release, &[&key, &token]).await?;
        Ok(())
    }

    async fn fence(&self, key: &str, token: u64) -> Result<bool, StoreError> {
        let token = token_param(token)?;
        Ok(execute(&self.pool, &self.fence, &[&key, &token]).await? == 1)
    }
}

impl fmt::Debug for PostgresLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLockStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}
