//! The retry tiers' delays and topic names.

use std::time::Duration;

use crate::config::WorkerConfig;

/// The delays of the retry tiers, in order: tier `n` of group `g` is `<topic>.<g>.retry.<n>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryTiers(pub Vec<Duration>);

/// How retry-tier topics are named: one set per consumer group (the default), or the shared
/// names of earlier versions, `<topic>.retry.<n>`, which every group of a topic consumes
/// (a worker then skips the records another group routed there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierNames {
    group: String,
    shared: bool,
}

impl TierNames {
    /// Names of `group`'s tiers: `<topic>.<group>.retry.<n>`, or `<topic>.retry.<n>` when
    /// `shared`.
    pub fn new(group: &str, shared: bool) -> Self {
        TierNames {
            group: group.to_owned(),
            shared,
        }
    }
    /// The consumer group the tiers belong to.
    pub fn group(&self) -> &str {
        &self.group
    }
    /// The topic of tier `n` (1-based) for source topic `topic`.
    pub fn topic(&self, topic: &str, n: u32) -> String {
        if self.shared {
            RetryTiers::shared_topic(topic, n)
        } else {
            RetryTiers::topic(topic, &self.group, n)
        }
    }
}

impl WorkerConfig {
    /// The retry tiers' delays.
    pub fn retry_tiers(&self) -> RetryTiers {
        RetryTiers(
            self.retry_tiers_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        )
    }
}

impl RetryTiers {
    /// The topic of tier `n` (1-based) of consumer group `group` for source topic `topic`.
    pub fn topic(topic: &str, group: &str, n: u32) -> String {
        format!("{topic}.{group}.retry.{n}")
    }
    /// The shared name of tier `n` used before tiers belonged to a group (and with
    /// `shared_retry_topics`): `<topic>.retry.<n>`.
    pub fn shared_topic(topic: &str, n: u32) -> String {
        format!("{topic}.retry.{n}")
    }
    /// How many tiers there are.
    pub fn len(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
