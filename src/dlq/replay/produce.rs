//! Producing a replay's copies: rate-limited, in dead-letter order, with an idempotent
//! producer; acknowledgements awaited in windows, and the position committed with the
//! progress note after each.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use futures::future::join_all;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::copy::{default_replayed_by, replay_headers, CopyHeaders, Stamp};
use super::resume::{self, AlreadyReplayed, ProgressNote, TargetReach};
use super::{ReplayOptions, ReplayProgress, ReplayReport, ReplayedRecord};
use crate::dlq::error::DlqError;
use crate::dlq::record::DlqRecord;
use crate::dlq::scan::{Reader, Tp};
use crate::observe::trace::{send_span, Parent, TraceContext};
use crate::policy::now_ms;

/// Most records produced and not yet acknowledged.
const WINDOW: usize = 1_000;

/// Producing the planned copies: rate-limited, in dead-letter order, the position committed
/// after every acknowledged stretch.
pub(super) struct Producing<'a> {
    options: &'a ReplayOptions,
    replay_id: &'a str,
    /// Every selected record, in dead-letter order.
    records: &'a [DlqRecord],
    producer: FutureProducer,
    limiter: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
    /// Who the copies say replayed them.
    by: String,
    /// Copies produced and not acknowledged yet.
    pending: Vec<(DeliveryFuture, ReplayedRecord)>,
    /// Per dead-letter partition, the offset below which every record is dealt with.
    positions: BTreeMap<i32, i64>,
    since_commit: usize,
    last_commit: Instant,
}

impl<'a> Producing<'a> {
    /// Ready to produce from `positions` on.
    pub(super) fn new(
        config: &ClientConfig,
        options: &'a ReplayOptions,
        replay_id: &'a str,
        records: &'a [DlqRecord],
        positions: BTreeMap<i32, i64>,
    ) -> Result<Self, DlqError> {
        Ok(Producing {
            options,
            replay_id,
            records,
            producer: producer(config)?,
            limiter: options
                .rate
                .map(|r| RateLimiter::direct(Quota::per_second(r).allow_burst(NonZeroU32::MIN))),
            clock: DefaultClock::default(),
            by: options.by.clone().unwrap_or_else(default_replayed_by),
            pending: Vec::new(),
            positions,
            since_commit: 0,
            last_commit: Instant::now(),
        })
    }

    /// Goes through the selected records, producing the `planned` ones, reporting progress
    /// and committing as copies are acknowledged.
    pub(super) fn all(
        &mut self,
        planned: Vec<(&DlqRecord, ReplayedRecord)>,
        progress: &mut Progressor<'_>,
        report: &mut ReplayReport,
    ) -> Result<(), DlqError> {
        let total = self.records.len() as u64;
        let mut planned = planned.into_iter().peekable();
        for (handled, record) in (1u64..).zip(self.records) {
            let is_next = planned
                .peek()
                .is_some_and(|(r, _)| r.partition == record.partition && r.offset == record.offset);
            if is_next {
                let Some((_, copy)) = planned.next() else {
                    break;
                };
                self.produce(record, copy, progress, report)?;
            }
            self.positions.insert(record.partition, record.offset + 1);
            if let Some(f) = &self.options.progress {
                f(ReplayProgress {
                    done: handled,
                    total,
                });
            }
            if self.commit_due() {
                drain(&mut self.pending, progress, report)?;
                progress.commit(&self.positions)?;
                self.since_commit = 0;
                self.last_commit = Instant::now();
            }
        }
        Ok(())
    }

    /// Hands the copy of `record` to the producer once the rate allows.
    fn produce(
        &mut self,
        record: &DlqRecord,
        copy: ReplayedRecord,
        progress: &mut Progressor<'_>,
        report: &mut ReplayReport,
    ) -> Result<(), DlqError> {
        if let Some(limiter) = &self.limiter {
            while let Err(not_until) = limiter.check() {
                std::thread::sleep(not_until.wait_time_from(self.clock.now()));
            }
        }
        let stamp = Stamp {
            by: &self.by,
            at_ms: now_ms(),
            replay_id: self.replay_id,
        };
        // The copy's trace: a `replay` span, child of the dead-letter record's.
        let parent = TraceContext::from_headers(&record.headers);
        let (span, trace) = send_span("replay", &copy.topic, Parent::Remote(parent.as_ref()));
        let _in_span = span.enter();
        let headers = replay_headers(record, &stamp, trace.as_ref());
        let future = send(
            &self.producer,
            record,
            &copy,
            &headers,
            &mut self.pending,
            progress,
            report,
        )?;
        self.pending.push((future, copy));
        self.since_commit += 1;
        Ok(())
    }

    /// Whether the pending copies are to be acknowledged and the position committed now.
    fn commit_due(&self) -> bool {
        self.pending.len() >= WINDOW
            || self.since_commit >= self.options.commit_every.max(1)
            || (self.since_commit > 0 && self.last_commit.elapsed() >= self.options.commit_interval)
    }

    /// Waits for the last acknowledgements and commits the position past everything read
    /// (up to `highs`, the watermarks of the read).
    pub(super) fn finish(
        mut self,
        highs: BTreeMap<i32, i64>,
        progress: &mut Progressor<'_>,
        report: &mut ReplayReport,
    ) -> Result<(), DlqError> {
        drain(&mut self.pending, progress, report)?;
        // Everything read is dealt with: the position moves to the watermarks of the read.
        for (p, high) in highs {
            let at = self.positions.entry(p).or_insert(high);
            *at = (*at).max(high);
        }
        progress.commit(&self.positions)
    }
}

/// An idempotent producer: no duplicates from its own retries, order kept per partition.
fn producer(config: &ClientConfig) -> Result<FutureProducer, DlqError> {
    let mut config = config.clone();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    config
        .create()
        .map_err(|e| DlqError::broker("creating the producer", e))
}

/// Hands one copy to the producer, draining acknowledgements while its queue is full.
fn send(
    producer: &FutureProducer,
    record: &DlqRecord,
    copy: &ReplayedRecord,
    headers: &CopyHeaders,
    pending: &mut Vec<(DeliveryFuture, ReplayedRecord)>,
    progress: &mut Progressor<'_>,
    report: &mut ReplayReport,
) -> Result<DeliveryFuture, DlqError> {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name.as_str(),
            value: value.as_deref(),
        });
    }
    let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&copy.topic).headers(owned);
    if let Some(key) = record.key.as_deref() {
        out = out.key(key);
    }
    if let Some(value) = record.value.as_deref() {
        out = out.payload(value);
    }
    if let Some(p) = copy.partition {
        out = out.partition(p);
    }
    loop {
        match producer.send_result(out) {
            Ok(future) => return Ok(future),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                out = back;
                drain(pending, progress, report)?;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((e, _)) => {
                return Err(DlqError::Produce {
                    of: copy.of.to_string(),
                    topic: copy.topic.clone(),
                    reason: e.to_string(),
                    replay_id: progress.replay_id.to_owned(),
                })
            }
        }
    }
}

/// Waits for every pending copy's acknowledgement.
fn drain(
    pending: &mut Vec<(DeliveryFuture, ReplayedRecord)>,
    progress: &mut Progressor<'_>,
    report: &mut ReplayReport,
) -> Result<(), DlqError> {
    let batch: Vec<(DeliveryFuture, ReplayedRecord)> = std::mem::take(pending);
    let (futures, copies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let results = futures::executor::block_on(join_all(futures));
    let mut failure = None;
    for (result, copy) in results.into_iter().zip(copies) {
        match result {
            Ok(Ok(delivery)) => {
                progress.acknowledged((copy.topic.clone(), delivery.partition), delivery.offset);
                report.replayed.push(copy);
            }
            Ok(Err((e, _))) => {
                failure.get_or_insert(DlqError::Produce {
                    of: copy.of.to_string(),
                    topic: copy.topic.clone(),
                    reason: e.to_string(),
                    replay_id: progress.replay_id.to_owned(),
                });
            }
            Err(_) => {
                failure.get_or_insert(DlqError::Produce {
                    of: copy.of.to_string(),
                    topic: copy.topic.clone(),
                    reason: "the producer went away before the acknowledgement".into(),
                    replay_id: progress.replay_id.to_owned(),
                });
            }
        }
    }
    progress.note.done = report.already_replayed + report.replayed.len() as u64;
    failure.map_or(Ok(()), Err)
}

/// The running progress note and its commits.
pub(super) struct Progressor<'a> {
    /// The replay's id.
    pub(super) replay_id: &'a str,
    /// Commits the position and the note (the replay's group).
    pub(super) consumer: &'a Reader,
    /// The dead-letter topic.
    pub(super) dlq: &'a str,
    /// Copies an interrupted run left.
    pub(super) already: &'a AlreadyReplayed,
    /// Where the records still to be replayed can go.
    pub(super) reach: &'a TargetReach,
    /// The note committed with the position.
    pub(super) note: &'a mut ProgressNote,
    /// Per target partition: nothing this run produces from now on lands below it.
    pub(super) ends: &'a mut BTreeMap<Tp, i64>,
}

impl Progressor<'_> {
    /// A copy was acknowledged at `offset` of `tp`: later copies land above it.
    fn acknowledged(&mut self, tp: Tp, offset: i64) {
        let end = self.ends.entry(tp).or_insert(offset + 1);
        *end = (*end).max(offset + 1);
    }

    /// Commits `positions` (every copy below them acknowledged) with the note.
    pub(super) fn commit(&mut self, positions: &BTreeMap<i32, i64>) -> Result<(), DlqError> {
        let live = self.reach.live(self.ends, positions);
        let ends = self.already.ends_for(positions, &live);
        self.note.set_ends(&ends);
        resume::commit(self.consumer, self.dlq, positions, self.note)
    }
}
