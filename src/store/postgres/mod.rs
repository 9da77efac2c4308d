//! Postgres stores (`deadpool-postgres` + `tokio-postgres`), their schema migrations, and the
//! transactional idempotency store.
//!
//! [`PostgresStores::connect`] checks the URL and the schema, builds a connection pool and
//! applies the migrations of `migrations/` to the schema; the lock, dedup and version stores
//! share that pool. Each store call is one statement, prepared once per connection. Leases
//! are measured by the database clock, never the client's.
//!
//! For side effects that land in the same Postgres, [`PostgresStores::begin_once`] records
//! the message id, its version and its fencing token in the handler's own transaction, so
//! that the effects and the records commit or roll back together.

#[cfg(test)]
mod auth_tests;
mod config;
mod dedup;
mod error;
mod lock;
mod migrate;
#[cfg(test)]
mod migration_tests;
mod once;
mod once_batch;
mod version;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, Object, Pool, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

pub use self::dedup::PostgresDedupStore;
pub use self::error::classify;
use self::error::pool_unavailable;
pub use self::lock::PostgresLockStore;
pub use self::once::OnceTransaction;
pub use self::version::PostgresVersionStore;
use crate::store::{ttl_ms, StoreError};
pub use crate::store::{OnceRecord, OnceStart};

/// The most connections the pool opens unless told otherwise.
const MAX_CONNECTIONS: usize = 16;
/// How long a call waits for a free connection, for a new connection, or for a recycle
/// check before it reports the store unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(3);

/// The Postgres stores of one schema, sharing one connection pool.
#[derive(Clone)]
pub struct PostgresStores {
    pool: Pool,
    schema: Arc<str>,
}

impl PostgresStores {
    /// Connects to `url` (a `postgres://` URL or a `key=value` string, without TLS) and
    /// applies the pending migrations to `schema`, creating it if needed.
    ///
    /// A URL that does not parse or a schema that is not a plain identifier
    /// (`[a-z_][a-z0-9_]{0,62}`) is [`StoreError::Url`] (the URL shown without its password);
    /// refused credentials (a wrong password, an unknown role, a password the server asks for
    /// and the URL lacks) are [`StoreError::Auth`]; a server that does not answer within a few
    /// seconds is [`StoreError::Unavailable`]; a migration that fails is
    /// [`StoreError::Migration`].
    pub async fn connect(url: &str, schema: &str) -> Result<PostgresStores, StoreError> {
        Self::connect_sized(url, schema, MAX_CONNECTIONS).await
    }

    /// [`connect`](Self::connect) with a pool of at most `max_connections` (at least 1): a
    /// worker sizes it above its concurrency, so lock renewals and store calls do not wait
    /// behind the handlers' open transactions.
    pub async fn connect_sized(
        url: &str,
        schema: &str,
        max_connections: usize,
    ) -> Result<PostgresStores, StoreError> {
        let pg_config = config::parse_url(url)?;
        config::check_schema(url, schema)?;
        let pool = Pool::builder(Manager::new(pg_config, NoTls))
            .max_size(max_connections.max(1))
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Url {
                url: config::redact(url),
                reason: format!("cannot build a connection pool: {e}"),
            })?;
        let stores = PostgresStores {
            pool,
            schema: Arc::from(schema),
        };
        let mut client = stores.client().await?;
        let applied = migrate::migrate(&mut client, schema, migrate::MIGRATIONS).await?;
        if !applied.is_empty() {
            tracing::info!(schema, ?applied, "applied Postgres store migrations");
        }
        Ok(stores)
    }

    /// The connection pool the stores share.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The schema holding the stores' tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The lock store of this schema.
    pub fn lock_store(&self) -> PostgresLockStore {
        PostgresLockStore::new(self.pool.clone(), &self.schema)
    }

    /// The dedup store of this schema.
    pub fn dedup_store(&self) -> PostgresDedupStore {
        PostgresDedupStore::new(self.pool.clone(), &self.schema)
    }

    /// The version store of this schema.
    pub fn version_store(&self) -> PostgresVersionStore {
        PostgresVersionStore::new(self.pool.clone(), &self.schema)
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object, StoreError> {
        pooled(&self.pool).await
    }

    /// Whether the database answers: `SELECT 1` within 2 s. A pool with no free connection
    /// counts as answering (busy is not down); a refused or broken connection does not.
    pub async fn answers(&self) -> Result<(), StoreError> {
        let probe = async {
            let client = match self.pool.get().await {
                Ok(client) => client,
                Err(deadpool_postgres::PoolError::Timeout(
                    deadpool_postgres::TimeoutType::Wait,
                )) => {
                    return Ok(());
                }
                Err(e) => return Err(pool_unavailable(&e)),
            };
            client
                .simple_query("SELECT 1")
                .await
                .map_err(StoreError::from)?;
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Unavailable {
                backend: "postgres",
                message: "no answer to SELECT 1 within 2 s".to_owned(),
                cause: None,
            }),
        }
    }
}

impl fmt::Debug for PostgresStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStores")
            .field("schema", &self.schema)
            .field("connections", &status.size)
            .field("idle", &status.available)
            .field("max_connections", &status.max_size)
            .finish()
    }
}

/// A pooled connection; failing to get one means the store is unavailable.
async fn pooled(pool: &Pool) -> Result<Object, StoreError> {
    pool.get().await.map_err(|e| pool_unavailable(&e))
}

/// Runs one statement on a pooled connection; the number of rows it touched.
async fn execute(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let client = pooled(pool).await?;
    let statement = client.prepare_cached(sql).await.map_err(StoreError::from)?;
    client
        .execute(&statement, params)
        .await
        .map_err(StoreError::from)
}

/// Runs one statement on a pooled connection; the row it returned, if any.
async fn query_opt(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let client = pooled(pool).await?;
    let statement = client.prepare_cached(sql).await.map_err(StoreError::from)?;
    client
        .query_opt(&statement, params)
        .await
        .map_err(StoreError::from)
}

/// Runs one statement on a pooled connection; the rows it returned.
async fn query(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let client = pooled(pool).await?;
    let statement = client.prepare_cached(sql).await.map_err(StoreError::from)?;
    client
        .query(&statement, params)
        .await
        .map_err(StoreError::from)
}

/// A time-to-live as the whole milliseconds the statements take (`$n::bigint`).
fn ttl_param(ttl: Duration) -> i64 {
    i64::try_from(ttl_ms(ttl)).unwrap_or(i64::MAX)
}

/// A fencing token as the `bigint` the tables store.
fn token_param(token: u64) -> Result<i64, StoreError> {
    i64::try_from(token).map_err(|_| StoreError::Failed {
        backend: "postgres",
        message: format!("token {token} exceeds the largest bigint"),
        cause: None,
    })
}

/// A `bigint` token read back from a table.
fn token_value(token: i64) -> Result<u64, StoreError> {
    u64::try_from(token).map_err(|_| StoreError::Failed {
        backend: "postgres",
        message: format!("stored token {token} is negative"),
        cause: None,
    })
}

/// A value read from a row, or a `Failed` naming the column.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    name: &str,
) -> Result<T, StoreError> {
    row.try_get(name).map_err(|e| StoreError::Failed {
        backend: "postgres",
        message: format!("column `{name}`: {}", error::describe(&e)),
        cause: None,
    })
}
