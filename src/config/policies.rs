//! Settings of the protective policies (`[stores]`, `[stale]`, `[lock]`, `[dedup]`,
//! `[rate_limit]`, `[breaker]`, `[transaction]` in `steadfast.toml`). A policy whose table is
//! absent is off. Stores are named by URL: `memory`, `redis://host:port/db`,
//! `postgres://user@host:port/database`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Where the store tables and keys live (`[stores]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoresConfig {
    /// The Postgres schema of the store tables (created and migrated on start).
    /// Env: `STEADFAST_STORES_SCHEMA`.
    pub schema: String,
    /// The prefix of every Redis key. Env: `STEADFAST_STORES_KEY_PREFIX`.
    pub key_prefix: String,
    /// After this many refusals of one store call a message needs before its handler runs
    /// (a stale check, a lock, a dedup reservation, a shared rate limit), the message goes to
    /// the dead-letter topic with class `store`; unset (the default), it waits until the
    /// store is fixed. Outages never count. Env: `STEADFAST_STORES_DEAD_LETTER_AFTER_REFUSALS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_after_refusals: Option<u32>,
    /// Where the key lock and the stale check and/or dedup are in the same Redis (one URL),
    /// make their calls together: one script before the handler and one after it instead of
    /// up to seven calls (default `true`). Used only with no circuit breaker, rate limit or
    /// transactional store. Env: `STEADFAST_STORES_COMBINE_CALLS`.
    pub combine_calls: bool,
}

impl Default for StoresConfig {
    fn default() -> Self {
        StoresConfig {
            schema: "steadfast".to_owned(),
            key_prefix: "steadfast".to_owned(),
            dead_letter_after_refusals: None,
            combine_calls: true,
        }
    }
}

/// Stale-message dropping on the message's `version` (`[stale]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleConfig {
    /// The version store's URL. Env: `STEADFAST_STALE_STORE`.
    pub store: String,
    /// Copy every dropped message to `<topic>.stale`.
    #[serde(default)]
    pub copy_to_topic: bool,
}

/// The per-key lease lock (`[lock]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// The lock store's URL. Env: `STEADFAST_LOCK_STORE`.
    pub store: String,
    /// The lease, renewed every third of it while the handler runs, in ms.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How long a key's lease is kept, after a record ends, for the key's next record
    /// (which then runs under the same grant), in ms; 0: released at once.
    #[serde(default = "default_keep_ms")]
    pub keep_ms: u64,
}

fn default_lease_ms() -> u64 {
    10_000
}

fn default_keep_ms() -> u64 {
    20
}

/// Deduplication on the message's `id` (`[dedup]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// The dedup store's URL. Env: `STEADFAST_DEDUP_STORE`.
    pub store: String,
    /// How long a reservation outlives a crashed holder, in ms (default 10 s); a running
    /// holder renews it every third of the lease.
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// How long a handled id is remembered, in ms (default 7 days).
    #[serde(default = "default_dedup_ttl_ms")]
    pub ttl_ms: u64,
}

fn default_dedup_ttl_ms() -> u64 {
    7 * 24 * 3_600_000
}

/// Rate limit of handler calls (`[rate_limit]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Permits per second.
    pub per_second: u32,
    /// Permits that may be taken at once.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// A Redis URL to share the limit across every worker using it (GCRA in Redis); per
    /// worker (in memory) when absent. Env: `STEADFAST_RATE_LIMIT_STORE`.
    #[serde(default)]
    pub store: Option<String>,
    /// The name of a shared limit (workers with the same name share it); the group's when
    /// absent.
    #[serde(default)]
    pub name: Option<String>,
}

fn default_burst() -> u32 {
    1
}

/// Circuit breaker around the handler (`[breaker]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failure rate, in percent, at or above which the breaker opens.
    pub failure_rate_percent: u32,
    /// The sliding window the rate is measured over, in ms.
    pub window_ms: u64,
    /// Calls the window must hold before the rate counts.
    pub min_calls: u32,
    /// How long the breaker stays open before probing, in ms.
    pub open_ms: u64,
    /// Probe calls when half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl BreakerConfig {
    /// Checks the settings: the key (under `[breaker]`) of the first wrong one and why.
    pub(crate) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.failure_rate_percent == 0 || self.failure_rate_percent > 100 {
            return Err(("breaker.failure_rate_percent", "must be between 1 and 100"));
        }
        if self.min_calls == 0 || self.half_open_probes == 0 {
            return Err((
                "breaker.min_calls",
                "`min_calls` and `half_open_probes` must be at least 1",
            ));
        }
        if self.window_ms == 0 || self.open_ms == 0 {
            return Err((
                "breaker.window_ms",
                "`window_ms` and `open_ms` must be positive",
            ));
        }
        Ok(())
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate_percent: 50,
            window_ms: 10_000,
            min_calls: 20,
            open_ms: 5_000,
            half_open_probes: 3,
        }
    }
}

/// The transactional idempotency store (`[transaction]`): the handler's Postgres
/// transaction, in which steadfast records the message id and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionConfig {
    /// The database's URL. Env: `STEADFAST_TRANSACTION_POSTGRES`.
    pub postgres: String,
}

/// Which backend a store URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// In process memory.
    Memory,
    /// Redis.
    Redis,
    /// Postgres.
    Postgres,
}

/// The backend of a store URL, or why it names none.
pub fn store_kind(key: &'static str, url: &str) -> Result<StoreKind, ConfigError> {
    if url == "memory" || url == "memory://" {
        Ok(StoreKind::Memory)
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(StoreKind::Redis)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(StoreKind::Postgres)
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: format!(
                "`{}` is not a store URL: use `memory`, `redis://host:port` or `postgres://user@host/database`",
                redact(url)
            ),
        })
    }
}

/// The URL with every password replaced by `***`, for messages and logs: the one in the user
/// info of a `scheme://user:password@host` URL and every `password=` parameter. Where the URL
/// is ambiguous, more than the password is hidden rather than less.
pub fn redact(url: &str) -> String {
    let mut out = match url.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => match rest[..at].split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    let mut from = 0;
    while let Some(found) = out[from..].to_ascii_lowercase().find("password=") {
        let start = from + found + "password=".len();
        let value = &out[start..];
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            quoted.find('\'').map_or(value.len(), |close| close + 2)
        } else {
            value
                .find(|c: char| c == '&' || c.is_whitespace())
                .unwrap_or(value.len())
        };
        out.replace_range(start..start + len, "***");
        from = start + 3;
    }
    out
}

/// Whether `name` is a plain Postgres identifier.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn store_urls_name_their_backend() {
        assert_eq!(
            store_kind("lock.store", "memory").ok(),
            Some(StoreKind::Memory)
        );
        assert_eq!(
            store_kind("lock.store", "redis://h:1").ok(),
            Some(StoreKind::Redis)
        );
        assert_eq!(
            store_kind("lock.store", "postgres://u@h/d").ok(),
            Some(StoreKind::Postgres)
        );
        let err = store_kind("lock.store", "mysql://u:pw@h/d").expect_err("refused");
        assert!(err.to_string().contains("lock.store"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }
}
