//! `[handlers.<name>]`: the settings of one handler of a worker that runs several, given as
//! a table whose keys override the top-level ones for that handler alone; and the topic
//! pattern a handler may subscribe to instead of one topic.

use serde::{Deserialize, Serialize};

use super::{ConfigError, WorkerConfig};

/// The keys of one `[handlers.<name>]` table, kept as TOML until the handler's settings are
/// made ([`WorkerConfig::for_handler`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HandlerTable(pub toml::Table);

// TOML values hold floats, but no key of these settings is a float.
impl Eq for HandlerTable {}

/// Keys a `[handlers.<name>]` table may not set: they belong to the worker as a whole.
const WORKER_WIDE: [&str; 2] = ["handlers", "observe"];

impl WorkerConfig {
    /// The settings of the handler named `name` (its `#[handler(group = ..)]`): these, with
    /// the keys of `[handlers.<name>]` put over them (a table key merges key by key: a
    /// `[handlers.<name>.retry]` with only `attempts` keeps the other `[retry]` keys), and no
    /// `handlers` tables of their own. Without such a table, these settings as they are.
    pub fn for_handler(&self, name: &str) -> Result<WorkerConfig, ConfigError> {
        let mut own = self.clone();
        own.handlers.clear();
        let Some(HandlerTable(table)) = self.handlers.get(name) else {
            return Ok(own);
        };
        if let Some(key) = WORKER_WIDE.iter().find(|k| table.contains_key(**k)) {
            return Err(ConfigError::Parse(format!(
                "[handlers.{name}]: `{key}` belongs to the whole worker: set it at the top level"
            )));
        }
        let at = |e: &dyn std::fmt::Display| ConfigError::Parse(format!("[handlers.{name}]: {e}"));
        let mut merged = toml::Table::try_from(&own).map_err(|e| at(&e))?;
        merge(&mut merged, table);
        let config: WorkerConfig = merged.try_into().map_err(|e| at(&e))?;
        config.validate().map_err(|e| at(&e))?;
        Ok(config)
    }

    /// Unsets the keys that name a handler's topics and group (`topic`, `topic_pattern`,
    /// `group`, `dead_letter_topic`, `relay_delayed_messages`): each handler after the first
    /// starts without them.
    pub(crate) fn clear_naming(&mut self) {
        self.topic = None;
        self.topic_pattern = None;
        self.group = None;
        self.dead_letter_topic = None;
        self.relay_delayed_messages = false;
    }

    /// The topic pattern, compiled to match whole names; `None` when the handler reads one
    /// topic.
    pub(crate) fn topic_regex(&self) -> Result<Option<regex::Regex>, ConfigError> {
        let Some(pattern) = &self.topic_pattern else {
            return Ok(None);
        };
        regex::Regex::new(&format!("^(?:{pattern})$"))
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                key: "topic_pattern",
                reason: format!("not a regular expression: {e}"),
            })
    }

    /// The checks of the pattern keys and of every `[handlers.<name>]` table.
    pub(super) fn validate_handlers(&self) -> Result<(), ConfigError> {
        if self.topic.is_some() && self.topic_pattern.is_some() {
            return Err(ConfigError::Invalid {
                key: "topic_pattern",
                reason: "set either `topic` or `topic_pattern`, not both".to_owned(),
            });
        }
        self.topic_regex()?;
        if self.topic_pattern_refresh_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "topic_pattern_refresh_ms",
                reason: "must be positive".to_owned(),
            });
        }
        if self.topic_pattern.is_some() && self.kafka.contains_key("group.instance.id") {
            return Err(ConfigError::Invalid {
                key: "topic_pattern",
                reason: "each topic of a pattern has a consumer of its own in the handler's group, and one static `group.instance.id` would make them fence each other: leave `[kafka] group.instance.id` out".to_owned(),
            });
        }
        // Which handler comes first is known only to the builder, which checks each table
        // again over that handler's own settings: here, as over any handler after the first.
        let mut later = self.clone();
        later.clear_naming();
        for name in self.handlers.keys() {
            later.for_handler(name)?;
        }
        Ok(())
    }
}

/// Puts the keys of `over` into `base`; a table under a key present in both is merged the
/// same way, anything else replaced.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over_inner)) => {
                merge(inner, over_inner);
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
brokers = "k:9092"
concurrency = 16
[retry]
attempts = 4
max_delay_ms = 5000
[handlers.billing]
concurrency = 2
retry_tiers_ms = [1000]
[handlers.billing.retry]
attempts = 7
[handlers.billing.breaker]
min_calls = 5
[handlers.audit]
topic_pattern = "audit\\..+"
"#;

    #[test]
    fn a_handler_table_overrides_key_by_key() {
        let config = WorkerConfig::from_toml(FILE).expect("valid");
        let billing = config.for_handler("billing").expect("billing");
        assert_eq!(billing.brokers, "k:9092", "top-level keys are inherited");
        assert_eq!(billing.concurrency, 2);
        assert_eq!(billing.retry_tiers_ms, vec![1000]);
        assert_eq!(
            (billing.retry.attempts, billing.retry.max_delay_ms),
            (7, 5000),
            "an inner table merges key by key"
        );
        assert_eq!(billing.breaker.map(|b| b.min_calls), Some(5));
        assert!(billing.handlers.is_empty());
        let audit = config.for_handler("audit").expect("audit");
        assert_eq!(audit.concurrency, 16);
        assert_eq!(audit.topic_pattern.as_deref(), Some("audit\\..+"));
        assert!(
            audit.breaker.is_none(),
            "one handler's table is not another's"
        );
        let other = config.for_handler("shipping").expect("no table");
        assert_eq!((other.concurrency, other.retry.attempts), (16, 4));
    }

    #[test]
    fn a_table_is_checked_at_load_as_for_a_handler_after_the_first() {
        // The top level's topic is the first handler's; a pattern in another's table is fine.
        let config = WorkerConfig::from_toml(
            "topic = \"orders\"\n[handlers.audit]\ntopic_pattern = \"audit\\\\..+\"\n",
        )
        .expect("valid at load");
        let err = config
            .for_handler("audit")
            .expect_err("but not for a first handler, which has the topic");
        assert!(
            err.to_string()
                .contains("either `topic` or `topic_pattern`"),
            "{err}"
        );
        let mut later = config.clone();
        later.clear_naming();
        assert_eq!(
            later
                .for_handler("audit")
                .expect("valid")
                .topic_pattern
                .as_deref(),
            Some("audit\\..+")
        );
    }

    #[test]
    fn durations_past_what_toml_holds_are_capped_and_merge() {
        let mut config = WorkerConfig::default();
        config.drain_timeout_ms = crate::config::millis(std::time::Duration::MAX);
        config.handlers.insert(
            "a".to_owned(),
            HandlerTable(toml::from_str("concurrency = 2").expect("toml")),
        );
        let merged = config.for_handler("a").expect("merges");
        assert_eq!(
            (merged.concurrency, merged.drain_timeout_ms),
            (2, i64::MAX.unsigned_abs())
        );
    }

    #[test]
    fn a_bad_handler_table_is_refused_naming_it() {
        for (text, words) in [
            (
                "[handlers.a]\nconcurency = 2\n",
                "[handlers.a]: unknown field `concurency`",
            ),
            (
                "[handlers.a]\nconcurrency = 0\n",
                "[handlers.a]: `concurrency`: must be at least 1",
            ),
            (
                "[handlers.a.observe]\nlisten = \"0.0.0.0:1\"\n",
                "`observe` belongs to the whole worker",
            ),
            (
                "[handlers.a.handlers.b]\nconcurrency = 2\n",
                "`handlers` belongs",
            ),
            (
                "[handlers.a]\ntopic = \"x\"\ntopic_pattern = \"^x\"\n",
                "either `topic` or `topic_pattern`",
            ),
            ("topic_pattern = \"^(x\"\n", "not a regular expression"),
            ("topic_pattern_refresh_ms = 0\n", "topic_pattern_refresh_ms"),
            (
                "topic_pattern = \"a.+\"\n[kafka]\n\"group.instance.id\" = \"pod-1\"\n",
                "fence each other",
            ),
        ] {
            let err = WorkerConfig::from_toml(text).expect_err(text);
            assert!(err.to_string().contains(words), "{text}: {err}");
        }
    }
}
