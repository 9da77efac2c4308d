//! The stores' schema migrations: versioned SQL files under `migrations/`, applied in one
//! transaction under an advisory lock, so that pods starting at once apply each exactly once.

use tokio_postgres::Client;

use super::error::{classify, describe};
use crate::store::StoreError;

/// One versioned SQL file, written without a schema qualifier.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Its version: migrations apply in increasing version order.
    pub(crate) version: u32,
    /// Its name, the file name's part after `V<version>__`.
    pub(crate) name: &'static str,
    /// Its statements.
    pub(crate) sql: &'static str,
}

/// Every migration, in increasing version order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "stores",
        sql: include_str!("../../../migrations/V1__stores.sql"),
    },
    Migration {
        version: 2,
        name: "one_row_per_key",
        sql: include_str!("../../../migrations/V2__one_row_per_key.sql"),
    },
];

/// Applies to `schema` (a checked plain identifier) every migration of `migrations` not yet
/// recorded in its `steadfast_migrations` table, creating both if needed; returns the
/// versions it applied.
///
/// Everything runs in one transaction that first takes a transaction-level advisory lock on
/// `steadfast-migrations:<schema>`: a second runner waits for the first to commit, then
/// finds every migration recorded and applies nothing. A failure rolls back all of it.
pub(crate) async fn migrate(
    client: &mut Client,
    schema: &str,
    migrations: &[Migration],
) -> Result<Vec<u32>, StoreError> {
    let tx = client.transaction().await.map_err(StoreError::from)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("steadfast-migrations:{schema}")],
    )
    .await
    .map_err(StoreError::from)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS \"{schema}\".steadfast_migrations (
             version    int PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         SET LOCAL search_path TO \"{schema}\";"
    ))
    .await
    .map_err(StoreError::from)?;
    let recorded: Vec<i32> = tx
        .query("SELECT version FROM steadfast_migrations", &[])
        .await
        .map_err(StoreError::from)?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(StoreError::from)?;
    let mut applied = Vec::new();
    for migration in migrations {
        let version = i32::try_from(migration.version).map_err(|_| StoreError::Migration {
            version: migration.version,
            message: "version out of range".to_owned(),
        })?;
        if recorded.contains(&version) {
            continue;
        }
        let failed = |e: tokio_postgres::Error| match classify(&e) {
            unavailable @ StoreError::Unavailable { .. } => unavailable,
            _ => StoreError::Migration {
                version: migration.version,
                message: format!("{}: {}", migration.name, describe(&e)),
            },
        };
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO steadfast_migrations (version, name) VALUES ($1, $2)",
            &[&version, &migration.name],
        )
        .await
        .map_err(failed)?;
        applied.push(migration.version);
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_start_at_one_and_increase_by_one() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, i + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty(), "{}", migration.name);
        }
    }

    #[test]
    fn migrations_name_no_schema() {
        for migration in MIGRATIONS {
            for line in migration
                .sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
            {
                assert!(
                    !line.contains('.') && !line.to_ascii_lowercase().contains("search_path"),
                    "V{} names a schema: {line}",
                    migration.version
                );
            }
        }
    }

    /// A fresh schema name and a connection to the local test database.
    async fn fresh() -> (Client, String) {
        let (client, connection) = tokio_postgres::connect(
            "postgres://postgres@127.0.0.1:5432/test",
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| {
            panic!("start PostgreSQL on 127.0.0.1:5432 (scripts/services.sh): {e}")
        });
        tokio::spawn(connection);
        let schema = format!("sf_test_{}", uuid::Uuid::new_v4().simple());
        (client, schema)
    }

    async fn recorded(client: &Client, schema: &str) -> Vec<(i32, String)> {
        client
            .query(
                &format!("SELECT version, name FROM \"{schema}\".steadfast_migrations ORDER BY 1"),
                &[],
            )
            .await
            .expect("read the migrations table")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    const EXTRA: Migration = Migration {
        version: 2,
        name: "extra",
        sql: "CREATE TABLE steadfast_extra (n int);",
    };
    const BROKEN: Migration = Migration {
        version: 3,
        name: "broken",
        sql: "CREATE TABLE steadfast_broken (n int); SELECT * FROM no_such_table;",
    };

    #[tokio::test]
    async fn only_pending_migrations_apply_and_a_failure_rolls_back_all() {
        let (mut client, schema) = fresh().await;
        let first = migrate(&mut client, &schema, &MIGRATIONS[..1])
            .await
            .expect("V1");
        assert_eq!(first, vec![1]);
        let err = migrate(&mut client, &schema, &[MIGRATIONS[0], EXTRA, BROKEN])
            .await
            .expect_err("V3 fails");
        match &err {
            StoreError::Migration { version, message } => {
                assert_eq!(*version, 3);
                assert!(message.contains("no_such_table"), "{message}");
            }
            other => panic!("expected a migration error, got {other:?}"),
        }
        assert_eq!(
            recorded(&client, &schema).await,
            vec![(1, "stores".to_owned())],
            "V2 rolled back with V3"
        );
        let exists: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{schema}.steadfast_extra")],
            )
            .await
            .expect("regclass")
            .get(0);
        assert!(!exists, "V2's table rolled back");
        let second = migrate(&mut client, &schema, &[MIGRATIONS[0], EXTRA])
            .await
            .expect("V2");
        assert_eq!(second, vec![2]);
        let none = migrate(&mut client, &schema, &[MIGRATIONS[0], EXTRA])
            .await
            .expect("again");
        assert!(none.is_empty());
        client
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .expect("drop the schema");
    }
}
