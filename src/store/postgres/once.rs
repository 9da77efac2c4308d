//! Transactional idempotency: steadfast records a message's id, version and fencing token in
//! a Postgres transaction and hands that transaction to the handler, so that the handler's
//! writes and the records commit or roll back together.
//!
//! This is the recommended path for side effects that land in Postgres: a redelivered
//! message finds its id recorded ([`OnceStart::Duplicate`]), an older version finds a newer
//! one applied ([`OnceStart::Stale`]), and a writer whose lock was taken over finds a larger
//! token accepted ([`OnceStart::Fenced`]). Nothing is recorded for a transaction that does not
//! commit.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use deadpool_postgres::{ClientWrapper, Object};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::error::{classify, describe};
use super::{lock, token_param, version, PostgresStores};
use crate::store::{OnceBatch, OnceRecord, OnceStart, StoreError, TransactionalStore};

/// A handler's open transaction in which steadfast's records are already written.
///
/// Run statements through [`client`](Self::client) (or the `Deref` to
/// [`tokio_postgres::Client`]), then [`commit`](Self::commit). Dropped without `commit` or
/// [`rollback`](Self::rollback), its connection is closed instead of returned to the pool,
/// and the server rolls the transaction back.
pub struct OnceTransaction {
    /// The connection with the open transaction (boxed: it is large); `None` once ended.
    pub(super) client: Option<Box<Object>>,
    /// The stores' schema (a batch's records are written there at its commit).
    pub(super) schema: Arc<str>,
}

/// What the checks at the start of a transaction found.
enum Verdict {
    Apply,
    Refused(OnceStart),
}

impl PostgresStores {
    /// Begins a transaction and records `record` in it: the fencing token (refused when a
    /// larger one was accepted), the id (refused when recorded before) and the version
    /// (refused unless newer than the applied one), all in one round trip. When several
    /// refuse, [`OnceStart::Fenced`] wins over [`OnceStart::Duplicate`] over
    /// [`OnceStart::Stale`]; a refused transaction is rolled back.
    ///
    /// A transaction holding the same id, lock key or version key makes this one wait for it
    /// to end: once it commits, this one is refused; once it rolls back, this one applies.
    pub async fn begin_once(&self, record: &OnceRecord) -> Result<OnceStart, StoreError> {
        // Held by the transaction from the start: were this call cancelled halfway, dropping
        // it closes the connection rather than pooling one with a transaction open.
        let tx = OnceTransaction {
            client: Some(Box::new(self.client().await?)),
            schema: self.schema.clone(),
        };
        match start(tx.pooled(), &self.schema, record).await {
            Ok(Verdict::Apply) => Ok(OnceStart::Apply(tx)),
            Ok(Verdict::Refused(refusal)) => {
                // The refusal stands whether or not the rollback gets through.
                tx.abandon().await;
                Ok(refusal)
            }
            Err(e) => {
                tx.abandon().await;
                Err(e)
            }
        }
    }
}

/// Opens the transaction on `client` and runs the checks `record` asks for.
async fn start(
    client: &ClientWrapper,
    schema: &str,
    record: &OnceRecord,
) -> Result<Verdict, StoreError> {
    let fence = match &record.fence {
        Some((key, token)) => Some((key, token_param(*token)?)),
        None => None,
    };
    let version = match (&record.version_key, record.version) {
        (Some(key), Some(version)) => Some((key, version)),
        (None, None) => None,
        _ => {
            return Err(StoreError::Failed {
                backend: "postgres",
                message: "a once record needs both a version key and a version, or neither"
                    .to_owned(),
                cause: None,
            })
        }
    };
    let fence_sql = fence.as_ref().map(|_| lock::fence_sql(schema));
    let id_sql = record.id.as_ref().map(|_| {
        format!(
            "INSERT INTO \"{schema}\".steadfast_processed (id) VALUES ($1) ON CONFLICT DO NOTHING"
        )
    });
    let version_sql = version.as_ref().map(|_| version::advance_sql(schema));
    // Prepared once per connection; a first use prepares all three in one round trip.
    let (fence_statement, id_statement, version_statement) = futures::try_join!(
        prepare(client, fence_sql.as_deref()),
        prepare(client, id_sql.as_deref()),
        prepare(client, version_sql.as_deref()),
    )
    .map_err(StoreError::from)?;
    let fence_params: Option<[&(dyn ToSql + Sync); 2]> = fence
        .as_ref()
        .map(|(key, token)| [*key as &(dyn ToSql + Sync), token]);
    let id_params: Option<[&(dyn ToSql + Sync); 1]> =
        record.id.as_ref().map(|id| [id as &(dyn ToSql + Sync)]);
    let version_params: Option<[&(dyn ToSql + Sync); 2]> = version
        .as_ref()
        .map(|(key, version)| [*key as &(dyn ToSql + Sync), version]);
    // Each request goes out when its future is first polled, in this order, without
    // waiting for the answers before it: one round trip.
    let ((), fenced, recorded, advanced) = futures::try_join!(
        client.batch_execute("BEGIN"),
        run(client, fence_statement.as_ref(), fence_params.as_ref()),
        run(client, id_statement.as_ref(), id_params.as_ref()),
        run(client, version_statement.as_ref(), version_params.as_ref()),
    )
    .map_err(StoreError::from)?;
    Ok(if fenced == Some(0) {
        Verdict::Refused(OnceStart::Fenced)
    } else if recorded == Some(0) {
        Verdict::Refused(OnceStart::Duplicate)
    } else if advanced == Some(0) {
        Verdict::Refused(OnceStart::Stale)
    } else {
        Verdict::Apply
    })
}

/// The cached prepared statement of `sql`, when there is one to run.
pub(super) async fn prepare(
    client: &ClientWrapper,
    sql: Option<&str>,
) -> Result<Option<Statement>, tokio_postgres::Error> {
    match sql {
        Some(sql) => client.prepare_cached(sql).await.map(Some),
        None => Ok(None),
    }
}

/// Runs `statement` with `params` when there is one; the number of rows it touched.
async fn run<const N: usize>(
    client: &Client,
    statement: Option<&Statement>,
    params: Option<&[&(dyn ToSql + Sync); N]>,
) -> Result<Option<u64>, tokio_postgres::Error> {
    match (statement, params) {
        (Some(statement), Some(params)) => client.execute(statement, params).await.map(Some),
        _ => Ok(None),
    }
}

impl OnceTransaction {
    /// The connection of the transaction: the handler's statements run through it.
    pub fn client(&self) -> &Client {
        self.pooled()
    }

    /// Like [`Client::prepare`], but prepared once per pooled connection.
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, tokio_postgres::Error> {
        self.pooled().prepare_cached(query).await
    }

    /// Commits the handler's writes together with steadfast's records.
    ///
    /// A transaction in which a statement failed commits nothing: that is
    /// [`StoreError::Failed`]. [`StoreError::Unavailable`] means the connection broke and
    /// whether the commit happened is unknown; a retry then finds the id recorded if it did.
    pub async fn commit(self) -> Result<(), StoreError> {
        // `SELECT 1` fails in a transaction a failed statement aborted, where a bare
        // `COMMIT` would roll back and report no error.
        match self.pooled().batch_execute("SELECT 1; COMMIT").await {
            Ok(()) => {
                self.release();
                Ok(())
            }
            Err(e) => {
                let error = if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) {
                    StoreError::Failed {
                        backend: "postgres",
                        message: "a statement of the transaction failed earlier, so it was \
                                  rolled back and nothing was committed"
                            .to_owned(),
                        cause: None,
                    }
                } else {
                    classify(&e)
                };
                self.abandon().await;
                Err(error)
            }
        }
    }

    /// Rolls back the handler's writes together with steadfast's records.
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.pooled().batch_execute("ROLLBACK").await {
            Ok(()) => {
                self.release();
                Ok(())
            }
            // Dropped here, the connection closes and the server rolls back.
            Err(e) => Err(StoreError::from(e)),
        }
    }

    /// Ends whatever transaction is open and returns the connection to the pool, or, when
    /// even that fails, closes it (the server then rolls back).
    pub(super) async fn abandon(self) {
        match self.pooled().batch_execute("ROLLBACK").await {
            Ok(()) => self.release(),
            Err(e) => tracing::debug!(
                error = %describe(&e),
                "closing a connection whose rollback failed"
            ),
        }
    }

    /// Returns the connection, with no transaction open, to the pool.
    fn release(mut self) {
        drop(self.client.take());
    }

    /// The pooled connection, present until the transaction is consumed.
    pub(super) fn pooled(&self) -> &ClientWrapper {
        self.client
            .as_ref()
            .expect("the connection stays until the transaction is consumed")
    }
}

impl Deref for OnceTransaction {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.pooled()
    }
}

impl Drop for OnceTransaction {
    fn drop(&mut self) {
        // Never back to the pool with an open transaction: detached, the connection closes.
        if let Some(client) = self.client.take() {
            drop(Object::take(*client));
        }
    }
}

impl fmt::Debug for OnceTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnceTransaction")
            .field("open", &self.client.is_some())
            .finish()
    }
}

#[async_trait::async_trait]
impl TransactionalStore for PostgresStores {
    async fn begin_once(&self, record: &OnceRecord) -> Result<OnceStart, StoreError> {
        PostgresStores::begin_once(self, record).await
    }
    async fn begin_once_batch(&self, records: &[OnceRecord]) -> Result<OnceBatch, StoreError> {
        PostgresStores::begin_once_batch(self, records).await
    }
    async fn answers(&self) -> Result<(), StoreError> {
        PostgresStores::answers(self).await
    }
}
