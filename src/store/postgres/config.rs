//! Checking what `PostgresStores::connect` is given: the connection URL (reported without
//! its password) and the schema name.

use super::error::describe;
use crate::config::is_identifier;
pub(crate) use crate::config::redact;
use crate::store::StoreError;

/// The application name the stores' connections report, unless the URL names one.
const APPLICATION_NAME: &str = "steadfast";

/// Parses a `postgres://` URL or a `key=value` connection string.
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Url {
        url: redact(url),
        reason: describe(&e),
    })?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(StoreError::Url {
            url: redact(url),
            reason: "names no host".to_owned(),
        });
    }
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    Ok(config)
}

/// Accepts a schema name that needs no quoting: `[a-z_][a-z0-9_]{0,62}`.
pub(crate) fn check_schema(url: &str, schema: &str) -> Result<(), StoreError> {
    if is_identifier(schema) {
        Ok(())
    } else {
        Err(StoreError::Url {
            url: redact(url),
            reason: format!(
                "schema `{schema}` is not a plain identifier (a lowercase letter or `_`, then up \
                 to 62 lowercase letters, digits or `_`)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/main"),
            "postgres://app:***@db:5432/main"
        );
        assert_eq!(
            redact("postgres://app:p@ss/w?rd@db/main"),
            "postgres://app:***@db/main"
        );
        assert_eq!(
            redact("postgres://db/main?user=app&password=s3cret&sslmode=disable"),
            "postgres://db/main?user=app&password=***&sslmode=disable"
        );
        assert_eq!(
            redact("host=db password='a b' user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(redact("host=db PASSWORD=x"), "host=db PASSWORD=***");
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        let err = parse_url("postgres://app:s3cret@db:notaport/main").expect_err("bad port");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Url { .. }), "{err:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("port"), "{text}");
        assert!(parse_url("postgres:///main").is_err(), "no host");
        assert!(parse_url("postgres://postgres@127.0.0.1:5432/test").is_ok());
    }

    #[test]
    fn schemas_are_plain_identifiers() {
        for good in ["steadfast", "_s", "sf_test_0a", &"a".repeat(63)] {
            assert!(check_schema("u", good).is_ok(), "{good}");
        }
        for bad in ["", "Steadfast", "1s", "a-b", "a\"b", "a.b", &"a".repeat(64)] {
            let err = check_schema("u", bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }
}
