//! Key lanes: one FIFO queue per key of a partition (a key's records one at a time, in offset
//! order; other keys concurrently, up to the concurrency bound), the ready queue of lanes whose
//! next record may start, and the waits that keep a key's first-delivery lane and its
//! retry-tier lanes from running at once (see the module docs of [`super`]). What starts when:
//! `schedule`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::message::Envelope;

/// The identity of a lane: messages with the same lane key run one at a time, in offset order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum LaneKey {
    /// A keyed record: ordered with the other records of its key in its partition.
    Keyed(Arc<str>, i32, Bytes),
    /// A record without a key: a lane of its own.
    Unkeyed(Arc<str>, i32, i64),
}

impl LaneKey {
    /// The lane of `envelope`, delivered from `topic`.
    pub(super) fn of(envelope: &Envelope, topic: &Arc<str>) -> Self {
        match &envelope.key {
            Some(key) => LaneKey::Keyed(topic.clone(), envelope.partition, key.clone()),
            None => LaneKey::Unkeyed(topic.clone(), envelope.partition, envelope.offset),
        }
    }

    /// The topic and partition of the lane.
    pub(crate) fn partition(&self) -> (&Arc<str>, i32) {
        match self {
            LaneKey::Keyed(t, p, _) | LaneKey::Unkeyed(t, p, _) => (t, *p),
        }
    }

    /// The key as text, for logs.
    pub(crate) fn text(&self) -> String {
        match self {
            LaneKey::Keyed(_, _, k) => String::from_utf8_lossy(k).into_owned(),
            LaneKey::Unkeyed(_, _, offset) => format!("(no key, offset {offset})"),
        }
    }
}

/// One key's queue of delivered records.
#[derive(Debug)]
pub(super) struct Lane {
    /// Records not started yet, in offset order.
    pub(super) queue: VecDeque<Envelope>,
    /// A record of the lane runs.
    pub(super) running: bool,
    /// Listed in [`Lanes::ready`].
    pub(super) in_ready: bool,
    /// At the per-key bound: its partition is paused.
    pub(super) full: bool,
    /// Listed in [`Lanes::blocked`]: its next record waits for another lane's job.
    pub(super) blocked: bool,
    /// The assignment of its partition the lane belongs to.
    pub(super) epoch: u64,
    /// Offsets of its records let go while it was parked and full, to be read again
    /// (`spill`): its later records follow them, so they are let go too until these are back.
    pub(super) spilled: BTreeSet<i64>,
}

/// Every lane with records, and which of them may start.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    /// The lanes; a lane is freed when it is empty and idle.
    pub(super) by_key: HashMap<LaneKey, Lane>,
    /// Lanes whose next record may start, in the order they became ready.
    pub(super) ready: VecDeque<LaneKey>,
    /// Running jobs per source lane of their first delivery that the lane's own `running`
    /// flag does not show: retry-tier jobs, and first deliveries abandoned at a revoke (their
    /// lane was dropped while they still ran). A key's source record and its retry-tier
    /// records sit in different lanes (and a revoked partition's job may still run when the
    /// partition comes back), yet never run at once. Empty without retry tiers and revokes.
    pub(super) busy: HashMap<LaneKey, usize>,
    /// Lanes whose next record waits for a running job of the same first-delivery lane, each
    /// listed once (`Lane::blocked`).
    pub(super) blocked: HashMap<LaneKey, Vec<LaneKey>>,
}

impl Lanes {
    /// Lists lane `key` as ready when it can start a record.
    pub(super) fn mark_ready(&mut self, key: &LaneKey) {
        if let Some(lane) = self.by_key.get_mut(key) {
            if !lane.running && !lane.in_ready && !lane.blocked && !lane.queue.is_empty() {
                lane.in_ready = true;
                self.ready.push_back(key.clone());
            }
        }
    }

    /// Lane `key` waits until no job of the first-delivery lane `origin` runs.
    pub(super) fn block(&mut self, key: LaneKey, origin: LaneKey) {
        if let Some(lane) = self.by_key.get_mut(&key) {
            lane.blocked = true;
        }
        self.blocked.entry(origin).or_default().push(key);
    }

    /// Whether a job of the first-delivery lane `origin` runs: in that lane, or counted apart
    /// (`busy`).
    pub(super) fn first_delivery_runs(&self, origin: &LaneKey) -> bool {
        self.busy_apart(origin) || self.by_key.get(origin).is_some_and(|lane| lane.running)
    }

    /// Whether jobs of the first-delivery lane `origin` run that its lane does not show.
    pub(super) fn busy_apart(&self, origin: &LaneKey) -> bool {
        !self.busy.is_empty() && self.busy.contains_key(origin)
    }

    /// Forgets the waits of lanes a revoke dropped (see `blocked`).
    pub(super) fn forget_dropped_waits(&mut self) {
        if self.blocked.is_empty() {
            return;
        }
        let lanes = &self.by_key;
        self.blocked.retain(|_, waiting| {
            waiting.retain(|key| lanes.contains_key(key));
            !waiting.is_empty()
        });
    }
}
