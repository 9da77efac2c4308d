//! The Postgres stores beyond the conformance suite: connecting, schema migrations and the
//! transactional idempotency path (`begin_once`). Each test works in a fresh schema.

use std::time::{Duration, Instant};

use steadfast::store::postgres::{OnceRecord, OnceStart, OnceTransaction, PostgresStores};
use steadfast::store::{LockStore, OnceVerdict, StoreError, VersionStore};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const START_POSTGRES: &str = "start PostgreSQL on 127.0.0.1:5432 (scripts/services.sh)";

fn fresh_schema() -> String {
    format!("sf_test_{}", uuid::Uuid::new_v4().simple())
}

async fn connect(schema: &str) -> PostgresStores {
    PostgresStores::connect(URL, schema)
        .await
        .unwrap_or_else(|e| panic!("{START_POSTGRES}: {e}"))
}

/// Stores in a fresh schema holding a table `effects(id)` for a handler's own writes.
async fn stores_with_effects() -> PostgresStores {
    let stores = connect(&fresh_schema()).await;
    sql(
        &stores,
        &format!(
            "CREATE TABLE \"{}\".effects (id text PRIMARY KEY)",
            stores.schema()
        ),
    )
    .await;
    stores
}

async fn sql(stores: &PostgresStores, statement: &str) {
    let client = stores.pool().get().await.expect("pooled connection");
    client.batch_execute(statement).await.expect(statement);
}

async fn count(stores: &PostgresStores, query: &str) -> i64 {
    let client = stores.pool().get().await.expect("pooled connection");
    client
        .query_one(query, &[])
        .await
        .expect(query)
        .get::<_, i64>(0)
}

async fn effects(stores: &PostgresStores) -> i64 {
    count(
        stores,
        &format!("SELECT count(*) FROM \"{}\".effects", stores.schema()),
    )
    .await
}

async fn processed(stores: &PostgresStores, id: &str) -> bool {
    count(
        stores,
        &format!(
            "SELECT count(*) FROM \"{}\".steadfast_processed WHERE id = '{id}'",
            stores.schema()
        ),
    )
    .await
        == 1
}

async fn drop_schema(stores: &PostgresStores) {
    sql(
        stores,
        &format!("DROP SCHEMA \"{}\" CASCADE", stores.schema()),
    )
    .await;
}

fn record(id: &str, version: Option<i64>, fence: Option<u64>) -> OnceRecord {
    OnceRecord {
        id: Some(id.to_owned()),
        version_key: version.map(|_| "acct".to_owned()),
        version,
        fence: fence.map(|token| ("acct".to_owned(), token)),
    }
}

async fn begin(stores: &PostgresStores, record: &OnceRecord) -> OnceStart {
    stores.begin_once(record).await.expect("begin_once")
}

async fn apply(stores: &PostgresStores, record: &OnceRecord) -> OnceTransaction {
    match begin(stores, record).await {
        OnceStart::Apply(tx) => tx,
        other => panic!("expected Apply for {record:?}, got {other:?}"),
    }
}

/// The handler's own write, inside the transaction.
async fn write_effect(stores: &PostgresStores, tx: &OnceTransaction, id: &str) {
    let insert = format!(
        "INSERT INTO \"{}\".effects (id) VALUES ($1)",
        stores.schema()
    );
    let statement = tx.prepare_cached(&insert).await.expect("prepare");
    tx.client()
        .execute(&statement, &[&id])
        .await
        .expect("the handler's insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_apply_each_migration_once() {
    let schema = fresh_schema();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let schema = schema.clone();
        tasks.push(tokio::spawn(async move {
            PostgresStores::connect(URL, &schema).await
        }));
    }
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(
            task.await
                .expect("task")
                .unwrap_or_else(|e| panic!("{START_POSTGRES}: {e}")),
        );
    }
    let stores = &stores[0];
    let applied = format!(
        "SELECT version, name, applied_at::text FROM \"{schema}\".steadfast_migrations ORDER BY 1"
    );
    let read = || async {
        let client = stores.pool().get().await.expect("pooled connection");
        client
            .query(&applied, &[])
            .await
            .expect("read the migrations table")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect::<Vec<(i32, String, String)>>()
    };
    let first = read().await;
    assert_eq!(
        first
            .iter()
            .map(|(v, n, _)| (*v, n.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "stores"), (2, "one_row_per_key")],
        "every migration recorded exactly once"
    );
    connect(&schema).await;
    assert_eq!(read().await, first, "a second connect applies nothing");
    drop_schema(stores).await;
}

#[tokio::test]
async fn a_bad_url_is_a_url_error_without_its_password() {
    for url in [
        "postgres://app:s3cret@127.0.0.1:notaport/test",
        "host=127.0.0.1 password=s3cret port=notaport",
        "not a url",
    ] {
        let err = PostgresStores::connect(url, "steadfast")
            .await
            .expect_err(url);
        let text = err.to_string();
        assert!(matches!(err, StoreError::Url { .. }), "{url}: {err:?}");
        assert!(!text.contains("s3cret"), "the password is shown: {text}");
        assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
    }
    let err = PostgresStores::connect("postgres://app:s3cret@127.0.0.1:notaport/test", "s")
        .await
        .expect_err("bad port");
    assert!(err.to_string().contains("port"), "{err}");
}

#[tokio::test]
async fn a_bad_schema_name_is_a_url_error_naming_it() {
    for schema in ["Steadfast", "sf-test", "sf\"; DROP SCHEMA public; --", ""] {
        let err = PostgresStores::connect(URL, schema)
            .await
            .expect_err(schema);
        assert!(matches!(err, StoreError::Url { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("schema `{schema}`")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_unavailable_promptly() {
    let started = Instant::now();
    let err = PostgresStores::connect("postgres://postgres@127.0.0.1:1/test", "steadfast")
        .await
        .expect_err("nobody listens on port 1");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_once_applies_then_refuses_duplicates_stale_versions_and_lower_fences() {
    let stores = stores_with_effects().await;
    let versions = stores.version_store();

    let tx = apply(&stores, &record("m1", Some(5), Some(7))).await;
    write_effect(&stores, &tx, "m1").await;
    tx.commit().await.expect("commit");
    assert_eq!(effects(&stores).await, 1, "the handler's write committed");
    assert!(processed(&stores, "m1").await, "the id is recorded");
    assert_eq!(versions.get("acct").await.expect("get"), Some(5));

    let same_id = begin(&stores, &record("m1", Some(6), Some(7))).await;
    assert!(matches!(same_id, OnceStart::Duplicate), "{same_id:?}");
    let older = begin(&stores, &record("m2", Some(4), Some(7))).await;
    assert!(matches!(older, OnceStart::Stale), "{older:?}");
    let same_version = begin(&stores, &record("m2", Some(5), None)).await;
    assert!(matches!(same_version, OnceStart::Stale), "{same_version:?}");
    let lower_fence = begin(&stores, &record("m3", Some(9), Some(6))).await;
    assert!(matches!(lower_fence, OnceStart::Fenced), "{lower_fence:?}");

    let all_refuse = begin(&stores, &record("m1", Some(1), Some(6))).await;
    assert!(
        matches!(all_refuse, OnceStart::Fenced),
        "fenced first: {all_refuse:?}"
    );
    let dup_and_stale = begin(&stores, &record("m1", Some(1), None)).await;
    assert!(
        matches!(dup_and_stale, OnceStart::Duplicate),
        "duplicate before stale: {dup_and_stale:?}"
    );

    assert!(!processed(&stores, "m2").await && !processed(&stores, "m3").await);
    assert_eq!(
        versions.get("acct").await.expect("get"),
        Some(5),
        "refused attempts record nothing"
    );
    assert!(
        !stores.lock_store().fence("acct", 6).await.expect("fence"),
        "the lock store's fence sees the committed token 7"
    );

    let newer = apply(&stores, &record("m4", Some(6), Some(8))).await;
    newer.commit().await.expect("commit");
    assert_eq!(versions.get("acct").await.expect("get"), Some(6));
    drop_schema(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_records_nothing_and_the_id_applies_again() {
    let stores = stores_with_effects().await;
    let tx = apply(&stores, &record("m1", Some(1), Some(1))).await;
    write_effect(&stores, &tx, "m1").await;
    drop(tx);
    assert_eq!(effects(&stores).await, 0, "the handler's write vanished");
    assert!(
        !processed(&stores, "m1").await,
        "the id record vanished with it"
    );

    // The server rolls the dropped transaction back when its connection closes; until then
    // this attempt waits on the id.
    let again = apply(&stores, &record("m1", Some(1), Some(1))).await;
    write_effect(&stores, &again, "m1").await;
    again.commit().await.expect("commit");
    assert_eq!(effects(&stores).await, 1);
    assert!(processed(&stores, "m1").await);
    assert_eq!(
        stores.version_store().get("acct").await.expect("get"),
        Some(1)
    );
    drop_schema(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_records_nothing() {
    let stores = stores_with_effects().await;
    let tx = apply(&stores, &record("m1", Some(1), None)).await;
    write_effect(&stores, &tx, "m1").await;
    tx.rollback().await.expect("rollback");
    assert_eq!(effects(&stores).await, 0);
    assert!(!processed(&stores, "m1").await);
    assert_eq!(stores.version_store().get("acct").await.expect("get"), None);
    let again = apply(&stores, &record("m1", Some(1), None)).await;
    again.commit().await.expect("commit");
    assert!(processed(&stores, "m1").await);
    drop_schema(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_a_failed_statement_commits_nothing() {
    let stores = stores_with_effects().await;
    let tx = apply(&stores, &record("m1", Some(1), None)).await;
    write_effect(&stores, &tx, "m1").await;
    tx.client()
        .batch_execute("SELECT * FROM no_such_table")
        .await
        .expect_err("the handler's failing statement");
    let err = tx.commit().await.expect_err("an aborted transaction");
    assert!(matches!(err, StoreError::Failed { .. }), "{err:?}");
    assert_eq!(effects(&stores).await, 0);
    assert!(!processed(&stores, "m1").await);
    let again = apply(&stores, &record("m1", Some(1), None)).await;
    again.commit().await.expect("commit");
    drop_schema(&stores).await;
}

/// Waits until a statement on `stores`' schema waits for a lock another transaction holds.
async fn wait_until_blocked(stores: &PostgresStores) {
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND query LIKE '%\"{}\".steadfast_processed%'",
        stores.schema()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(stores, &waiting).await == 0 {
        assert!(Instant::now() < deadline, "the second attempt never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attempts_with_one_id_apply_once() {
    let stores = stores_with_effects().await;
    let first = apply(&stores, &record("m1", None, None)).await;
    write_effect(&stores, &first, "m1").await;
    let second = tokio::spawn({
        let stores = stores.clone();
        async move { begin(&stores, &record("m1", None, None)).await }
    });
    wait_until_blocked(&stores).await;
    first.commit().await.expect("commit");
    let second = second.await.expect("task");
    assert!(matches!(second, OnceStart::Duplicate), "{second:?}");
    assert_eq!(effects(&stores).await, 1, "exactly one attempt applied");
    drop_schema(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_attempt_applies_when_the_first_rolls_back() {
    let stores = stores_with_effects().await;
    let first = apply(&stores, &record("m1", Some(1), None)).await;
    let second = tokio::spawn({
        let stores = stores.clone();
        async move {
            match begin(&stores, &record("m1", Some(1), None)).await {
                OnceStart::Apply(tx) => {
                    write_effect(&stores, &tx, "m1").await;
                    tx.commit().await.expect("commit");
                    true
                }
                _ => false,
            }
        }
    });
    wait_until_blocked(&stores).await;
    first.rollback().await.expect("rollback");
    assert!(second.await.expect("task"), "the waiting attempt applied");
    assert_eq!(effects(&stores).await, 1);
    drop_schema(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_attempt_leaves_no_transaction_behind() {
    let stores = stores_with_effects().await;
    let first = apply(&stores, &record("m1", None, None)).await;
    let cancelled = tokio::spawn({
        let stores = stores.clone();
        async move { begin(&stores, &record("m1", None, None)).await }
    });
    wait_until_blocked(&stores).await;
    cancelled.abort();
    assert!(cancelled.await.expect_err("aborted").is_cancelled());
    first.rollback().await.expect("rollback");
    // Had the cancelled attempt's connection gone back to the pool, its transaction would
    // now hold the id, and this attempt would wait or be refused.
    let third = tokio::time::timeout(
        Duration::from_secs(10),
        apply(&stores, &record("m1", None, None)),
    )
    .await
    .expect("the id is free");
    write_effect(&stores, &third, "m1").await;
    third.commit().await.expect("commit");
    assert_eq!(effects(&stores).await, 1);
    drop_schema(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_repeating_an_id_or_a_key_is_refused_before_it_begins() {
    let stores = stores_with_effects().await;
    let keyed = |id: &str, key: &str| OnceRecord {
        id: Some(id.to_owned()),
        version_key: Some(key.to_owned()),
        version: Some(1),
        fence: Some((key.to_owned(), 1)),
    };
    for (records, what) in [
        (vec![keyed("m1", "a"), keyed("m1", "b")], "id `m1`"),
        (vec![keyed("m1", "a"), keyed("m2", "a")], "version key `a`"),
    ] {
        match stores.begin_once_batch(&records).await {
            Err(StoreError::Failed { message, .. }) => assert!(
                message.contains(&format!("{what} appears twice in one batch")),
                "the refusal names the repeated {what}: {message}"
            ),
            Err(other) => panic!("expected the batch refused for its {what}, got {other}"),
            Ok(batch) => panic!("a batch repeating its {what} began: {:?}", batch.verdicts),
        }
    }
    let distinct = stores
        .begin_once_batch(&[keyed("m1", "a"), keyed("m2", "b")])
        .await
        .expect("a batch of distinct ids and keys begins");
    assert_eq!(distinct.verdicts.len(), 2);
    if let Some(tx) = distinct.transaction {
        tx.rollback().await.expect("rollback");
    }
    assert!(!processed(&stores, "m1").await, "nothing was recorded");
    drop_schema(&stores).await;
}

/// A key's version and accepted token share one row (migration 2): a batch record whose key
/// holds a larger token (accepted by the lock store, with no version yet) is fenced; the
/// others apply, their versions and tokens land in their keys' rows, and the next batch finds
/// them: an older version stale, a token below the recorded one fenced, an applied id a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reads_and_records_versions_and_tokens_in_the_keys_rows() {
    let stores = stores_with_effects().await;
    let record = |id: &str, key: &str, version: Option<i64>, token: Option<u64>| OnceRecord {
        id: Some(id.to_owned()),
        version_key: version.map(|_| key.to_owned()),
        version,
        fence: token.map(|t| (key.to_owned(), t)),
    };
    assert!(stores.lock_store().fence("a", 5).await.expect("fence a"));
    let first = [
        record("m1", "a", Some(1), Some(4)),
        record("m2", "b", Some(1), Some(1)),
        record("m3", "c", Some(3), None),
        record("m4", "d", None, Some(2)),
    ];
    let batch = stores.begin_once_batch(&first).await.expect("begin");
    assert_eq!(
        batch.verdicts,
        vec![
            OnceVerdict::Fenced,
            OnceVerdict::Apply,
            OnceVerdict::Apply,
            OnceVerdict::Apply
        ]
    );
    let tx = batch.transaction.expect("records to apply");
    tx.commit_batch(&[&first[1], &first[2], &first[3]])
        .await
        .expect("commit");
    let versions = stores.version_store();
    assert_eq!(
        versions.get("a").await.expect("get a"),
        None,
        "fenced: no version"
    );
    assert_eq!(versions.get("b").await.expect("get b"), Some(1));
    assert_eq!(versions.get("c").await.expect("get c"), Some(3));
    assert_eq!(
        versions.get("d").await.expect("get d"),
        None,
        "a token only"
    );
    assert!(
        !processed(&stores, "m1").await,
        "the fenced record's id is not recorded"
    );
    assert!(processed(&stores, "m2").await && processed(&stores, "m4").await);
    let locks = stores.lock_store();
    assert!(
        !locks.fence("b", 0).await.expect("fence b"),
        "b's token 1 was recorded"
    );
    assert!(
        !locks.fence("d", 1).await.expect("fence d"),
        "d's token 2 was recorded"
    );
    assert!(
        locks.fence("a", 5).await.expect("fence a"),
        "a's token stays 5"
    );

    let second = [
        record("m5", "c", Some(2), None),
        record("m6", "d", Some(1), Some(1)),
        record("m2", "e", Some(1), None),
        record("m7", "b", Some(2), Some(1)),
    ];
    let batch = stores.begin_once_batch(&second).await.expect("begin again");
    assert_eq!(
        batch.verdicts,
        vec![
            OnceVerdict::Stale,
            OnceVerdict::Fenced,
            OnceVerdict::Duplicate,
            OnceVerdict::Apply
        ]
    );
    let tx = batch.transaction.expect("m7 applies");
    tx.commit_batch(&[&second[3]]).await.expect("commit again");
    assert_eq!(versions.get("b").await.expect("get b"), Some(2));
    assert_eq!(versions.get("c").await.expect("get c"), Some(3));
    drop_schema(&stores).await;
}

/// What a key's row and the ids should hold after the mix's steps so far.
#[derive(Default)]
struct KeyModel {
    versions: std::collections::HashMap<String, i64>,
    tokens: std::collections::HashMap<String, u64>,
    ids: std::collections::HashSet<String>,
}

impl KeyModel {
    /// The verdict the store owes `record`: fenced, then duplicate, then stale.
    fn verdict(&self, r: &OnceRecord) -> OnceVerdict {
        if r.fence
            .as_ref()
            .is_some_and(|(k, t)| self.tokens.get(k).is_some_and(|held| held > t))
        {
            OnceVerdict::Fenced
        } else if r.id.as_ref().is_some_and(|id| self.ids.contains(id)) {
            OnceVerdict::Duplicate
        } else if r
            .version_key
            .as_ref()
            .zip(r.version)
            .is_some_and(|(k, v)| self.versions.get(k).is_some_and(|held| *held >= v))
        {
            OnceVerdict::Stale
        } else {
            OnceVerdict::Apply
        }
    }
    /// Records what a committed record wrote.
    fn apply(&mut self, r: &OnceRecord) {
        if let Some(id) = &r.id {
            self.ids.insert(id.clone());
        }
        if let (Some(k), Some(v)) = (&r.version_key, r.version) {
            self.versions.insert(k.clone(), v);
        }
        if let Some((k, t)) = &r.fence {
            self.tokens.insert(k.clone(), *t);
        }
    }
}

/// A record over a few keys, ids, versions and tokens, so that every verdict comes up; its
/// version key and lock key drawn apart (one row may take one record's version and another's
/// token), each unused so far in the batch.
fn drawn_record(
    rng: &mut rand::rngs::StdRng,
    used_version_keys: &mut Vec<String>,
    used_lock_keys: &mut Vec<String>,
) -> OnceRecord {
    use rand::Rng;
    let free_key = |rng: &mut rand::rngs::StdRng, used: &mut Vec<String>| {
        let key = format!("k{}", rng.random_range(0..4));
        (!used.contains(&key)).then(|| {
            used.push(key.clone());
            key
        })
    };
    let version_key = if rng.random_bool(0.8) {
        free_key(rng, used_version_keys)
    } else {
        None
    };
    let fence = if rng.random_bool(0.7) {
        free_key(rng, used_lock_keys).map(|k| (k, rng.random_range(1..=6_u64)))
    } else {
        None
    };
    OnceRecord {
        id: Some(format!("m{}", rng.random_range(0..40))),
        version: version_key.as_ref().map(|_| rng.random_range(1..=8)),
        version_key,
        fence,
    }
}

/// The Postgres key rows (a key's version and token in one row) under a seeded mix of every
/// call that reads or writes them: the lock store's `fence`, the version store's `advance`
/// and `get`, single once-only transactions and batches, committed whole, in part or rolled
/// back. Every answer and verdict must match a model of what was committed. The seed is
/// printed; `STORE_MIX_SEED=<seed>` replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_mix_of_fences_versions_and_once_transactions_matches_a_model() {
    use rand::{Rng, SeedableRng};
    let seed = crate::support::seed("STORE_MIX_SEED", "store mix");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let stores = stores_with_effects().await;
    let (locks, versions) = (stores.lock_store(), stores.version_store());
    let mut model = KeyModel::default();
    let mut seen = std::collections::HashSet::new();
    for step in 0..300 {
        let at = format!("seed {seed}, step {step}");
        let key = format!("k{}", rng.random_range(0..4));
        match rng.random_range(0..10) {
            0 => {
                let token = rng.random_range(1..=6_u64);
                let accepted = model.tokens.get(&key).is_none_or(|held| *held <= token);
                let fenced = locks.fence(&key, token).await.expect("fence");
                assert_eq!(fenced, accepted, "{at}: fence({key}, {token})");
                if accepted {
                    model.tokens.insert(key, token);
                }
            }
            1 => {
                let version = rng.random_range(1..=8);
                let newer = model.versions.get(&key).is_none_or(|held| *held < version);
                let advanced = versions.advance(&key, version).await.expect("advance");
                assert_eq!(advanced, newer, "{at}: advance({key}, {version})");
                if newer {
                    model.versions.insert(key, version);
                }
            }
            2 => {
                let got = versions.get(&key).await.expect("get");
                assert_eq!(got, model.versions.get(&key).copied(), "{at}: get({key})");
            }
            3..=5 => {
                let record = drawn_record(&mut rng, &mut Vec::new(), &mut Vec::new());
                let expected = model.verdict(&record);
                let start = stores.begin_once(&record).await.expect("begin_once");
                let verdict = match start {
                    OnceStart::Apply(tx) => {
                        if rng.random_bool(0.8) {
                            tx.commit().await.expect("commit");
                            model.apply(&record);
                        } else {
                            tx.rollback().await.expect("rollback");
                        }
                        OnceVerdict::Apply
                    }
                    OnceStart::Duplicate => OnceVerdict::Duplicate,
                    OnceStart::Stale => OnceVerdict::Stale,
                    OnceStart::Fenced => OnceVerdict::Fenced,
                };
                assert_eq!(verdict, expected, "{at}: begin_once({record:?})");
                seen.insert(format!("{verdict:?}"));
            }
            _ => {
                let (mut version_keys, mut lock_keys, mut ids) =
                    (Vec::new(), Vec::new(), Vec::new());
                let records: Vec<OnceRecord> = (0..rng.random_range(1..=4))
                    .map(|_| drawn_record(&mut rng, &mut version_keys, &mut lock_keys))
                    .filter(|r| {
                        let id = r.id.clone().unwrap_or_default();
                        let fresh = !ids.contains(&id);
                        ids.push(id);
                        fresh
                    })
                    .collect();
                let expected: Vec<OnceVerdict> = records.iter().map(|r| model.verdict(r)).collect();
                let batch = stores
                    .begin_once_batch(&records)
                    .await
                    .expect("begin_once_batch");
                assert_eq!(
                    batch.verdicts, expected,
                    "{at}: begin_once_batch({records:?})"
                );
                for verdict in &expected {
                    seen.insert(format!("batch {verdict:?}"));
                }
                if let Some(tx) = batch.transaction {
                    let applied: Vec<&OnceRecord> = records
                        .iter()
                        .zip(&expected)
                        .filter(|(_, v)| **v == OnceVerdict::Apply)
                        .map(|(r, _)| r)
                        .filter(|_| rng.random_bool(0.8))
                        .collect();
                    if rng.random_bool(0.9) {
                        tx.commit_batch(&applied).await.expect("commit_batch");
                        for record in applied {
                            model.apply(record);
                        }
                    } else {
                        tx.rollback().await.expect("rollback");
                    }
                }
            }
        }
    }
    for verdict in ["Apply", "Duplicate", "Stale", "Fenced"] {
        assert!(
            seen.contains(verdict) && seen.contains(&format!("batch {verdict}")),
            "seed {seed}: the mix never produced {verdict} (single and batch): {seen:?}"
        );
    }
    drop_schema(&stores).await;
}
