//! Worker settings: built in code with [`crate::WorkerBuilder`], or read from `steadfast.toml`
//! with `STEADFAST_*` environment overrides. Unknown keys and impossible combinations are
//! refused with a message that names the key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod handlers;
mod kafka;
mod observe;
mod policies;
mod start;

pub use self::handlers::HandlerTable;
pub use self::kafka::{KafkaClient, CONSUMER_ONLY, PRODUCER_ONLY};
pub use self::observe::ObserveConfig;
pub(crate) use self::policies::is_identifier;
pub use self::policies::{
    redact, store_kind, BreakerConfig, DedupConfig, LockConfig, RateLimitConfig, StaleConfig,
    StoreKind, StoresConfig, TransactionConfig,
};
pub use self::start::{StartFrom, StartFromError};

/// A setting that was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The settings file does not exist.
    #[error("settings file {path} does not exist")]
    Missing {
        /// The path as given.
        path: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings (an unknown key is named here).
    #[error("{0}")]
    Parse(String),
    /// A key's value is impossible, alone or with another key.
    #[error("`{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// Key order through retry tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Later messages of a key wait while one of its messages sits in a retry tier.
    #[default]
    Strict,
    /// Later messages of a key pass a message that sits in a retry tier.
    Relaxed,
}

/// In-place retry settings (`[retry]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per delivery, the first included.
    pub attempts: u32,
    /// Delay before the first retry, in milliseconds.
    pub min_delay_ms: u64,
    /// Longest delay between retries, in milliseconds.
    pub max_delay_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            min_delay_ms: 100,
            max_delay_ms: 30_000,
        }
    }
}

/// A duration in whole milliseconds, saturating at `i64::MAX` (the largest integer TOML
/// holds, so that any settings can be written out and read back).
pub(crate) fn millis(d: Duration) -> u64 {
    let cap = i64::MAX.unsigned_abs();
    u64::try_from(d.as_millis()).map_or(cap, |ms| ms.min(cap))
}

/// Every worker setting; the field names are the keys of `steadfast.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// `bootstrap.servers`. Env: `STEADFAST_BROKERS`.
    pub brokers: String,
    /// Consumer group; the handler's group when unset. Env: `STEADFAST_GROUP`.
    pub group: Option<String>,
    /// Source topic; the message type's topic when unset. Env: `STEADFAST_TOPIC`.
    pub topic: Option<String>,
    /// A regular expression: the handler reads every topic whose whole name it matches,
    /// those created later included, instead of one topic. Topics
    /// steadfast derives (retry tiers, dead-letter, stale and delay topics) never match.
    /// Env: `STEADFAST_TOPIC_PATTERN`.
    pub topic_pattern: Option<String>,
    /// How often the topics are listed for ones matching `topic_pattern`, in ms.
    /// Env: `STEADFAST_TOPIC_PATTERN_REFRESH_MS`.
    pub topic_pattern_refresh_ms: u64,
    /// Handler calls at once. Env: `STEADFAST_CONCURRENCY`.
    pub concurrency: usize,
    /// Messages delivered and unfinished before fetching pauses; 4 × concurrency when unset.
    /// Env: `STEADFAST_MAX_IN_FLIGHT`.
    pub max_in_flight: Option<usize>,
    /// Messages queued for one key before its partition pauses. Env: `STEADFAST_MAX_PER_KEY`.
    pub max_per_key: usize,
    /// Records one batch handler call takes at most (batch handlers only).
    /// Env: `STEADFAST_MAX_BATCH`.
    pub max_batch: usize,
    /// How long a batch waits for more records before its handler call starts, in ms
    /// (batch handlers only). Env: `STEADFAST_BATCH_LINGER_MS`.
    pub batch_linger_ms: u64,
    /// `strict` or `relaxed`. Env: `STEADFAST_ORDERING`.
    pub ordering: Ordering,
    /// In-place retry.
    pub retry: RetryConfig,
    /// Delay of each retry tier in milliseconds; tier n is `<topic>.<group>.retry.<n>`.
    /// Env: `STEADFAST_RETRY_TIERS_MS` (comma-separated).
    pub retry_tiers_ms: Vec<u64>,
    /// Name the retry tiers `<topic>.retry.<n>`, shared by every group of the topic, as
    /// before tiers belonged to a group (`<topic>.<group>.retry.<n>`); records another group
    /// routed there are skipped. For draining tiers of an earlier version; see
    /// docs/retry-and-dlq.md. Env: `STEADFAST_SHARED_RETRY_TOPICS`.
    pub shared_retry_topics: bool,
    /// Dead-letter topic; `<topic>.dlq` when unset. Env: `STEADFAST_DEAD_LETTER_TOPIC`.
    pub dead_letter_topic: Option<String>,
    /// Run the relay of the source topic's delayed messages in this worker: it creates the
    /// bucket topics (`<topic>.delay.<n>`) and joins `<topic>.delay-relay`, which delivers
    /// records sent with [`crate::Producer::send_at`] to the topic when they are due
    /// (docs/delayed-messages.md). Env: `STEADFAST_RELAY_DELAYED_MESSAGES`.
    pub relay_delayed_messages: bool,
    /// Time limit of one handler attempt, in ms. Env: `STEADFAST_HANDLER_TIMEOUT_MS`.
    pub handler_timeout_ms: u64,
    /// How long a revoke or a shutdown waits for running handlers, in ms.
    /// Env: `STEADFAST_DRAIN_TIMEOUT_MS`.
    pub drain_timeout_ms: u64,
    /// How often finished offsets are committed, in ms. Env: `STEADFAST_COMMIT_INTERVAL_MS`.
    pub commit_interval_ms: u64,
    /// Where a partition the group has no committed offset for starts: `earliest` (the
    /// default), `latest`, or an RFC 3339 time (the first record at or after it). Sets
    /// librdkafka's `auto.offset.reset`, which `[kafka]` may then not set too.
    /// Env: `STEADFAST_START_FROM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_from: Option<StartFrom>,
    /// Raw librdkafka properties passed through (`[kafka]` table).
    pub kafka: BTreeMap<String, String>,
    /// Where store tables and keys live (`[stores]`).
    pub stores: StoresConfig,
    /// Stale-message dropping (`[stale]`); off when absent.
    pub stale: Option<StaleConfig>,
    /// The per-key lock (`[lock]`); off when absent.
    pub lock: Option<LockConfig>,
    /// Deduplication by message id (`[dedup]`); off when absent.
    pub dedup: Option<DedupConfig>,
    /// Rate limit (`[rate_limit]`); off when absent.
    pub rate_limit: Option<RateLimitConfig>,
    /// Circuit breaker (`[breaker]`); off when absent.
    pub breaker: Option<BreakerConfig>,
    /// Circuit breakers of named dependencies the handler calls through
    /// [`crate::Context::dependency`] (`[dependencies.<name>]`, the keys of `[breaker]`).
    pub dependencies: BTreeMap<String, BreakerConfig>,
    /// Transactional idempotency on Postgres (`[transaction]`); off when absent.
    pub transaction: Option<TransactionConfig>,
    /// Metrics and health endpoint (`[observe]`).
    pub observe: ObserveConfig,
    /// The settings of each handler of a worker that runs several (`[handlers.<name>]`,
    /// `<name>` being the handler's `#[handler(group = ..)]`): keys that override the ones
    /// above for that handler alone.
    pub handlers: BTreeMap<String, HandlerTable>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            brokers: "127.0.0.1:9092".to_owned(),
            group: None,
            topic: None,
            topic_pattern: None,
            topic_pattern_refresh_ms: 30_000,
            concurrency: 64,
            max_in_flight: None,
            max_per_key: 256,
            max_batch: 256,
            batch_linger_ms: 5,
            ordering: Ordering::Strict,
            retry: RetryConfig::default(),
            retry_tiers_ms: Vec::new(),
            shared_retry_topics: false,
            dead_letter_topic: None,
            relay_delayed_messages: false,
            handler_timeout_ms: 30_000,
            drain_timeout_ms: 10_000,
            commit_interval_ms: 1_000,
            start_from: None,
            kafka: BTreeMap::new(),
            stores: StoresConfig::default(),
            stale: None,
            lock: None,
            dedup: None,
            rate_limit: None,
            breaker: None,
            dependencies: BTreeMap::new(),
            transaction: None,
            observe: ObserveConfig::default(),
            handlers: BTreeMap::new(),
        }
    }
}

/// The dedup reservation lease when none is configured, in ms.
pub const DEFAULT_DEDUP_LEASE_MS: u64 = 10_000;

/// The variable naming the settings file [`WorkerConfig::from_env`] reads.
pub const CONFIG_ENV: &str = "STEADFAST_CONFIG";

/// The file [`WorkerConfig::from_env`] reads, when present, if [`CONFIG_ENV`] is not set.
pub const DEFAULT_CONFIG_FILE: &str = "steadfast.toml";

/// The `STEADFAST_*` variables read as overrides, with the key each sets.
///
/// A variable that sets a key of a policy table (`STEADFAST_DEDUP_STORE` sets `dedup.store`)
/// turns the policy on, as a file with that table would.
pub const ENV_OVERRIDES: [(&str, &str); 31] = [
    ("STEADFAST_BROKERS", "brokers"),
    ("STEADFAST_GROUP", "group"),
    ("STEADFAST_TOPIC", "topic"),
    ("STEADFAST_TOPIC_PATTERN", "topic_pattern"),
    (
        "STEADFAST_TOPIC_PATTERN_REFRESH_MS",
        "topic_pattern_refresh_ms",
    ),
    ("STEADFAST_CONCURRENCY", "concurrency"),
    ("STEADFAST_MAX_IN_FLIGHT", "max_in_flight"),
    ("STEADFAST_MAX_PER_KEY", "max_per_key"),
    ("STEADFAST_MAX_BATCH", "max_batch"),
    ("STEADFAST_BATCH_LINGER_MS", "batch_linger_ms"),
    ("STEADFAST_ORDERING", "ordering"),
    ("STEADFAST_RETRY_TIERS_MS", "retry_tiers_ms"),
    ("STEADFAST_SHARED_RETRY_TOPICS", "shared_retry_topics"),
    ("STEADFAST_DEAD_LETTER_TOPIC", "dead_letter_topic"),
    ("STEADFAST_RELAY_DELAYED_MESSAGES", "relay_delayed_messages"),
    ("STEADFAST_HANDLER_TIMEOUT_MS", "handler_timeout_ms"),
    ("STEADFAST_DRAIN_TIMEOUT_MS", "drain_timeout_ms"),
    ("STEADFAST_COMMIT_INTERVAL_MS", "commit_interval_ms"),
    ("STEADFAST_OBSERVE_LISTEN", "observe.listen"),
    ("STEADFAST_OBSERVE_STALL_AFTER_MS", "observe.stall_after_ms"),
    (
        "STEADFAST_OBSERVE_LAG_INTERVAL_MS",
        "observe.lag_interval_ms",
    ),
    ("STEADFAST_START_FROM", "start_from"),
    ("STEADFAST_STORES_SCHEMA", "stores.schema"),
    ("STEADFAST_STORES_KEY_PREFIX", "stores.key_prefix"),
    (
        "STEADFAST_STORES_DEAD_LETTER_AFTER_REFUSALS",
        "stores.dead_letter_after_refusals",
    ),
    ("STEADFAST_STORES_COMBINE_CALLS", "stores.combine_calls"),
    ("STEADFAST_STALE_STORE", "stale.store"),
    ("STEADFAST_LOCK_STORE", "lock.store"),
    ("STEADFAST_DEDUP_STORE", "dedup.store"),
    ("STEADFAST_RATE_LIMIT_STORE", "rate_limit.store"),
    ("STEADFAST_TRANSACTION_POSTGRES", "transaction.postgres"),
];

impl WorkerConfig {
    /// Whether a policy stands between the stale check and the key lock in the stack (a
    /// circuit breaker or a rate limit): then the stale check runs before them.
    pub(crate) fn policies_between_stale_and_lock(&self) -> bool {
        self.breaker.is_some() || self.rate_limit.is_some()
    }

    /// Parses `steadfast.toml` text and checks it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: WorkerConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the file at `path`, applies the `STEADFAST_*` environment overrides, and checks
    /// the result. A file that does not exist is an error ([`ConfigError::Missing`]): a
    /// path given by name is never silently replaced by the defaults. See
    /// [`from_env`](Self::from_env) for a file that may be absent.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let text = read(path.as_ref())?;
        Self::from_toml_and_env(&text, std::env::vars())
    }

    /// The settings of a deployment: the file the `STEADFAST_CONFIG` variable names (an error
    /// when it does not exist), else `steadfast.toml` in the working directory when it exists,
    /// else the defaults; then the `STEADFAST_*` environment overrides, and the checks.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars().collect())
    }

    /// [`from_env`](Self::from_env) with `vars` as the environment.
    fn from_vars(vars: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let named = vars
            .iter()
            .find(|(name, _)| name == CONFIG_ENV)
            .map(|(_, path)| path.clone());
        let text = match named {
            Some(path) => read(Path::new(&path))?,
            None => match read(Path::new(DEFAULT_CONFIG_FILE)) {
                Err(ConfigError::Missing { .. }) => String::new(),
                other => other?,
            },
        };
        Self::from_toml_and_env(&text, vars)
    }

    /// What [`load`](Self::load) does with a file's text, with `vars` as the environment
    /// instead of the process's: parses `text` (`steadfast.toml`), applies the `STEADFAST_*`
    /// overrides among `vars`, and checks the result.
    pub fn from_toml_and_env(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        apply_env(&mut table, vars.into_iter())?;
        let config: WorkerConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses impossible values and combinations, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.brokers.trim().is_empty() {
            return invalid("brokers", "must name at least one host:port");
        }
        if self.concurrency == 0 {
            return invalid("concurrency", "must be at least 1");
        }
        if self.start_from.is_some() && self.kafka.contains_key("auto.offset.reset") {
            return invalid(
                "start_from",
                "set either `start_from` or `[kafka] auto.offset.reset`, not both",
            );
        }
        if let Some(max) = self.max_in_flight {
            if max < self.concurrency {
                return invalid("max_in_flight", "must be at least `concurrency`, or no handler could ever run at full concurrency");
            }
        }
        if self.max_per_key == 0 {
            return invalid("max_per_key", "must be at least 1");
        }
        if self.max_batch == 0 {
            return invalid("max_batch", "must be at least 1");
        }
        if self.batch_linger_ms > self.handler_timeout_ms {
            return invalid(
                "batch_linger_ms",
                "is longer than `handler_timeout_ms`: a record would wait longer for its batch than its handler may run",
            );
        }
        if self.retry.attempts == 0 {
            return invalid(
                "retry.attempts",
                "must be at least 1 (the first attempt counts)",
            );
        }
        if self.retry.min_delay_ms > self.retry.max_delay_ms {
            return invalid("retry.min_delay_ms", "is larger than `retry.max_delay_ms`");
        }
        if self.retry_tiers_ms.contains(&0) {
            return invalid(
                "retry_tiers_ms",
                "a tier delay of 0 ms would busy-loop; give each tier a delay",
            );
        }
        if self.ordering == Ordering::Strict
            && !self.retry_tiers_ms.is_empty()
            && !self.range_assigned()
        {
            return invalid(
                "kafka.partition.assignment.strategy",
                "strict ordering through retry tiers holds a key back only where partition p of the topic and of its tiers go to one member, which the `range` assignor does (cooperative-sticky, roundrobin and the broker's `uniform` assignor of `group.protocol = consumer` do not): leave the strategy unset (`range`; with `group.protocol = consumer`, set `group.remote.assignor = range`), or set `ordering = \"relaxed\"`",
            );
        }
        if self.handler_timeout_ms == 0 {
            return invalid("handler_timeout_ms", "must be positive");
        }
        if self.commit_interval_ms == 0 {
            return invalid("commit_interval_ms", "must be positive");
        }
        if self.dead_letter_topic.is_some() && self.dead_letter_topic == self.topic {
            return invalid(
                "dead_letter_topic",
                "is the source topic: dead letters would be consumed again",
            );
        }
        self.validate_policies()?;
        self.validate_observe_and_kafka()?;
        self.validate_handlers()
    }

    /// The `[observe]` settings and the `[kafka]` properties steadfast sets itself.
    fn validate_observe_and_kafka(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if let Some(listen) = &self.observe.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return invalid(
                    "observe.listen",
                    "must be an `ip:port` address such as `0.0.0.0:9464`",
                );
            }
        }
        if self.observe.stall_after_ms == 0 {
            return invalid("observe.stall_after_ms", "must be positive");
        }
        if self.observe.lag_interval_ms == 0 {
            return invalid(
                "observe.lag_interval_ms",
                "must be positive (it is librdkafka's `statistics.interval.ms`)",
            );
        }
        if self.kafka.get("statistics.interval.ms").map(String::as_str) == Some("0") {
            return invalid(
                "kafka",
                "`statistics.interval.ms` = 0 turns off the consumer-lag metric and the stall detector's view of the log; set `observe.lag_interval_ms` instead",
            );
        }
        for key in [
            "enable.auto.offset.store",
            "enable.auto.commit",
            "group.id",
            "bootstrap.servers",
        ] {
            if self.kafka.contains_key(key) {
                return Err(ConfigError::Invalid {
                    key: "kafka",
                    reason: format!("`{key}` is set by steadfast and cannot be overridden"),
                });
            }
        }
        Ok(())
    }

    fn validate_policies(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if !is_identifier(&self.stores.schema) {
            return invalid(
                "stores.schema",
                "must be a plain lower-case identifier (letters, digits, `_`, at most 63)",
            );
        }
        if self.stores.key_prefix.is_empty() {
            return invalid("stores.key_prefix", "must not be empty");
        }
        if self.stores.dead_letter_after_refusals == Some(0) {
            return invalid(
                "stores.dead_letter_after_refusals",
                "must be at least 1 (leave it unset to wait until the store is fixed)",
            );
        }
        if let Some(stale) = &self.stale {
            store_kind("stale.store", &stale.store)?;
        }
        if let Some(lock) = &self.lock {
            store_kind("lock.store", &lock.store)?;
            if lock.lease_ms < 100 {
                return invalid(
                    "lock.lease_ms",
                    "must be at least 100 ms (it is renewed every third of it)",
                );
            }
            if lock.keep_ms > lock.lease_ms {
                return invalid(
                    "lock.keep_ms",
                    "must not be longer than `lease_ms` (a lease is handed on only while two thirds of it remain)",
                );
            }
        }
        if let Some(dedup) = &self.dedup {
            store_kind("dedup.store", &dedup.store)?;
            if dedup.ttl_ms == 0 || dedup.lease_ms == Some(0) {
                return invalid("dedup.ttl_ms", "`ttl_ms` and `lease_ms` must be positive");
            }
        }
        if let Some(rate) = &self.rate_limit {
            if rate.per_second == 0 {
                return invalid("rate_limit.per_second", "must be at least 1");
            }
            if rate.burst == 0 {
                return invalid("rate_limit.burst", "must be at least 1");
            }
            if let Some(url) = &rate.store {
                if store_kind("rate_limit.store", url)? != StoreKind::Redis {
                    return invalid("rate_limit.store", "a shared rate limit lives in Redis: give a `redis://` URL, or leave it out for a per-worker limit");
                }
            }
        }
        if let Some(breaker) = &self.breaker {
            if let Err((field, reason)) = breaker.check() {
                return invalid(field, reason);
            }
        }
        for (name, breaker) in &self.dependencies {
            if name.is_empty() {
                return invalid("dependencies", "a dependency needs a name");
            }
            if let Err((field, reason)) = breaker.check() {
                let field = field.strip_prefix("breaker.").unwrap_or(field);
                return Err(ConfigError::Invalid {
                    key: "dependencies",
                    reason: format!("`dependencies.{name}.{field}` {reason}"),
                });
            }
        }
        if let Some(tx) = &self.transaction {
            if store_kind("transaction.postgres", &tx.postgres)? != StoreKind::Postgres {
                return invalid("transaction.postgres", "must be a `postgres://` URL");
            }
            if let Some(lock) = &self.lock {
                if store_kind("lock.store", &lock.store)? == StoreKind::Memory {
                    return invalid("lock.store", "a memory lock's tokens start again at 1 in every process, and the transaction's fence keeps the largest token ever seen: use a Redis or Postgres lock with `[transaction]`");
                }
            }
        }
        Ok(())
    }

    /// Whether the group's assignor is `range` (the default; the first of a list is the one
    /// preferred): partition p of every subscribed topic goes to one member.
    fn range_assigned(&self) -> bool {
        let first = |name: &str| {
            self.kafka
                .get(name)
                .map(|value| value.split(',').next().map(str::trim).unwrap_or_default())
        };
        // The group protocol of KIP-848 assigns on the broker (`group.remote.assignor`, the
        // broker's `uniform` unless set) and ignores the client's strategy.
        if first("group.protocol") == Some("consumer") {
            return first("group.remote.assignor") == Some("range");
        }
        first("partition.assignment.strategy").is_none_or(|strategy| strategy == "range")
    }

    /// How long a dedup reservation outlives a crashed holder: the configured lease, or 10 s.
    /// A running holder renews it every third of the lease.
    pub fn dedup_lease(&self) -> Duration {
        let configured = self.dedup.as_ref().and_then(|d| d.lease_ms);
        Duration::from_millis(configured.unwrap_or(DEFAULT_DEDUP_LEASE_MS))
    }
}

/// The text of the settings file at `path`.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| {
        let path = path.display().to_string();
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::Missing { path }
        } else {
            ConfigError::Read { path, source }
        }
    })
}

/// The prefix of environment variables that set librdkafka properties:
/// `STEADFAST_KAFKA_SESSION_TIMEOUT_MS=6000` sets `session.timeout.ms` in `[kafka]`.
pub const KAFKA_ENV_PREFIX: &str = "STEADFAST_KAFKA_";

/// Puts every `STEADFAST_KAFKA_<NAME>` of `vars` into the `[kafka]` table as the property
/// `<name>` in lower case with `_` read as `.`.
fn apply_kafka_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, value) in vars {
        let Some(name) = var.strip_prefix(KAFKA_ENV_PREFIX) else {
            continue;
        };
        let property = name.to_ascii_lowercase().replace('_', ".");
        let kafka = table
            .entry("kafka")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match kafka {
            toml::Value::Table(kafka) => {
                kafka.insert(property, toml::Value::String(value));
            }
            _ => return Err(ConfigError::Parse("`kafka` must be a table".to_owned())),
        }
    }
    Ok(())
}

/// Applies the `STEADFAST_*` overrides among `vars` to `table`.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let vars: Vec<(String, String)> = vars.collect();
    for (var, key) in ENV_OVERRIDES {
        if let Some((_, value)) = vars.iter().find(|(name, _)| name == var) {
            set_dotted(table, key, env_value(key, value))?;
        }
    }
    apply_kafka_env(table, vars.into_iter())
}

/// Sets `key` (`name` or `table.name`) in `table`, creating the inner table.
fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), ConfigError> {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
        }
        Some((outer, inner)) => {
            let entry = table
                .entry(outer)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => {
                    t.insert(inner.to_owned(), value);
                }
                _ => return Err(ConfigError::Parse(format!("`{outer}` must be a table"))),
            }
        }
    }
    Ok(())
}

/// An environment value as the TOML value of `key`.
fn env_value(key: &str, value: &str) -> toml::Value {
    match key {
        "concurrency"
        | "max_in_flight"
        | "max_per_key"
        | "max_batch"
        | "batch_linger_ms"
        | "handler_timeout_ms"
        | "drain_timeout_ms"
        | "commit_interval_ms"
        | "topic_pattern_refresh_ms"
        | "observe.stall_after_ms"
        | "observe.lag_interval_ms"
        | "stores.dead_letter_after_refusals" => value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .unwrap_or_else(|_| toml::Value::String(value.to_owned())),
        "shared_retry_topics" | "relay_delayed_messages" | "stores.combine_calls" => {
            match value.trim() {
                "true" | "1" => toml::Value::Boolean(true),
                "false" | "0" => toml::Value::Boolean(false),
                _ => toml::Value::String(value.to_owned()),
            }
        }
        "retry_tiers_ms" => toml::Value::Array(
            value
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse::<i64>()
                        .map(toml::Value::Integer)
                        .unwrap_or_else(|_| toml::Value::String(s.to_owned()))
                })
                .collect(),
        ),
        _ => toml::Value::String(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = WorkerConfig::from_toml("concurency = 4\n").expect_err("refused");
        assert!(err.to_string().contains("concurency"), "{err}");
        let err = WorkerConfig::from_toml("[retry]\nattempt = 4\n").expect_err("refused");
        assert!(err.to_string().contains("attempt"), "{err}");
    }

    #[test]
    fn impossible_combinations_are_refused_by_name() {
        for (text, key) in [
            ("concurrency = 8\nmax_in_flight = 4\n", "max_in_flight"),
            (
                "[retry]\nmin_delay_ms = 10\nmax_delay_ms = 5\n",
                "retry.min_delay_ms",
            ),
            ("retry_tiers_ms = [1000, 0]\n", "retry_tiers_ms"),
            (
                "topic = \"a\"\ndead_letter_topic = \"a\"\n",
                "dead_letter_topic",
            ),
            (
                "[kafka]\n\"enable.auto.commit\" = \"true\"\n",
                "enable.auto.commit",
            ),
            ("concurrency = 0\n", "concurrency"),
            ("[lock]\nstore = \"etcd://x\"\n", "lock.store"),
            (
                "[lock]\nstore = \"memory\"\nlease_ms = 10\n",
                "lock.lease_ms",
            ),
            (
                "[lock]\nstore = \"memory\"\nlease_ms = 1000\nkeep_ms = 1001\n",
                "lock.keep_ms",
            ),
            ("[rate_limit]\nper_second = 0\n", "rate_limit.per_second"),
            (
                "[rate_limit]\nper_second = 5\nstore = \"postgres://u@h/d\"\n",
                "rate_limit.store",
            ),
            (
                "[breaker]\nfailure_rate_percent = 150\n",
                "breaker.failure_rate_percent",
            ),
            (
                "[dependencies.payments]\nmin_calls = 0\n",
                "dependencies.payments.min_calls",
            ),
            (
                "[transaction]\npostgres = \"redis://h\"\n",
                "transaction.postgres",
            ),
            ("[stores]\nschema = \"Bad-Name\"\n", "stores.schema"),
            (
                "retry_tiers_ms = [1000]\n[kafka]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n",
                "kafka.partition.assignment.strategy",
            ),
            (
                "retry_tiers_ms = [1000]\n[kafka]\n\"partition.assignment.strategy\" = \"roundrobin,range\"\n",
                "kafka.partition.assignment.strategy",
            ),
            (
                "retry_tiers_ms = [1000]\n[kafka]\n\"group.protocol\" = \"consumer\"\n",
                "kafka.partition.assignment.strategy",
            ),
            (
                "[lock]\nstore = \"memory\"\n[transaction]\npostgres = \"postgres://u@h/d\"\n",
                "lock.store",
            ),
        ] {
            let err = WorkerConfig::from_toml(text).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn a_cooperative_assignor_is_taken_where_no_key_is_held_back_for_a_tier() {
        for text in [
            "retry_tiers_ms = [1000]\n[kafka]\n\"partition.assignment.strategy\" = \"range\"\n",
            "retry_tiers_ms = [1000]\n[kafka]\n\"partition.assignment.strategy\" = \"range, cooperative-sticky\"\n",
            "ordering = \"relaxed\"\nretry_tiers_ms = [1000]\n[kafka]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n",
            "[kafka]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n",
            "retry_tiers_ms = [1000]\n[kafka]\n\"group.protocol\" = \"consumer\"\n\"group.remote.assignor\" = \"range\"\n",
        ] {
            WorkerConfig::from_toml(text).expect(text);
        }
    }

    #[test]
    fn a_full_file_parses() {
        let c = WorkerConfig::from_toml(
            "brokers = \"k:9092\"\nconcurrency = 8\nordering = \"relaxed\"\nretry_tiers_ms = [10000, 300000]\n[retry]\nattempts = 5\n[kafka]\n\"fetch.min.bytes\" = \"1\"\n",
        )
        .expect("valid");
        assert_eq!(c.ordering, Ordering::Relaxed);
        assert_eq!(c.retry.attempts, 5);
        assert_eq!(c.retry_tiers_ms, vec![10_000, 300_000]);
        assert_eq!(
            c.kafka.get("fetch.min.bytes").map(String::as_str),
            Some("1")
        );
    }

    #[test]
    fn kafka_properties_come_from_the_environment() {
        let mut table: toml::Table =
            toml::from_str("[kafka]\n\"fetch.min.bytes\" = \"1\"\n").expect("toml");
        let vars = [
            (
                "STEADFAST_KAFKA_SESSION_TIMEOUT_MS".to_owned(),
                "6000".to_owned(),
            ),
            ("STEADFAST_BROKERS".to_owned(), "ignored here".to_owned()),
        ];
        apply_kafka_env(&mut table, vars.into_iter()).expect("applied");
        let config: WorkerConfig = table.try_into().expect("valid");
        assert_eq!(
            config.kafka.get("session.timeout.ms").map(String::as_str),
            Some("6000")
        );
        assert_eq!(
            config.kafka.get("fetch.min.bytes").map(String::as_str),
            Some("1")
        );
        assert_eq!(config.kafka.len(), 2);
    }

    #[test]
    fn overrides_reach_keys_of_inner_tables() {
        let mut table: toml::Table =
            toml::from_str("[observe]\nstall_after_ms = 5000\n").expect("toml");
        let vars = [
            ("STEADFAST_OBSERVE_LISTEN", "0.0.0.0:9464"),
            ("STEADFAST_OBSERVE_LAG_INTERVAL_MS", "1500"),
            ("STEADFAST_CONCURRENCY", "12"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        apply_env(&mut table, vars.into_iter()).expect("applies");
        let config: WorkerConfig = table.try_into().expect("valid");
        assert_eq!(config.observe.listen.as_deref(), Some("0.0.0.0:9464"));
        assert_eq!(config.observe.lag_interval_ms, 1500);
        assert_eq!(
            config.observe.stall_after_ms, 5000,
            "the file's value stays"
        );
        assert_eq!(config.concurrency, 12);
        let bad = WorkerConfig::from_toml("[observe]\nlisten = \"localhost\"\n");
        assert!(
            bad.is_err_and(|e| e.to_string().contains("observe.listen")),
            "an address without a port is refused by name"
        );
    }

    #[test]
    fn a_settings_file_that_does_not_exist_is_an_error() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("steadfast.tmol");
        let err = WorkerConfig::load(&missing).expect_err("a missing file is refused");
        assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");
        assert!(
            err.to_string().contains("steadfast.tmol"),
            "the path is named: {err}"
        );
        let named = vec![(CONFIG_ENV.to_owned(), missing.display().to_string())];
        let err = WorkerConfig::from_vars(named).expect_err("a missing STEADFAST_CONFIG file");
        assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");

        let present = dir.path().join("worker.toml");
        std::fs::write(&present, "concurrency = 3\n").expect("written");
        let named = vec![
            (CONFIG_ENV.to_owned(), present.display().to_string()),
            ("STEADFAST_MAX_PER_KEY".to_owned(), "9".to_owned()),
        ];
        let config = WorkerConfig::from_vars(named).expect("read");
        assert_eq!((config.concurrency, config.max_per_key), (3, 9));
    }

    #[test]
    fn store_settings_come_from_the_environment() {
        let vars = [
            ("STEADFAST_DEDUP_STORE", "redis://127.0.0.1:6379/2"),
            ("STEADFAST_STALE_STORE", "postgres://app@db/main"),
            ("STEADFAST_STORES_SCHEMA", "billing"),
            ("STEADFAST_STORES_KEY_PREFIX", "billing-prod"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config =
            WorkerConfig::from_toml_and_env("[dedup]\nttl_ms = 1000\n", vars).expect("valid");
        let dedup = config.dedup.expect("[dedup] is on");
        assert_eq!(dedup.store, "redis://127.0.0.1:6379/2");
        assert_eq!(dedup.ttl_ms, 1000, "the file's other keys stay");
        assert_eq!(
            config.stale.map(|s| s.store).as_deref(),
            Some("postgres://app@db/main"),
            "a policy's store variable turns the policy on"
        );
        assert_eq!(config.stores.schema, "billing");
        assert_eq!(config.stores.key_prefix, "billing-prod");
    }

    #[test]
    fn policies_parse_with_their_defaults() {
        let c = WorkerConfig::from_toml(
            "[stale]\nstore = \"redis://127.0.0.1:6379\"\n[lock]\nstore = \"postgres://postgres@127.0.0.1/test\"\n[dedup]\nstore = \"memory\"\n[rate_limit]\nper_second = 50\nburst = 5\n[breaker]\nmin_calls = 5\n[transaction]\npostgres = \"postgres://postgres@127.0.0.1/test\"\n",
        )
        .expect("valid");
        assert_eq!(c.lock.as_ref().map(|l| l.lease_ms), Some(10_000));
        assert_eq!(c.dedup.as_ref().map(|d| d.ttl_ms), Some(7 * 24 * 3_600_000));
        assert_eq!(
            c.breaker
                .as_ref()
                .map(|b| (b.min_calls, b.failure_rate_percent)),
            Some((5, 50))
        );
        assert_eq!(
            c.rate_limit
                .as_ref()
                .map(|r| (r.per_second, r.burst, r.store.is_none())),
            Some((50, 5, true))
        );
        assert_eq!(c.stores.schema, "steadfast");
        // Renewed while held: a short lease by default.
        assert_eq!(c.dedup_lease(), Duration::from_secs(10));
        assert!(
            WorkerConfig::default().stale.is_none(),
            "policies are off by default"
        );
    }

    #[test]
    fn start_from_and_the_offset_reset_it_sets_are_not_both_given() {
        let mut c = WorkerConfig {
            start_from: Some(StartFrom::Latest),
            ..WorkerConfig::default()
        };
        assert!(c.validate().is_ok());
        c.kafka
            .insert("auto.offset.reset".to_owned(), "earliest".to_owned());
        let err = c.validate().expect_err("both given");
        assert!(err.to_string().contains("start_from"), "{err}");
        let parsed =
            WorkerConfig::from_toml("start_from = \"2026-12-01T00:00:00Z\"\n").expect("a time");
        assert_eq!(parsed.start_from, Some(StartFrom::Time(1_796_083_200_000)));
        let err = WorkerConfig::from_toml("start_from = \"soon\"\n").expect_err("not a time");
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }
}
