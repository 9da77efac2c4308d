//! Retry tiers, the worker's side of them in one place. A record whose in-place retries are
//! spent leaves for tier 1 of the worker's group (`<topic>.<group>.retry.1`), later tier 2 and
//! so on, and at last the dead-letter topic; the route layer of the policy stack makes the
//! copies and writes their headers ([`crate::message::headers`]). Here:
//!
//! - [`topics`]: the names of a worker's tier, dead-letter and stale topics, what it
//!   subscribes to, and their creation;
//! - [`held`]: a delivered tier record's due time, and the timer that hands a held record to
//!   its lane once it is due;
//! - [`parking`]: strict ordering's rule that the later records of a key wait while a record
//!   of it sits in a tier, and the park limit past which that is reported;
//! - [`Topology`]: which topic is which tier, and whose records a tier holds.
//!
//! How the dispatcher queues held and parked records and counts them against its bounds is in
//! `dispatch`; the read-back of a partition's retry state when a worker takes it over is in
//! `recovery`.

mod held;
mod parking;
mod topics;

use std::sync::Arc;

use bytes::Bytes;

use super::dispatch::LaneKey;
use crate::message::{headers, Envelope};

pub(crate) use self::held::{read_delivery_state, release_when_due};
pub(crate) use self::parking::{park_limit, step_after, ParkStep, ParkedKeys};
pub(crate) use self::topics::RoutingTopics;

/// The topics a worker consumes: its source topic and the retry tiers of its group.
#[derive(Debug, Clone, Default)]
pub(crate) struct Topology {
    /// The consumer group (tier records of another group are skipped).
    pub(crate) group: Arc<str>,
    /// Tier `n`'s topic at index `n - 1`.
    pub(crate) tiers: Vec<Arc<str>>,
}

impl Topology {
    /// The tier `topic` is (1-based), 0 for any other topic.
    pub(crate) fn tier_of(&self, topic: &str) -> u32 {
        self.tiers
            .iter()
            .position(|t| &t[..] == topic)
            .map_or(0, |i| u32::try_from(i + 1).unwrap_or(u32::MAX))
    }

    /// Tier `n`'s topic (1-based).
    pub(crate) fn tier_topic(&self, n: u32) -> Option<&Arc<str>> {
        self.tiers.get((n as usize).checked_sub(1)?)
    }

    /// Whether a retry-tier record was routed by another consumer group (tiers of shared
    /// names hold the records of every group of the topic).
    pub(crate) fn is_other_groups(&self, envelope: &Envelope) -> bool {
        !self.group.is_empty()
            && envelope
                .headers
                .get_str(headers::GROUP)
                .is_some_and(|g| g != &self.group[..])
    }
}

/// The source lane of a retry-tier record's first delivery: the topic and partition its
/// headers name, and its `key`.
pub(crate) fn first_delivery_lane(envelope: &Envelope, key: Bytes) -> LaneKey {
    LaneKey::Keyed(
        Arc::from(headers::original_topic(envelope)),
        headers::original_partition(envelope),
        key,
    )
}
