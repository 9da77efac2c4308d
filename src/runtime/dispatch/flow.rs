//! A record's way through the dispatcher: taken in (or skipped, held, deferred), and its
//! job's outcome recorded once it ran.

use std::time::Instant;

use super::dispatcher::Dispatcher;
use super::job::{Accepted, Job, TopicPartition};
use super::lanes::LaneKey;
use super::parking::forget_gone;
use crate::message::{Envelope, Outcome};

impl Dispatcher {
    /// Takes a delivered message. `due_ms` is set for retry-tier messages.
    pub(crate) fn accept(
        &mut self,
        envelope: Envelope,
        due_ms: Option<i64>,
        now_ms: i64,
    ) -> (Accepted, Vec<Job>) {
        let tp: TopicPartition = (envelope.topic.clone(), envelope.partition);
        let p = match self.partitions.map.get_mut(&tp) {
            Some(p) if !p.revoking => p,
            _ => return (Accepted::NotAssigned, Vec::new()),
        };
        let read_again_until = p.reread.map(|read| read.until);
        let gone = p.note_delivered(envelope.offset);
        if !gone.is_empty() {
            forget_gone(&mut self.lanes, &self.parked, p, &tp, &gone);
        }
        let is_tier = p.tier > 0;
        if p.recovering {
            p.deferred.push(envelope);
            self.load.count(is_tier);
            return (Accepted::Deferred, Vec::new());
        }
        if !p.tracker.begin(envelope.offset) {
            if read_again_until.is_some_and(|until| envelope.offset < until) {
                return (Accepted::ReadAgain, Vec::new());
            }
            return (Accepted::AlreadyFinished, Vec::new());
        }
        if is_tier && self.topology.is_other_groups(&envelope) {
            p.tracker.finish(envelope.offset);
            p.note_lowest();
            return (Accepted::OtherGroup, Vec::new());
        }
        p.note_lowest();
        self.load.count(is_tier);
        if let Some(due_ms) = due_ms.filter(|due| *due > now_ms) {
            let epoch = p.epoch;
            p.held = Some(envelope);
            self.update_pause(&tp);
            self.update_bound_pauses();
            return (Accepted::Held { due_ms, epoch }, Vec::new());
        }
        self.enqueue(&tp, envelope);
        self.update_bound_pauses();
        (Accepted::Queued, self.fill())
    }

    /// Takes a record out of the in-flight counts (it finished, or is counted anew).
    pub(super) fn uncount(&mut self, topic: &str) {
        let is_tier = self.topology.tier_of(topic) > 0;
        self.load.uncount(is_tier);
    }

    /// Hands over a held retry-tier message once it is due, and resumes its partition.
    pub(crate) fn release_held(&mut self, tp: &TopicPartition, epoch: u64) -> Vec<Job> {
        let Some(p) = self.partitions.map.get_mut(tp) else {
            return Vec::new();
        };
        if p.epoch != epoch {
            return Vec::new();
        }
        let Some(envelope) = p.held.take() else {
            return Vec::new();
        };
        self.enqueue(tp, envelope);
        self.update_pause(tp);
        self.fill()
    }

    /// Records the outcome of a job and starts what may start next.
    pub(crate) fn complete(&mut self, job: &Job, outcome: &Outcome) -> Vec<Job> {
        if let Some(origin) = &job.origin {
            self.unbusy(origin);
        }
        self.load.running -= 1;
        self.uncount(&job.envelope.topic);
        let tp: TopicPartition = (job.lane.partition().0.clone(), job.envelope.partition);
        if self.partitions.is_current(&tp, job.epoch) {
            self.complete_current(job, outcome, &tp);
        } else {
            self.complete_orphan(job, &tp);
        }
        self.update_bound_pauses();
        self.fill()
    }

    /// The outcome of a job of its partition's current assignment: its offset, its key's
    /// parking, its lane.
    fn complete_current(&mut self, job: &Job, outcome: &Outcome, tp: &TopicPartition) {
        let (job_lane, epoch, envelope) = (&job.lane, job.epoch, &job.envelope);
        if let Some(p) = self.partitions.map.get_mut(tp) {
            p.running -= 1;
            if outcome.is_finished() {
                p.tracker.finish(envelope.offset);
                p.note_lowest();
                self.last_finish = Instant::now();
            }
        }
        if self.limits.strict {
            self.update_parking(envelope, outcome);
        }
        // Whether the lane holds nothing queued now, and whether it has records let go.
        let (lane_done, spilled) = match self.lanes.by_key.get_mut(job_lane) {
            Some(lane) if lane.epoch == epoch => {
                lane.running = false;
                (lane.queue.is_empty(), !lane.spilled.is_empty())
            }
            _ => (false, false),
        };
        if job.origin.is_none() {
            // Lanes waiting for this first delivery go first, then its own next record.
            self.release(job_lane);
        }
        if lane_done && !spilled && !self.parked.contains(job_lane) {
            self.lanes.by_key.remove(job_lane);
        } else {
            if lane_done {
                self.refetch(job_lane);
            }
            self.mark_ready(job_lane);
        }
    }

    /// The end of a job of an earlier assignment of its partition (revoked or lost since).
    fn complete_orphan(&mut self, job: &Job, tp: &TopicPartition) {
        self.partitions.orphan_ended(tp);
        if job.origin.is_none() && matches!(job.lane, LaneKey::Keyed(..)) {
            // A first delivery whose lane was dropped at the revoke (`finish_revoke`).
            self.unbusy(&job.lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ack, copy, limits, msg, tiered, tp};
    use super::*;
    use crate::message::headers;
    use crate::runtime::offsets::FinishedAbove;

    #[test]
    fn a_held_retry_message_pauses_until_released() {
        let mut d = Dispatcher::new(limits(4, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        d.take_control();
        let (accepted, jobs) = d.accept(msg("k", 0), Some(2_000), 1_000);
        assert!(jobs.is_empty());
        let Accepted::Held { epoch, .. } = accepted else {
            panic!("held expected, got {accepted:?}");
        };
        assert_eq!(d.take_control(), vec![(tp(), true)]);
        let jobs = d.release_held(&tp(), epoch);
        assert_eq!(jobs.len(), 1);
        assert_eq!(d.take_control(), vec![(tp(), false)]);
    }

    #[test]
    fn a_record_fetched_again_runs_once() {
        // The chaos test's seed 16: a retry tier's records fetched again in one assignment ran
        // twice, and each run routed its own copy.
        let mut d = Dispatcher::new(limits(4, 100, 10));
        d.assign(tp(), FinishedAbove::default());
        let (_, first) = d.accept(msg("k", 0), None, 0);
        assert_eq!(first.len(), 1);
        let (accepted, started) = d.accept(msg("k", 0), None, 0);
        assert_eq!(
            accepted,
            Accepted::AlreadyFinished,
            "running: not queued again"
        );
        assert!(started.is_empty());
        let job = &first[0];
        d.complete(job, &ack());
        assert_eq!(
            d.accept(msg("k", 0), None, 0).0,
            Accepted::AlreadyFinished,
            "finished: skipped"
        );
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn a_tier_record_of_another_group_is_skipped() {
        let mut d = tiered(limits(4, 100, 10));
        let mut e = copy("K", 0, 0);
        e.headers.set(headers::GROUP, "other");
        assert_eq!(d.accept(e, None, 0).0, Accepted::OtherGroup);
        assert_eq!(d.gauges().0, 0);
    }
}
