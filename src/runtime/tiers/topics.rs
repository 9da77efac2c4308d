//! The topics of a worker's routing: its group's retry tiers (subscribed to with the source
//! topic), the dead-letter topic and the stale-copy topic, created when missing with the
//! source topic's partition count.

use std::sync::Arc;

use rdkafka::config::ClientConfig;

use super::Topology;
use crate::broker::{ensure_topics_closing, Ensured};
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::policy::{self, RetryTiers, TierNames};

/// A worker's source topic and the topics its routing writes to.
#[derive(Debug, Clone)]
pub(crate) struct RoutingTopics {
    /// The source topic.
    pub(crate) source: String,
    /// How the tiers are named.
    pub(crate) names: TierNames,
    /// Tier `n`'s topic at index `n - 1`.
    pub(crate) tiers: Vec<String>,
    /// The dead-letter topic.
    pub(crate) dead_letter: String,
    /// The topic stale records are copied to, when they are.
    stale: Option<String>,
}

impl RoutingTopics {
    /// The topics of a worker of `group` consuming `source` through `tiers`, as `config`
    /// names them.
    pub(crate) fn of(config: &WorkerConfig, source: &str, group: &str, tiers: &RetryTiers) -> Self {
        let names = TierNames::new(group, config.shared_retry_topics);
        let tier_topics = (1..=tiers.len()).map(|n| names.topic(source, n)).collect();
        let dead_letter = config
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{source}.dlq"));
        let stale = config
            .stale
            .as_ref()
            .is_some_and(|s| s.copy_to_topic)
            .then(|| policy::stale_topic(source));
        RoutingTopics {
            source: source.to_owned(),
            names,
            tiers: tier_topics,
            dead_letter,
            stale,
        }
    }

    /// The topics created when missing: the tiers, the dead-letter topic, the stale topic.
    fn derived(&self) -> Vec<String> {
        let mut derived = self.tiers.clone();
        derived.push(self.dead_letter.clone());
        derived.extend(self.stale.clone());
        derived
    }

    /// What the worker subscribes to: the source topic and its tiers.
    pub(crate) fn subscription(&self) -> Vec<&str> {
        std::iter::once(self.source.as_str())
            .chain(self.tiers.iter().map(String::as_str))
            .collect()
    }

    /// Which topic is which tier, for the dispatcher and the read-back.
    pub(crate) fn topology(&self) -> Topology {
        Topology {
            group: Arc::from(self.names.group()),
            tiers: self.tiers.iter().map(|t| Arc::from(t.as_str())).collect(),
        }
    }

    /// Makes sure the source topic exists and creates the derived topics that are missing,
    /// with its partition count, through a client of `config` (closing as it returns: see
    /// [`Ensured`]).
    pub(crate) async fn ensure(&self, config: &ClientConfig) -> Result<Ensured, WorkerError> {
        ensure_topics_closing(config, &self.source, &self.derived()).await
    }
}
