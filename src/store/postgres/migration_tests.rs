//! Migration 2 on a schema of migration 1 with rows in it: each accepted token moves onto its
//! key's version row, or a row of its own whose version is [`NO_VERSION`]; the fencing and
//! version statements of this release then read and write those rows, and so does the
//! version upsert of the release before (the same statement as [`advance_sql`]'s).

use tokio_postgres::Client;

use super::lock::fence_sql;
use super::migrate::{migrate, MIGRATIONS};
use super::version::{advance_sql, NO_VERSION};

/// The rows of `schema`'s version table: key, version, token.
async fn rows(client: &Client, schema: &str) -> Vec<(String, i64, Option<i64>)> {
    let sql = format!(
        "SELECT version_key, version, token FROM \"{schema}\".steadfast_versions ORDER BY 1"
    );
    client
        .query(&sql, &[])
        .await
        .expect("rows")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// Runs a statement of a key and a number; the rows it touched.
async fn run(client: &Client, sql: &str, key: &str, n: i64) -> u64 {
    client.execute(sql, &[&key, &n]).await.expect("statement")
}

#[tokio::test]
async fn v2_moves_the_accepted_tokens_onto_the_keys_rows() {
    let (mut client, connection) = tokio_postgres::connect(
        "postgres://postgres@127.0.0.1:5432/test",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("start PostgreSQL on 127.0.0.1:5432 (scripts/services.sh): {e}"));
    tokio::spawn(connection);
    let schema = format!("sf_test_{}", uuid::Uuid::new_v4().simple());
    migrate(&mut client, &schema, &MIGRATIONS[..1])
        .await
        .expect("V1");
    client
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".steadfast_versions VALUES ('a', 5), ('b', 7);
             INSERT INTO \"{schema}\".steadfast_fences VALUES ('a', 3), ('c', 9);"
        ))
        .await
        .expect("V1 rows");
    let applied = migrate(&mut client, &schema, MIGRATIONS).await.expect("V2");
    assert_eq!(applied, vec![2]);
    assert_eq!(
        rows(&client, &schema).await,
        vec![
            ("a".to_owned(), 5, Some(3)),
            ("b".to_owned(), 7, None),
            ("c".to_owned(), NO_VERSION, Some(9)),
        ]
    );
    let fence = fence_sql(&schema);
    let advance = advance_sql(&schema);
    assert_eq!(
        run(&client, &fence, "c", 8).await,
        0,
        "a token below the moved one"
    );
    assert_eq!(
        run(&client, &fence, "c", 9).await,
        1,
        "the same token again"
    );
    assert_eq!(
        run(&client, &advance, "c", i64::MIN + 1).await,
        1,
        "any version is newer than none"
    );
    assert_eq!(
        run(&client, &advance, "a", 5).await,
        0,
        "not newer than the kept version"
    );
    assert_eq!(
        run(&client, &fence, "b", 1).await,
        1,
        "a first token beside a version"
    );
    assert_eq!(
        run(&client, &fence, "d", 4).await,
        1,
        "a token of a new key"
    );
    assert_eq!(
        rows(&client, &schema).await,
        vec![
            ("a".to_owned(), 5, Some(3)),
            ("b".to_owned(), 7, Some(1)),
            ("c".to_owned(), i64::MIN + 1, Some(9)),
            ("d".to_owned(), NO_VERSION, Some(4)),
        ]
    );
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .expect("drop the schema");
}
