//! Helpers of the dispatcher's unit tests: limits, records, and a dispatcher consuming a
//! source topic `t` and its tier `t.g.retry.1` for group `g`.

use std::sync::Arc;
use std::time::Duration;

use super::dispatcher::{Dispatcher, Limits};
use super::job::{Job, TopicPartition};
use crate::message::{headers, Envelope, Outcome, RouteTarget};
use crate::runtime::offsets::FinishedAbove;
use crate::runtime::tiers::Topology;

/// The retry tier of [`tiered`] dispatchers.
pub(crate) const TIER: &str = "t.g.retry.1";

/// Strict-ordering limits with a park limit of a minute.
pub(crate) fn limits(concurrency: usize, max_in_flight: usize, max_per_key: usize) -> Limits {
    ordered(concurrency, max_in_flight, max_per_key, true)
}

/// Limits in the ordering mode `strict`, with a park limit of a minute.
pub(crate) fn ordered(
    concurrency: usize,
    max_in_flight: usize,
    max_per_key: usize,
    strict: bool,
) -> Limits {
    Limits {
        concurrency,
        max_in_flight,
        max_per_key,
        strict,
        park_limit: Duration::from_secs(60),
    }
}

/// A dispatcher for group `g` consuming `t` and its tier `t.g.retry.1`, partition 0 of both
/// assigned.
pub(crate) fn tiered(limits: Limits) -> Dispatcher {
    let mut d = Dispatcher::with_topology(
        limits,
        Topology {
            group: Arc::from("g"),
            tiers: vec![Arc::from(TIER)],
        },
    );
    d.assign(source(), FinishedAbove::default());
    d.assign(tier(), FinishedAbove::default());
    d.take_control();
    d
}

/// Partition 0 of the source topic `t`.
pub(crate) fn tp() -> TopicPartition {
    (Arc::from("t"), 0)
}

/// Partition 0 of the source topic `t` (in tests of tiers).
pub(crate) fn source() -> TopicPartition {
    tp()
}

/// Partition 0 of the tier.
pub(crate) fn tier() -> TopicPartition {
    (Arc::from(TIER), 0)
}

/// A record of `key` at `offset` of the source topic.
pub(crate) fn msg(key: &str, offset: i64) -> Envelope {
    Envelope::new("t", key.as_bytes().to_vec(), Vec::new()).with_offset(offset)
}

/// The tier-1 copy, at `offset` of the tier, of `key`'s source record at `origin`.
pub(crate) fn copy(key: &str, origin: i64, offset: i64) -> Envelope {
    let mut e = Envelope::new(TIER, key.as_bytes().to_vec(), Vec::new()).with_offset(offset);
    e.headers.set(headers::RETRY_TIER, "1");
    e.headers.set(headers::GROUP, "g");
    e.headers.set(headers::ORIGINAL_TOPIC, "t");
    e.headers.set(headers::ORIGINAL_PARTITION, "0");
    e.headers.set(headers::ORIGINAL_OFFSET, origin.to_string());
    e
}

/// Routed to tier 1.
pub(crate) fn routed() -> Outcome {
    Outcome::Routed {
        target: RouteTarget::RetryTier(1),
        error_class: crate::message::ErrorClass::Transient,
    }
}

/// Handled.
pub(crate) fn ack() -> Outcome {
    Outcome::Ack { attempt: 1 }
}

/// Runs every job to `outcome_of` its envelope, and the jobs those start, in order;
/// returns the (topic, offset) of every job run.
pub(crate) fn run_all(
    d: &mut Dispatcher,
    mut jobs: Vec<Job>,
    outcome_of: impl Fn(&Envelope) -> Outcome,
) -> Vec<(String, i64)> {
    let mut ran = Vec::new();
    while !jobs.is_empty() {
        let job = jobs.remove(0);
        ran.push((job.envelope.topic.to_string(), job.envelope.offset));
        let outcome = outcome_of(&job.envelope);
        jobs.extend(d.complete(&job, &outcome));
    }
    ran
}
