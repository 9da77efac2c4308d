//! What the stall detector sees of the dispatcher: per partition its lowest unfinished offset
//! and since when, what waits on purpose (a held retry record, records parked behind a key),
//! and whether the worker is idle, stopping or held by an open breaker.

use std::collections::HashMap;
use std::time::Instant;

use super::dispatcher::Dispatcher;
use super::job::TopicPartition;
use crate::observe::{LowestUnfinished, PartitionView, WorkerView};

impl Dispatcher {
    /// What the stall detector needs to know at `now`.
    pub(crate) fn view(&self, now: Instant) -> WorkerView {
        let parked = self.parked_per_partition();
        let partitions = self
            .partitions
            .map
            .iter()
            .filter(|(_, p)| !p.revoking)
            .map(|(tp, p)| {
                let (parked_offsets, parked_keys) = parked
                    .get(tp)
                    .map_or((&[][..], 0), |(o, k)| (o.as_slice(), *k));
                let held = p.held.as_ref().map(|e| e.offset);
                let lowest = p.lowest.map(|(offset, since)| LowestUnfinished {
                    offset,
                    for_: now.saturating_duration_since(since),
                    on_purpose: held == Some(offset),
                    parked: parked_offsets.contains(&offset),
                });
                PartitionView {
                    tp: tp.clone(),
                    waiting: p
                        .tracker
                        .unfinished()
                        .saturating_sub(usize::from(held.is_some()) + parked_offsets.len()),
                    held: held.is_some(),
                    lowest,
                    parked_keys,
                    parked_messages: parked_offsets.len(),
                    recovering: p.recovering,
                }
            })
            .collect();
        WorkerView {
            partitions,
            idle_for: now.saturating_duration_since(self.last_finish),
            breaker_open: self.pause.breaker_open,
            stopping: self.stopping,
            starting: false,
        }
    }

    /// Records that wait behind a key parked for a retry-tier record, and parked keys, per
    /// partition.
    fn parked_per_partition(&self) -> HashMap<TopicPartition, (Vec<i64>, usize)> {
        let mut parked: HashMap<TopicPartition, (Vec<i64>, usize)> = HashMap::new();
        for key in self.parked.keys() {
            let (topic, partition) = key.partition();
            let entry = parked.entry((topic.clone(), partition)).or_default();
            entry.1 += 1;
            if let Some(lane) = self.lanes.by_key.get(key) {
                entry.0.extend(lane.queue.iter().map(|e| e.offset));
                entry.0.extend(lane.spilled.iter().copied());
            }
        }
        parked
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{ack, limits, msg, tiered, tp};
    use super::*;
    use crate::message::{Outcome, RouteTarget};

    #[test]
    fn the_stall_view_follows_the_lowest_unfinished_offset_and_knows_what_waits_on_purpose() {
        let mut d = tiered(limits(4, 100, 10));
        let source = |view: &WorkerView| {
            view.partitions
                .iter()
                .find(|p| p.tp == tp())
                .cloned()
                .expect("the source partition")
        };
        let lowest = |d: &Dispatcher| {
            let view = d.view(Instant::now());
            let p = &source(&view);
            (p.lowest.map(|l| (l.offset, l.on_purpose)), p.waiting)
        };
        assert_eq!(lowest(&d), (None, 0), "nothing delivered, nothing waits");
        let (_, a_jobs) = d.accept(msg("A", 0), None, 0);
        let (_, b_jobs) = d.accept(msg("B", 1), None, 0);
        d.accept(msg("A", 2), None, 0);
        assert_eq!(lowest(&d), (Some((0, false)), 3));
        let since_zero = source(&d.view(Instant::now())).lowest.map(|l| l.for_);

        // B finishes: the lowest offset does not move, nor does its clock.
        let b = &b_jobs[0];
        d.complete(b, &ack());
        std::thread::sleep(Duration::from_millis(20));
        let view = d.view(Instant::now());
        let l = source(&view).lowest.expect("offset 0 unfinished");
        assert_eq!(l.offset, 0);
        assert!(
            Some(l.for_) > since_zero,
            "the clock of offset 0 keeps running"
        );

        // A(0) goes to a retry tier: its key parks, A(2) waits on purpose.
        let a = &a_jobs[0];
        let routed = Outcome::Routed {
            target: RouteTarget::RetryTier(1),
            error_class: crate::message::ErrorClass::Transient,
        };
        d.complete(a, &routed);
        let parked_view = |d: &Dispatcher| {
            let view = d.view(Instant::now());
            let p = &source(&view);
            (
                p.lowest.map(|l| (l.offset, l.parked)),
                p.waiting,
                p.parked_keys,
                p.parked_messages,
            )
        };
        assert_eq!(
            parked_view(&d),
            (Some((2, true)), 0, 1, 1),
            "queued behind a parked key"
        );
        let l = source(&d.view(Instant::now())).lowest.expect("offset 2");
        assert!(
            l.for_ < Duration::from_millis(20),
            "a new lowest offset restarts the clock"
        );
    }
}
