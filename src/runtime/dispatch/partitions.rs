//! Per-partition state: the offset tracker (what may be committed), the assignment epoch, the
//! held retry-tier record, the records waiting for the read-back, the commits taken, and the
//! jobs of earlier assignments still running.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::job::TopicPartition;
use crate::message::Envelope;
use crate::runtime::offsets::{self, OffsetTracker};

/// One assigned partition.
#[derive(Debug, Default)]
pub(super) struct PartitionState {
    /// Which offsets are finished; the commit point.
    pub(super) tracker: OffsetTracker,
    /// The assignment this state belongs to.
    pub(super) epoch: u64,
    /// The retry tier this partition belongs to; 0 for the source.
    pub(super) tier: u32,
    /// Handler calls of it running.
    pub(super) running: usize,
    /// Lanes of it at the per-key bound.
    pub(super) full_lanes: usize,
    /// A retry-tier record not due yet: the partition is paused until it is.
    pub(super) held: Option<Envelope>,
    /// Being revoked: nothing of it is taken or started any more.
    pub(super) revoking: bool,
    /// Paused until its retry state is read back; records delivered meanwhile wait here.
    pub(super) recovering: bool,
    /// Records delivered while it was recovering.
    pub(super) deferred: Vec<Envelope>,
    /// Pause state last handed to the consumer.
    pub(super) paused: bool,
    /// The commit last taken, to skip commits that would change nothing.
    pub(super) last_commit: Option<(i64, String)>,
    /// The lowest unfinished offset and since when it has been the lowest.
    pub(super) lowest: Option<(i64, Instant)>,
    /// Handed to this assignment's jobs; cancelled when they are abandoned at the revoke.
    pub(super) abandon: Arc<CancellationToken>,
    /// One past the offset last delivered.
    pub(super) position: i64,
    /// The read again under way after a seek (records let go behind a parked key).
    pub(super) reread: Option<ReRead>,
}

/// A read again of a partition from an earlier offset (see `parking`).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReRead {
    /// Where it starts: the first record let go that it is for.
    pub(super) from: i64,
    /// One past the highest offset delivered before it.
    pub(super) until: i64,
    /// When the seek was made.
    pub(super) since: Instant,
    /// A record in `[from, until)` came: the seek took effect, so a let-go offset it passes
    /// without delivering is gone from the log.
    pub(super) confirmed: bool,
}

impl PartitionState {
    /// Notes that `offset` was delivered: the position moves on, a read again is confirmed
    /// or ends. Returns the offsets let go that a confirmed read again passed, landing inside
    /// its stretch (gone from the log), counted finished. A jump past the stretch (a fetch
    /// position reset, say to the log's end) declares nothing gone: the read again ends and
    /// the records let go are asked for again.
    pub(super) fn note_delivered(&mut self, offset: i64) -> Vec<i64> {
        let mut gone = Vec::new();
        if let Some(read) = &mut self.reread {
            if !read.confirmed && offset >= read.from && offset < read.until {
                read.confirmed = true;
                self.position = read.from;
            }
            if read.confirmed && offset > self.position && offset < read.until {
                gone = self.tracker.spilled_gone(self.position, offset);
            }
            if offset + 1 >= read.until {
                self.reread = None;
            }
        }
        self.position = offset + 1;
        gone
    }

    /// Notes a change of the lowest unfinished offset (the stall clock restarts with it).
    pub(super) fn note_lowest(&mut self) {
        let lowest = self.tracker.lowest_unfinished();
        if lowest != self.lowest.map(|(offset, _)| offset) {
            self.lowest = lowest.map(|offset| (offset, Instant::now()));
        }
    }
}

/// The assigned partitions.
#[derive(Debug)]
pub(super) struct Partitions {
    /// The state of each assigned partition.
    pub(super) map: HashMap<TopicPartition, PartitionState>,
    /// The epoch of the next assignment.
    next_epoch: u64,
    /// Jobs still running for partitions that were revoked or lost meanwhile: their copies
    /// may still land, so a new assignment of the partition reads back after they ended.
    pub(super) orphans: HashMap<TopicPartition, usize>,
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions {
            map: HashMap::new(),
            next_epoch: 1,
            orphans: HashMap::new(),
        }
    }
}

impl Partitions {
    /// A new assignment's epoch.
    pub(super) fn next_epoch(&mut self) -> u64 {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        epoch
    }

    /// Whether `tp` is assigned at `epoch`.
    pub(super) fn is_current(&self, tp: &TopicPartition, epoch: u64) -> bool {
        self.map.get(tp).is_some_and(|p| p.epoch == epoch)
    }

    /// Whether `tp` is assigned and not being revoked.
    pub(super) fn is_live(&self, tp: &TopicPartition) -> bool {
        self.map.get(tp).is_some_and(|p| !p.revoking)
    }

    /// A job of an earlier assignment of `tp` ended.
    pub(super) fn orphan_ended(&mut self, tp: &TopicPartition) {
        if let Some(left) = self.orphans.get_mut(tp) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.orphans.remove(tp);
            }
        }
    }
}

impl Partitions {
    /// The assigned retry-tier partitions with the offset their commit stands at (`None`
    /// before anything was delivered).
    pub(super) fn tier_watermarks(&self) -> Vec<(TopicPartition, Option<i64>)> {
        self.map
            .iter()
            .filter(|(_, p)| p.tier > 0 && !p.revoking)
            .map(|(tp, p)| (tp.clone(), p.tracker.watermark()))
            .collect()
    }

    /// Jobs of earlier assignments of `tps` still running (see `orphans`).
    pub(super) fn orphans_of(&self, tps: &[(TopicPartition, u64)]) -> usize {
        tps.iter().filter_map(|(tp, _)| self.orphans.get(tp)).sum()
    }

    /// Whether `tp` waits for its retry state to be read back.
    pub(super) fn is_recovering(&self, tp: &TopicPartition) -> bool {
        self.map.get(tp).is_some_and(|p| p.recovering)
    }

    /// How many handler calls of `tp` are running.
    pub(super) fn running_in(&self, tp: &TopicPartition) -> usize {
        self.map.get(tp).map_or(0, |p| p.running)
    }

    /// The partitions assigned now.
    pub(super) fn assigned(&self) -> Vec<TopicPartition> {
        self.map.keys().cloned().collect()
    }

    /// Commits that would change what the broker holds, and marks them taken. The metadata
    /// is stamped with `now_ms`.
    pub(super) fn take_commits(&mut self, now_ms: i64) -> Vec<(TopicPartition, i64, String)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.map {
            if p.revoking || p.recovering {
                continue;
            }
            if let Some(point) = p.tracker.commit_point() {
                if p.last_commit.as_ref() != Some(&point) {
                    let metadata = offsets::stamp(&point.1, now_ms);
                    out.push((tp.clone(), point.0, metadata));
                    p.last_commit = Some(point);
                }
            }
        }
        out
    }

    /// Forgets which commits were taken, so the next [`Self::take_commits`] returns them all
    /// (after a failed commit).
    pub(super) fn forget_commits(&mut self) {
        for p in self.map.values_mut() {
            p.last_commit = None;
        }
    }
}
