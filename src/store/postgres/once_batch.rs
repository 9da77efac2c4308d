//! The once-only path for a batch of records: one transaction for the whole batch, whose
//! checks (ids applied before, versions at least as new, larger fencing tokens) run in one
//! round trip at its start, and whose records are written for the applied records only, in
//! one statement, just before it commits.
//!
//! The checks lock the version and fence rows that exist (`FOR UPDATE`, in key order), so a
//! concurrent writer of those keys waits for this transaction. An id, version or fence that
//! a concurrent transaction commits between the checks and the commit makes the commit's
//! write touch fewer rows than asked: the transaction is then rolled back whole and the
//! batch is handled again (where the checks now refuse those records).

use std::collections::{HashMap, HashSet};

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::once::{prepare, OnceTransaction};
use super::{column, token_param, token_value, PostgresStores};
use crate::store::{OnceBatch, OnceRecord, OnceVerdict, StoreError};

impl PostgresStores {
    /// Begins one transaction for `records` and checks them all in one round trip: a record
    /// whose fencing token is below the accepted one is [`OnceVerdict::Fenced`], else one
    /// whose id was applied is [`OnceVerdict::Duplicate`], else one whose version is not
    /// newer than its key's applied version is [`OnceVerdict::Stale`]. Nothing is written
    /// until [`OnceTransaction::commit_batch`].
    ///
    /// The ids, version keys and lock keys of `records` must each be distinct (a batch holds
    /// one record per key); a repeated one is refused with [`StoreError::Failed`].
    pub async fn begin_once_batch(&self, records: &[OnceRecord]) -> Result<OnceBatch, StoreError> {
        let params = Params::of(records)?;
        let tx = OnceTransaction {
            client: Some(Box::new(self.client().await?)),
            schema: self.schema.clone(),
        };
        match check(&tx, &params).await {
            Ok(found) => {
                let verdicts: Vec<OnceVerdict> = records.iter().map(|r| found.verdict(r)).collect();
                if verdicts.contains(&OnceVerdict::Apply) {
                    Ok(OnceBatch {
                        transaction: Some(tx),
                        verdicts,
                    })
                } else {
                    tx.abandon().await;
                    Ok(OnceBatch {
                        transaction: None,
                        verdicts,
                    })
                }
            }
            Err(e) => {
                tx.abandon().await;
                Err(e)
            }
        }
    }
}

/// A batch's ids, version keys and fences as statement parameters.
#[derive(Default)]
struct Params {
    ids: Vec<String>,
    version_keys: Vec<String>,
    versions: Vec<i64>,
    fence_keys: Vec<String>,
    tokens: Vec<i64>,
}

impl Params {
    /// The parameters of `records`, refusing a repeated id or key and a version without its
    /// key.
    fn of<'a>(records: impl IntoIterator<Item = &'a OnceRecord>) -> Result<Params, StoreError> {
        let mut p = Params::default();
        // Borrowed from the records: no copy of each id and key just to compare them.
        let mut seen: HashSet<(&'static str, &'a str)> = HashSet::new();
        let mut distinct = |what: &'static str, value: &'a str| {
            if seen.insert((what, value)) {
                Ok(())
            } else {
                Err(refused(format!(
                    "{what} `{value}` appears twice in one batch"
                )))
            }
        };
        for record in records {
            if let Some(id) = &record.id {
                distinct("id", id)?;
                p.ids.push(id.clone());
            }
            match (&record.version_key, record.version) {
                (Some(key), Some(version)) => {
                    distinct("version key", key)?;
                    p.version_keys.push(key.clone());
                    p.versions.push(version);
                }
                (None, None) => {}
                _ => {
                    return Err(refused(
                        "a once record needs both a version key and a version, or neither"
                            .to_owned(),
                    ))
                }
            }
            if let Some((key, token)) = &record.fence {
                distinct("lock key", key)?;
                p.fence_keys.push(key.clone());
                p.tokens.push(token_param(*token)?);
            }
        }
        Ok(p)
    }
}

/// What the checks read: the ids applied before, and the applied versions and accepted
/// tokens of the batch's keys.
struct Found {
    applied_ids: HashSet<String>,
    versions: HashMap<String, i64>,
    tokens: HashMap<String, u64>,
}

impl Found {
    /// The verdict for `record`: fenced, then duplicate, then stale, as for one record.
    fn verdict(&self, record: &OnceRecord) -> OnceVerdict {
        let fenced = record
            .fence
            .as_ref()
            .is_some_and(|(key, token)| self.tokens.get(key).is_some_and(|t| t > token));
        let duplicate = record
            .id
            .as_ref()
            .is_some_and(|id| self.applied_ids.contains(id));
        let stale = match (&record.version_key, record.version) {
            (Some(key), Some(version)) => self.versions.get(key).is_some_and(|v| *v >= version),
            _ => false,
        };
        if fenced {
            OnceVerdict::Fenced
        } else if duplicate {
            OnceVerdict::Duplicate
        } else if stale {
            OnceVerdict::Stale
        } else {
            OnceVerdict::Apply
        }
    }
}

/// Opens the transaction and runs the three checks, pipelined: one round trip.
async fn check(tx: &OnceTransaction, p: &Params) -> Result<Found, StoreError> {
    let client = tx.pooled();
    let schema = &tx.schema;
    let ids_sql = format!("SELECT id FROM \"{schema}\".steadfast_processed WHERE id = ANY($1)");
    let versions_sql = format!(
        "SELECT version_key, version FROM \"{schema}\".steadfast_versions
         WHERE version_key = ANY($1) ORDER BY version_key FOR UPDATE"
    );
    let fences_sql = format!(
        "SELECT fence_key, token FROM \"{schema}\".steadfast_fences
         WHERE fence_key = ANY($1) ORDER BY fence_key FOR UPDATE"
    );
    let (ids, versions, fences) = futures::try_join!(
        prepare(client, (!p.ids.is_empty()).then_some(ids_sql.as_str())),
        prepare(
            client,
            (!p.version_keys.is_empty()).then_some(versions_sql.as_str())
        ),
        prepare(
            client,
            (!p.fence_keys.is_empty()).then_some(fences_sql.as_str())
        ),
    )
    .map_err(StoreError::from)?;
    async fn query(
        client: &tokio_postgres::Client,
        statement: Option<tokio_postgres::Statement>,
        keys: &Vec<String>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match statement {
            Some(s) => client.query(&s, &[keys as &(dyn ToSql + Sync)]).await,
            None => Ok(Vec::new()),
        }
    }
    // Each request goes out when its future is first polled, in this order: one round trip.
    let ((), ids, versions, fences) = futures::try_join!(
        client.batch_execute("BEGIN"),
        query(client, ids, &p.ids),
        query(client, versions, &p.version_keys),
        query(client, fences, &p.fence_keys),
    )
    .map_err(StoreError::from)?;
    Ok(Found {
        applied_ids: ids
            .iter()
            .map(|row| column::<String>(row, "id"))
            .collect::<Result<_, _>>()?,
        versions: versions
            .iter()
            .map(|row| Ok((column(row, "version_key")?, column(row, "version")?)))
            .collect::<Result<_, StoreError>>()?,
        tokens: fences.iter().map(fence).collect::<Result<_, _>>()?,
    })
}

/// A row of the fences table.
fn fence(row: &Row) -> Result<(String, u64), StoreError> {
    Ok((
        column(row, "fence_key")?,
        token_value(column(row, "token")?)?,
    ))
}

impl OnceTransaction {
    /// Records `applied` (the batch's records the handler applied: ids, versions and fencing
    /// tokens) in one statement, then commits them with the handler's writes.
    ///
    /// When a concurrent transaction committed one of those ids, a version at least as new or
    /// a larger token since the checks, nothing is committed: [`StoreError::Failed`], and
    /// the batch is handled again. Other failures are as for [`commit`](Self::commit).
    pub async fn commit_batch(self, applied: &[&OnceRecord]) -> Result<(), StoreError> {
        let params = match Params::of(applied.iter().copied()) {
            Ok(p) => p,
            Err(e) => {
                self.abandon().await;
                return Err(e);
            }
        };
        match record(&self, &params).await {
            Ok(true) => self.commit().await,
            Ok(false) => {
                self.abandon().await;
                Err(refused(
                    "a concurrent transaction recorded one of the batch's ids, versions or \
                     fencing tokens first, so the batch's transaction was rolled back"
                        .to_owned(),
                ))
            }
            Err(e) => {
                self.abandon().await;
                Err(e)
            }
        }
    }
}

/// Writes the batch's records; whether every one of them was written.
async fn record(tx: &OnceTransaction, p: &Params) -> Result<bool, StoreError> {
    let schema = &tx.schema;
    let sql = format!(
        "WITH f AS (
             INSERT INTO \"{schema}\".steadfast_fences AS f (fence_key, token)
             SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (fence_key) DO UPDATE SET token = EXCLUDED.token
                 WHERE f.token <= EXCLUDED.token
             RETURNING 1),
         i AS (
             INSERT INTO \"{schema}\".steadfast_processed (id)
             SELECT unnest($3::text[])
             ON CONFLICT DO NOTHING
             RETURNING 1),
         v AS (
             INSERT INTO \"{schema}\".steadfast_versions AS v (version_key, version)
             SELECT * FROM unnest($4::text[], $5::bigint[])
             ON CONFLICT (version_key) DO UPDATE SET version = EXCLUDED.version
                 WHERE v.version < EXCLUDED.version
             RETURNING 1)
         SELECT (SELECT count(*) FROM f) AS fences,
                (SELECT count(*) FROM i) AS ids,
                (SELECT count(*) FROM v) AS versions"
    );
    let client = tx.pooled();
    let statement = client.prepare_cached(&sql).await?;
    let row = client
        .query_one(
            &statement,
            &[
                &p.fence_keys,
                &p.tokens,
                &p.ids,
                &p.version_keys,
                &p.versions,
            ],
        )
        .await?;
    let count = |name: &str| -> Result<usize, StoreError> {
        let n: i64 = column(&row, name)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    };
    Ok(count("fences")? == p.fence_keys.len()
        && count("ids")? == p.ids.len()
        && count("versions")? == p.version_keys.len())
}

/// A refusal of the batch path, as the store reports it.
fn refused(message: String) -> StoreError {
    StoreError::Failed {
        backend: "postgres",
        message,
        cause: None,
    }
}
