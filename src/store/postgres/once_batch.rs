//! The once-only path for a batch of records: one transaction for the whole batch, whose
//! checks (ids applied before, versions at least as new, larger fencing tokens) run in one
//! round trip at its start, and whose records are written for the applied records only, in
//! one statement, just before it commits.
//!
//! A key's applied version and accepted fencing token share one row of `steadfast_versions`.
//! The checks lock the rows of the batch's keys that exist (`FOR UPDATE`, in key order), so a
//! concurrent writer of those keys waits for this transaction. An id, version or fence that
//! a concurrent transaction commits between the checks and the commit makes the commit's
//! write touch fewer rows than asked: the transaction is then rolled back whole and the
//! batch is handled again (where the checks now refuse those records).

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::once::{prepare, OnceTransaction};
use super::version::NO_VERSION;
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

/// A batch's ids, and its keys' versions and fencing tokens, as statement parameters: one
/// entry per key, in key order, with the version and the token each record asks to record
/// for it (either may be absent).
#[derive(Default)]
struct Params<'a> {
    ids: Vec<&'a str>,
    keys: Vec<&'a str>,
    versions: Vec<Option<i64>>,
    tokens: Vec<Option<i64>>,
}

impl<'a> Params<'a> {
    /// The parameters of `records`, refusing a repeated id, version key or lock key and a
    /// version without its key.
    fn of(records: impl IntoIterator<Item = &'a OnceRecord>) -> Result<Params<'a>, StoreError> {
        let mut ids = Vec::new();
        let mut keys: BTreeMap<&'a str, (Option<i64>, Option<i64>)> = BTreeMap::new();
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
                ids.push(id.as_str());
            }
            match (&record.version_key, record.version) {
                (Some(key), Some(version)) => {
                    distinct("version key", key)?;
                    keys.entry(key.as_str()).or_default().0 = Some(version);
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
                keys.entry(key.as_str()).or_default().1 = Some(token_param(*token)?);
            }
        }
        let mut p = Params {
            ids,
            ..Params::default()
        };
        for (key, (version, token)) in keys {
            p.keys.push(key);
            p.versions.push(version);
            p.tokens.push(token);
        }
        Ok(p)
    }
}

/// What the checks read: the ids applied before, and the rows of the batch's keys.
struct Found {
    applied_ids: HashSet<String>,
    keys: HashMap<String, KeyRow>,
}

/// A key's row: its applied version and its accepted fencing token, each if any.
struct KeyRow {
    version: Option<i64>,
    token: Option<u64>,
}

impl Found {
    /// The verdict for `record`: fenced, then duplicate, then stale, as for one record.
    fn verdict(&self, record: &OnceRecord) -> OnceVerdict {
        let fenced = record.fence.as_ref().is_some_and(|(key, token)| {
            self.keys
                .get(key)
                .and_then(|row| row.token)
                .is_some_and(|t| t > *token)
        });
        let duplicate = record
            .id
            .as_ref()
            .is_some_and(|id| self.applied_ids.contains(id));
        let stale = match (&record.version_key, record.version) {
            (Some(key), Some(version)) => self
                .keys
                .get(key)
                .and_then(|row| row.version)
                .is_some_and(|v| v >= version),
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

/// Opens the transaction and runs the two checks (ids; versions and tokens), pipelined: one
/// round trip.
async fn check(tx: &OnceTransaction, p: &Params<'_>) -> Result<Found, StoreError> {
    let client = tx.pooled();
    let schema = &tx.schema;
    let ids_sql = format!("SELECT id FROM \"{schema}\".steadfast_processed WHERE id = ANY($1)");
    let keys_sql = format!(
        "SELECT version_key, version, token FROM \"{schema}\".steadfast_versions
         WHERE version_key = ANY($1) ORDER BY version_key FOR UPDATE"
    );
    let (ids, keys) = futures::try_join!(
        prepare(client, (!p.ids.is_empty()).then_some(ids_sql.as_str())),
        prepare(client, (!p.keys.is_empty()).then_some(keys_sql.as_str())),
    )
    .map_err(StoreError::from)?;
    async fn query(
        client: &tokio_postgres::Client,
        statement: Option<tokio_postgres::Statement>,
        keys: &[&str],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match statement {
            Some(s) => client.query(&s, &[&keys as &(dyn ToSql + Sync)]).await,
            None => Ok(Vec::new()),
        }
    }
    // Each request goes out when its future is first polled, in this order: one round trip.
    let ((), ids, keys) = futures::try_join!(
        client.batch_execute("BEGIN"),
        query(client, ids, &p.ids),
        query(client, keys, &p.keys),
    )
    .map_err(StoreError::from)?;
    let mut found = Found {
        applied_ids: ids
            .iter()
            .map(|row| column::<String>(row, "id"))
            .collect::<Result<_, _>>()?,
        keys: HashMap::with_capacity(keys.len()),
    };
    for row in &keys {
        let version: i64 = column(row, "version")?;
        let token: Option<i64> = column(row, "token")?;
        found.keys.insert(
            column(row, "version_key")?,
            KeyRow {
                version: (version != NO_VERSION).then_some(version),
                token: token.map(token_value).transpose()?,
            },
        );
    }
    Ok(found)
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
async fn record(tx: &OnceTransaction, p: &Params<'_>) -> Result<bool, StoreError> {
    let schema = &tx.schema;
    // A key's row takes the version and the token its record asks for, each only when it is
    // newer (a version) or at least as large (a token) as the one stored; a part the record
    // does not ask for stays as it is (a new row without a version holds `NO_VERSION`, which
    // `GREATEST` never picks over a stored version).
    let sql = format!(
        "WITH k AS (
             INSERT INTO \"{schema}\".steadfast_versions AS v (version_key, version, token)
             SELECT key, COALESCE(version, {NO_VERSION}), token
             FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(key, version, token)
             ON CONFLICT (version_key) DO UPDATE
                 SET version = GREATEST(v.version, EXCLUDED.version),
                     token = COALESCE(EXCLUDED.token, v.token)
                 WHERE (EXCLUDED.version = {NO_VERSION} OR v.version < EXCLUDED.version)
                   AND (EXCLUDED.token IS NULL OR v.token IS NULL OR v.token <= EXCLUDED.token)
             RETURNING 1),
         i AS (
             INSERT INTO \"{schema}\".steadfast_processed (id)
             SELECT unnest($4::text[])
             ON CONFLICT DO NOTHING
             RETURNING 1)
         SELECT (SELECT count(*) FROM k) AS keys,
                (SELECT count(*) FROM i) AS ids"
    );
    let client = tx.pooled();
    let statement = client.prepare_cached(&sql).await?;
    let row = client
        .query_one(&statement, &[&p.keys, &p.versions, &p.tokens, &p.ids])
        .await?;
    let count = |name: &str| -> Result<usize, StoreError> {
        let n: i64 = column(&row, name)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    };
    Ok(count("keys")? == p.keys.len() && count("ids")? == p.ids.len())
}

/// A refusal of the batch path, as the store reports it.
fn refused(message: String) -> StoreError {
    StoreError::Failed {
        backend: "postgres",
        message,
        cause: None,
    }
}
