//! Assignments and revokes: a partition assigned starts paused until what was read back from
//! the retry tiers and the dead-letter topic is handed over; a partition revoked drops its
//! queued records at once and is forgotten once its running jobs ended or were abandoned.

use std::collections::HashMap;

use super::dispatcher::Dispatcher;
use super::job::TopicPartition;
use super::lanes::LaneKey;
use super::partitions::PartitionState;
use crate::message::Envelope;
use crate::runtime::offsets::{self, FinishedAbove, OffsetTracker};

/// What a worker taking over partitions read back from the retry tiers and the dead-letter
/// topic (see `recovery`).
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Per assigned partition, offsets whose copy is already in a tier or the dead-letter
    /// topic: finished, never routed again.
    pub(crate) routed: HashMap<TopicPartition, Vec<i64>>,
    /// Retry-tier records not finished yet: their tier partition and offset, and the key and
    /// offset of their first delivery.
    pub(crate) pending: Vec<PendingTierRecord>,
}

/// A retry-tier record that has not resolved yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingTierRecord {
    /// Where it sits.
    pub(crate) tier: TopicPartition,
    /// Its offset there.
    pub(crate) offset: i64,
    /// The lane of its first delivery (source topic, partition, key).
    pub(crate) origin: LaneKey,
    /// The offset of its first delivery.
    pub(crate) origin_offset: i64,
}

impl Dispatcher {
    /// Starts tracking an assigned partition; `restored` holds the offsets above its committed
    /// offset that the last commit recorded as finished. The partition is resumed (a pause
    /// left over from an earlier assignment does not survive).
    #[cfg(test)]
    pub(crate) fn assign(&mut self, tp: TopicPartition, restored: FinishedAbove) -> u64 {
        self.assign_with(tp, restored, false)
    }

    /// Like [`Self::assign`], but the partition stays paused (and records delivered meanwhile
    /// wait) until [`Self::recovered`] hands over what was read back from the retry tiers
    /// and the dead-letter topic.
    pub(crate) fn assign_recovering(&mut self, tp: TopicPartition, restored: FinishedAbove) -> u64 {
        self.assign_with(tp, restored, true)
    }

    fn assign_with(
        &mut self,
        tp: TopicPartition,
        restored: FinishedAbove,
        recovering: bool,
    ) -> u64 {
        let epoch = self.partitions.next_epoch();
        let tier = self.topology.tier_of(&tp.0);
        self.partitions.map.insert(
            tp.clone(),
            PartitionState {
                tracker: OffsetTracker::new(restored),
                epoch,
                tier,
                paused: true,
                recovering,
                ..PartitionState::default()
            },
        );
        self.update_pause(&tp);
        epoch
    }

    /// Applies what was read back for the partitions `epochs` (assigned with
    /// [`Self::assign_recovering`] at those epochs): skips records already copied, parks the
    /// keys whose records wait in a tier, then lets the partitions run. Returns the records
    /// delivered meanwhile, to be accepted again in order.
    pub(crate) fn recovered(
        &mut self,
        epochs: &[(TopicPartition, u64)],
        recovered: Recovered,
    ) -> Vec<Envelope> {
        self.skip_routed(epochs, &recovered.routed);
        if self.limits.strict {
            self.park_pending(recovered.pending);
        }
        let deferred = self.end_recovering(epochs);
        for envelope in &deferred {
            // Counted in flight when they were deferred; `accept` counts them again.
            self.uncount(&envelope.topic);
        }
        self.update_bound_pauses();
        deferred
    }

    /// Whether `tp` still waits for the read-back of its assignment at `epoch`.
    fn recovering_at(&self, tp: &TopicPartition, epoch: u64) -> bool {
        self.partitions
            .map
            .get(tp)
            .is_some_and(|p| p.epoch == epoch && p.recovering)
    }

    /// Marks the offsets whose copies were read back as finished.
    fn skip_routed(
        &mut self,
        epochs: &[(TopicPartition, u64)],
        routed: &HashMap<TopicPartition, Vec<i64>>,
    ) {
        for (tp, offsets) in routed {
            let Some(epoch) = epochs.iter().find(|(t, _)| t == tp).map(|(_, e)| *e) else {
                continue;
            };
            if !self.recovering_at(tp, epoch) {
                continue;
            }
            if let Some(p) = self.partitions.map.get_mut(tp) {
                for offset in offsets {
                    p.tracker.skip(*offset);
                }
            }
        }
    }

    /// Lets the partitions `epochs` run; returns the records delivered while they recovered.
    fn end_recovering(&mut self, epochs: &[(TopicPartition, u64)]) -> Vec<Envelope> {
        let mut deferred = Vec::new();
        for (tp, epoch) in epochs {
            if !self.recovering_at(tp, *epoch) {
                continue;
            }
            if let Some(p) = self.partitions.map.get_mut(tp) {
                p.recovering = false;
                deferred.append(&mut p.deferred);
            }
            self.update_pause(tp);
        }
        deferred
    }

    /// Stops delivering a revoked partition: queued messages are dropped (the next owner reads
    /// them again); running ones may still finish. Returns how many are running.
    pub(crate) fn begin_revoke(&mut self, tp: &TopicPartition) -> usize {
        let Some(p) = self.partitions.map.get_mut(tp) else {
            return 0;
        };
        p.revoking = true;
        self.pause.seeks.remove(tp);
        let is_tier = p.tier > 0;
        let mut dropped = usize::from(p.held.take().is_some()) + p.deferred.len();
        p.deferred.clear();
        let epoch = p.epoch;
        let mut dropped_parked = 0;
        let parked = &self.parked;
        self.lanes.by_key.retain(|key, lane| {
            if lane.epoch != epoch {
                return true;
            }
            dropped += lane.queue.len();
            if parked.contains(key) {
                dropped_parked += lane.queue.len();
            }
            lane.queue.clear();
            lane.spilled.clear();
            lane.running
        });
        self.lanes.forget_dropped_waits();
        self.parked.forget_partition(tp);
        self.load.in_flight -= dropped;
        self.parked.messages -= dropped_parked;
        if is_tier {
            self.load.tier_in_flight -= dropped;
        }
        self.load.abandoned += dropped as u64;
        self.update_bound_pauses();
        self.running_in(tp)
    }

    /// Delivered records dropped unfinished at revokes since the last call (they are
    /// delivered again to the next owner).
    pub(crate) fn take_abandoned(&mut self) -> u64 {
        std::mem::take(&mut self.load.abandoned)
    }

    /// Forgets a revoked partition; returns its final commit (watermark and metadata stamped
    /// with `now_ms`), unless its retry state was never read back (nothing of it ran). Jobs of
    /// it still running are abandoned: their `Job::abandoned` token is cancelled.
    pub(crate) fn finish_revoke(
        &mut self,
        tp: &TopicPartition,
        now_ms: i64,
    ) -> Option<(i64, String)> {
        let p = self.partitions.map.remove(tp)?;
        self.pause.control.remove(tp);
        self.pause.seeks.remove(tp);
        if p.running > 0 {
            *self.partitions.orphans.entry(tp.clone()).or_default() += p.running;
            // Their copies must not land any more: the next owner reads back without them.
            p.abandon.cancel();
        }
        let epoch = p.epoch;
        let busy = &mut self.lanes.busy;
        self.lanes.by_key.retain(|key, lane| {
            if lane.epoch != epoch {
                return true;
            }
            if lane.running && p.tier == 0 && matches!(key, LaneKey::Keyed(..)) {
                // Its job runs on without a lane: counted apart until it ends, so the key's
                // records wait for it when the partition comes back.
                *busy.entry(key.clone()).or_default() += 1;
            }
            false
        });
        self.lanes.forget_dropped_waits();
        if p.recovering {
            return None;
        }
        p.tracker
            .commit_point()
            .map(|(offset, metadata)| (offset, offsets::stamp(&metadata, now_ms)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::super::job::Accepted;
    use super::super::testing::{
        ack, copy, limits, msg, ordered, routed, run_all, source, tier, tiered, tp, TIER,
    };
    use super::*;
    use crate::runtime::tiers::Topology;

    #[test]
    fn reassignment_resumes_a_partition_paused_before_the_revoke() {
        let mut d = Dispatcher::new(limits(4, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        d.accept(msg("k", 0), Some(9_000), 0);
        d.take_control();
        d.begin_revoke(&tp());
        d.finish_revoke(&tp(), 0);
        d.assign(tp(), FinishedAbove::default());
        assert_eq!(
            d.take_control(),
            vec![(tp(), false)],
            "resumed after reassignment"
        );
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn revoke_drops_queued_messages_and_ignores_late_completions() {
        let mut d = Dispatcher::new(limits(1, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let (_, jobs) = d.accept(msg("k", 0), None, 0);
        d.accept(msg("k", 1), None, 0);
        assert_eq!(d.begin_revoke(&tp()), 1);
        assert_eq!(d.finish_revoke(&tp(), 7), Some((0, "t7|".to_owned())));
        d.assign(tp(), FinishedAbove::default());
        let job = &jobs[0];
        assert!(d.complete(job, &ack()).is_empty());
        assert_eq!((d.running(), d.in_flight()), (0, 0));
        assert_eq!(
            d.take_commits(0),
            Vec::new(),
            "the old epoch's completion is not counted"
        );
    }

    #[test]
    fn a_reassigned_partition_runs_no_record_of_a_key_whose_abandoned_job_still_runs() {
        let mut d = Dispatcher::new(limits(4, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let (_, old) = d.accept(msg("k", 0), None, 0);
        d.begin_revoke(&tp());
        d.finish_revoke(&tp(), 0);
        d.assign(tp(), FinishedAbove::default());
        assert!(
            d.accept(msg("k", 0), None, 0).1.is_empty(),
            "waits for the abandoned run of its key"
        );
        assert_eq!(
            d.accept(msg("x", 1), None, 0).1.len(),
            1,
            "other keys run at once"
        );
        let o = &old[0];
        let next = d.complete(o, &ack());
        assert_eq!(
            next.iter().map(|j| j.envelope.offset).collect::<Vec<_>>(),
            vec![0]
        );
        assert!(
            d.lanes.busy.is_empty(),
            "the abandoned job is no longer counted"
        );
    }

    #[test]
    fn jobs_still_running_at_the_end_of_a_revoke_are_told_they_were_abandoned() {
        let mut d = Dispatcher::new(limits(4, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let (_, done) = d.accept(msg("a", 0), None, 0);
        let (_, running) = d.accept(msg("b", 1), None, 0);
        let done = &done[0];
        d.complete(done, &ack());
        d.begin_revoke(&tp());
        assert!(
            !running[0].abandoned.is_cancelled(),
            "not abandoned while the revoke drains"
        );
        d.finish_revoke(&tp(), 0);
        assert!(running[0].abandoned.is_cancelled());
        // The next assignment's jobs get a token of their own.
        d.assign(tp(), FinishedAbove::default());
        let (_, again) = d.accept(msg("c", 2), None, 0);
        assert!(!again[0].abandoned.is_cancelled());
    }

    #[test]
    fn a_revoke_forgets_the_waits_of_the_lanes_it_drops() {
        let mut d = tiered(ordered(4, 100, 10, false));
        let (_, jobs) = d.accept(msg("K", 0), None, 0);
        run_all(&mut d, jobs, |_| routed());
        let (_, running) = d.accept(msg("K", 1), None, 0);
        assert!(d.accept(copy("K", 0, 0), None, 0).1.is_empty());
        assert_eq!(d.lanes.blocked.len(), 1);
        d.begin_revoke(&tier());
        assert!(d.lanes.blocked.is_empty(), "{:?}", d.lanes.blocked);
        d.finish_revoke(&tier(), 0);
        assert!(d.complete(&running[0], &ack()).is_empty());
        assert!(d.lanes.busy.is_empty());
    }

    #[test]
    fn a_new_owner_parks_keys_read_back_from_the_tier_before_running_later_records() {
        let mut d = Dispatcher::with_topology(
            limits(4, 100, 10),
            Topology {
                group: Arc::from("g"),
                tiers: vec![Arc::from(TIER)],
            },
        );
        let e1 = d.assign_recovering(source(), FinishedAbove::default());
        let e2 = d.assign_recovering(tier(), FinishedAbove::default());
        let control = d.take_control();
        assert!(control.is_empty() || control.iter().all(|(_, paused)| *paused));
        assert!(
            d.paused_of(&[source(), tier()]).len() == 2,
            "paused while reading back"
        );
        // Delivered before the read-back ended: kept, not run.
        assert_eq!(d.accept(msg("K", 5), None, 0).0, Accepted::Deferred);
        assert_eq!(d.accept(msg("K", 3), None, 0).0, Accepted::Deferred);
        let recovered = Recovered {
            // Offset 3's copy is already in the tier: it is skipped, never routed again.
            routed: [(source(), vec![3])].into(),
            pending: vec![PendingTierRecord {
                tier: tier(),
                offset: 0,
                origin: LaneKey::Keyed(Arc::from("t"), 0, Bytes::from_static(b"K")),
                origin_offset: 3,
            }],
        };
        let deferred = d.recovered(&[(source(), e1), (tier(), e2)], recovered);
        let mut jobs = Vec::new();
        let mut skipped = Vec::new();
        for envelope in deferred {
            let offset = envelope.offset;
            let (accepted, started) = d.accept(envelope, None, 0);
            if accepted == Accepted::AlreadyFinished {
                skipped.push(offset);
            }
            jobs.extend(started);
        }
        assert_eq!(skipped, vec![3], "the copied record is not handled again");
        assert!(jobs.is_empty(), "offset 5 waits for K's tier record");
        assert!(
            d.take_control().contains(&(source(), false)),
            "resumed after the read-back"
        );
        let (_, tier_jobs) = d.accept(copy("K", 3, 0), None, 0);
        let ran = run_all(&mut d, tier_jobs, |_| ack());
        assert_eq!(ran, vec![(TIER.to_owned(), 0), ("t".to_owned(), 5)]);
    }
}
