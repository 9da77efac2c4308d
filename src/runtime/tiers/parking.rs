//! Parking, strict ordering's rule for retry tiers: while a record of a key sits in a retry
//! tier, the later records of the key in its source partition wait — the key is *parked* —
//! until every record of it that sits in a tier resolved (handled, dropped or dead-lettered).
//!
//! A key is parked only while the tier partition its record went to is assigned to this
//! worker (the range assignor gives partition p of the source and of its tiers to one
//! member), so the record it waits for is fetched here. A key waits for its tier record
//! however long that takes; past the park limit it is reported, once.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::{first_delivery_lane, Topology};
use crate::config::WorkerConfig;
use crate::message::{headers, Envelope, Outcome, RouteTarget};
use crate::runtime::dispatch::{LaneKey, TopicPartition};

/// How long a key may stay parked for a retry tier before it is reported (it keeps waiting):
/// twice every tier's delay plus the longest in-place retrying of every tier, and five
/// minutes of slack.
pub(crate) fn park_limit(config: &WorkerConfig) -> Duration {
    let tiers: u64 = config.retry_tiers_ms.iter().sum();
    let per_delivery = u64::from(config.retry.attempts).saturating_mul(
        config
            .handler_timeout_ms
            .saturating_add(config.retry.max_delay_ms),
    );
    let deliveries = config.retry_tiers_ms.len() as u64 + 1;
    Duration::from_millis(
        tiers
            .saturating_mul(2)
            .saturating_add(per_delivery.saturating_mul(deliveries))
            .saturating_add(300_000),
    )
}

/// What the end of a job means for the parking of its key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParkStep {
    /// Park the source lane until its record first delivered at the offset resolves.
    Park(LaneKey, i64),
    /// The record of the source lane first delivered at the offset resolved.
    Resolve(LaneKey, i64),
}

/// What `outcome` of the job of `envelope` means for its key's parking (strict ordering):
/// a first delivery routed to a tier parks its lane, a tier record routed on keeps it
/// parked, a tier record finished resolves. `is_live` tells whether a partition is assigned
/// and not being revoked, `is_assigned` whether it is assigned at all.
pub(crate) fn step_after(
    topology: &Topology,
    envelope: &Envelope,
    outcome: &Outcome,
    is_live: impl Fn(&TopicPartition) -> bool,
    is_assigned: impl Fn(&TopicPartition) -> bool,
) -> Option<ParkStep> {
    let tier = topology.tier_of(&envelope.topic);
    let routed_to = match outcome {
        Outcome::Routed {
            target: RouteTarget::RetryTier(n),
            ..
        } => Some(*n),
        _ => None,
    };
    if tier == 0 && routed_to.is_none() {
        return None;
    }
    let key = envelope.key.clone()?;
    let (origin, origin_offset) = if tier == 0 {
        (
            LaneKey::Keyed(envelope.topic.clone(), envelope.partition, key),
            envelope.offset,
        )
    } else {
        (
            first_delivery_lane(envelope, key),
            headers::original_offset(envelope),
        )
    };
    let (origin_topic, origin_partition) = origin.partition();
    let origin_assigned = is_live(&(origin_topic.clone(), origin_partition));
    match routed_to {
        Some(n) => {
            let watched = topology
                .tier_topic(n)
                .is_some_and(|t| is_assigned(&(t.clone(), origin_partition)));
            if origin_assigned && watched {
                return Some(ParkStep::Park(origin, origin_offset));
            }
            if origin_assigned {
                tracing::warn!(
                    topic = %origin_topic,
                    partition = origin_partition,
                    tier = n,
                    "a record went to a retry-tier partition this worker does not consume: its key is not held back (use the range assignor so that partition p of the source and of its tiers go to one member)"
                );
            }
            Some(ParkStep::Resolve(origin, origin_offset))
        }
        None if outcome.is_finished() => Some(ParkStep::Resolve(origin, origin_offset)),
        None => None,
    }
}

/// A key parked while records of its first delivery's lane sit in retry tiers.
#[derive(Debug)]
struct Park {
    /// When it was parked.
    since: Instant,
    /// First-delivery offsets of its records that sit in a tier.
    pending: BTreeSet<i64>,
    /// Whether the park limit was reported.
    reported: bool,
}

/// The parked keys, and how many records wait behind them.
#[derive(Debug, Default)]
pub(crate) struct ParkedKeys {
    /// The parked source lanes.
    keys: HashMap<LaneKey, Park>,
    /// Source records queued behind a parked key (kept by the dispatcher, which queues them).
    pub(crate) messages: usize,
}

impl ParkedKeys {
    /// Whether lane `key` is parked.
    pub(crate) fn contains(&self, key: &LaneKey) -> bool {
        self.keys.contains_key(key)
    }

    /// How many keys are parked.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The parked keys.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &LaneKey> {
        self.keys.keys()
    }

    /// Parks `origin` until its record first delivered at `origin_offset` resolves; `queued`
    /// records of its lane wait now (counted when the key was not parked yet). A lane without
    /// a key is never parked.
    pub(crate) fn park(&mut self, origin: LaneKey, origin_offset: i64, queued: usize) {
        if let LaneKey::Unkeyed(..) = origin {
            return;
        }
        let park = self.keys.entry(origin).or_insert_with(|| {
            self.messages += queued;
            Park {
                since: Instant::now(),
                pending: BTreeSet::new(),
                reported: false,
            }
        });
        park.pending.insert(origin_offset);
    }

    /// The record of `origin` first delivered at `origin_offset` resolved; returns whether
    /// that unparked the key (none of its records sits in a tier any more).
    pub(crate) fn resolve(&mut self, origin: &LaneKey, origin_offset: i64) -> bool {
        let Some(park) = self.keys.get_mut(origin) else {
            return false;
        };
        park.pending.remove(&origin_offset);
        if !park.pending.is_empty() {
            return false;
        }
        self.keys.remove(origin);
        true
    }

    /// Forgets the parked keys of the revoked partition `tp` (the records queued behind them
    /// are counted out by the caller).
    pub(crate) fn forget_partition(&mut self, tp: &TopicPartition) {
        self.keys.retain(|key, _| key.partition() != (&tp.0, tp.1));
    }

    /// Keys parked longer than `limit` and not reported yet: reported once each (a warning),
    /// and they stay parked. Returns how many keys are parked past the limit in all.
    pub(crate) fn report_long_parked(&mut self, now: Instant, limit: Duration) -> usize {
        let mut past = 0;
        for (key, park) in &mut self.keys {
            if now.saturating_duration_since(park.since) < limit {
                continue;
            }
            past += 1;
            if !park.reported {
                park.reported = true;
                let (topic, partition) = key.partition();
                tracing::warn!(
                    %topic,
                    partition,
                    key = %key.text(),
                    parked_for = ?now.saturating_duration_since(park.since),
                    waiting_for = ?park.pending,
                    "a key has waited for its retry-tier record longer than the park limit; it keeps waiting (strict order)"
                );
            }
        }
        past
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn lane(key: &'static str) -> LaneKey {
        LaneKey::Keyed(Arc::from("t"), 0, Bytes::from_static(key.as_bytes()))
    }

    #[test]
    fn a_key_is_unparked_when_its_last_tier_record_resolves() {
        let mut parked = ParkedKeys::default();
        parked.park(lane("K"), 3, 2);
        parked.park(lane("K"), 5, 7);
        assert_eq!((parked.len(), parked.messages), (1, 2), "counted once");
        assert!(
            !parked.resolve(&lane("K"), 3),
            "offset 5 still sits in a tier"
        );
        assert!(parked.resolve(&lane("K"), 5));
        assert!(!parked.contains(&lane("K")));
    }

    #[test]
    fn a_lane_without_a_key_is_never_parked() {
        let mut parked = ParkedKeys::default();
        parked.park(LaneKey::Unkeyed(Arc::from("t"), 0, 4), 4, 1);
        assert_eq!((parked.len(), parked.messages), (0, 0));
    }
}
