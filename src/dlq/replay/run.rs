//! The replay itself, blocking (run it on a blocking thread): read the selection from the
//! committed position, find copies an interrupted run left, produce the rest in order with an
//! idempotent producer, and commit the position after every acknowledged stretch.

use std::collections::{BTreeMap, BTreeSet};
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
use super::resume::{self, AlreadyReplayed, Committed, ProgressNote, TargetReach};
use super::{ReplayOptions, ReplayProgress, ReplayReport, ReplayStarted, ReplayedRecord};
use crate::dlq::error::DlqError;
use crate::dlq::record::{DlqRecord, Shown};
use crate::dlq::scan::{self, Reader, Tp};
use crate::dlq::selection::Selection;
use crate::policy::now_ms;

/// Most records produced and not yet acknowledged.
const WINDOW: usize = 1_000;

/// Runs a replay of `selection` with `options` against the brokers of `config`.
pub(crate) fn replay_blocking(
    config: &ClientConfig,
    selection: &Selection,
    options: &ReplayOptions,
) -> Result<ReplayReport, DlqError> {
    selection.validate()?;
    let to = options.to.as_deref();
    let fingerprint = selection.fingerprint_with_target(to);
    let replay_id = replay_id_of(options, &fingerprint);
    let group = format!("steadfast-replay-{replay_id}");
    if let (false, Some(started)) = (options.dry_run, &options.started) {
        started(&ReplayStarted {
            replay_id: replay_id.clone(),
            group: group.clone(),
        });
    }
    let consumer = scan::reader(config, Some(&group))?;
    let dlq = selection.topic.as_str();
    let found = Found::read(&consumer, selection, &replay_id, &fingerprint, to)?;
    let planned = found.planned(to);
    let already_replayed = found.done_before() + found.already.len() as u64;
    let mut report = ReplayReport {
        replay_id: replay_id.clone(),
        group,
        dry_run: options.dry_run,
        selected: found.records.len() as u64,
        already_replayed,
        found_past_commit: found.already.len() as u64,
        replayed: Vec::new(),
    };
    if options.dry_run {
        report.replayed = planned.into_iter().map(|(_, p)| p).collect();
        return Ok(report);
    }

    let mut ends = found.ends_before_producing(&consumer)?;
    let positions = found.start_positions();
    let reach = reach_of(&planned, &found.targets);
    let mut note = ProgressNote::new(fingerprint, report.already_replayed);
    let mut progress = Progressor {
        replay_id: &replay_id,
        consumer: &consumer,
        dlq,
        already: &found.already,
        reach: &reach,
        note: &mut note,
        ends: &mut ends,
    };
    progress.commit(&positions)?;

    let mut producing = Producing::new(config, options, &replay_id, &found.records, positions)?;
    producing.all(planned, &mut progress, &mut report)?;
    producing.finish(found.highs, &mut progress, &mut report)?;
    report
        .replayed
        .sort_by_key(|r| (r.of.partition, r.of.offset));
    Ok(report)
}

/// The replay's id: the one given, a fresh one (`--fresh`), or the selection's fingerprint
/// (so that running the same replay again resumes it).
fn replay_id_of(options: &ReplayOptions, fingerprint: &str) -> String {
    match (&options.replay_id, options.fresh) {
        (Some(id), _) if !id.trim().is_empty() => id.trim().to_owned(),
        (_, true) => format!(
            "{fingerprint}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ),
        _ => fingerprint.to_owned(),
    }
}

/// What a replay reads before it produces anything.
struct Found {
    /// The dead-letter topic's partitions.
    dlq_partitions: Vec<i32>,
    /// The replay's committed position and progress note.
    committed: Committed,
    /// The selected records at or above the committed position, in dead-letter order.
    records: Vec<DlqRecord>,
    /// Each dead-letter partition's high watermark when the read began.
    highs: BTreeMap<i32, i64>,
    /// The partitions of every target topic.
    targets: BTreeMap<String, BTreeSet<i32>>,
    /// Where an earlier run's note says its copies end, per target partition.
    previous_ends: BTreeMap<Tp, i64>,
    /// Copies an interrupted run produced after its last commit.
    already: AlreadyReplayed,
}

impl Found {
    /// Reads the replay's state and its selection with `consumer`, refusing a replay id in use
    /// by another selection and records whose target cannot be trusted.
    fn read(
        consumer: &Reader,
        selection: &Selection,
        replay_id: &str,
        fingerprint: &str,
        to: Option<&str>,
    ) -> Result<Self, DlqError> {
        let dlq = selection.topic.as_str();
        let dlq_partitions = scan::partitions(consumer, dlq)?;
        let committed = resume::read_committed(consumer, dlq, &dlq_partitions, replay_id)?;
        if let Some(note) = &committed.note {
            if note.selection != fingerprint {
                return Err(DlqError::ReplayIdInUse {
                    id: replay_id.to_owned(),
                    recorded: note.selection.clone(),
                    current: fingerprint.to_owned(),
                });
            }
        }
        let (records, highs) = read_selection(consumer, selection, &dlq_partitions, &committed)?;
        if to.is_none() {
            refuse_homeless(&records, dlq)?;
            refuse_foreign(&records, dlq)?;
        }
        let targets = target_partitions(consumer, &records, to)?;
        let previous_ends = committed
            .note
            .as_ref()
            .map(ProgressNote::flat_ends)
            .unwrap_or_default();
        let already = find_copies(consumer, replay_id, dlq, &committed, &previous_ends)?;
        Ok(Found {
            dlq_partitions,
            committed,
            records,
            highs,
            targets,
            previous_ends,
            already,
        })
    }

    /// Copies earlier runs recorded as done.
    fn done_before(&self) -> u64 {
        self.committed.note.as_ref().map_or(0, |n| n.done)
    }

    /// The records still to replay, each with where its copy goes.
    fn planned(&self, to: Option<&str>) -> Vec<(&DlqRecord, ReplayedRecord)> {
        self.records
            .iter()
            .filter(|r| !self.already.contains(r.partition, r.offset))
            .map(|r| (r, planned_copy(r, &self.targets, to)))
            .collect()
    }

    /// Before anything is produced, the note must name every target partition this run may
    /// write to, at an offset below anything it will write there: the earlier run's ends,
    /// and the log end of every other target partition.
    fn ends_before_producing(&self, consumer: &Reader) -> Result<BTreeMap<Tp, i64>, DlqError> {
        let mut ends = self.previous_ends.clone();
        for (topic, partitions) in &self.targets {
            for p in partitions {
                if let std::collections::btree_map::Entry::Vacant(e) =
                    ends.entry((topic.clone(), *p))
                {
                    e.insert(scan::watermarks(consumer, topic, *p)?.1);
                }
            }
        }
        Ok(ends)
    }

    /// The committed position of every dead-letter partition (0 where none is).
    fn start_positions(&self) -> BTreeMap<i32, i64> {
        self.dlq_partitions
            .iter()
            .map(|p| (*p, self.committed.positions.get(p).copied().unwrap_or(0)))
            .collect()
    }
}

/// Where each planned copy can go: its partition, or every partition of its target topic
/// when it goes to its key's partition.
fn reach_of(
    planned: &[(&DlqRecord, ReplayedRecord)],
    targets: &BTreeMap<String, BTreeSet<i32>>,
) -> TargetReach {
    let mut reach = TargetReach::default();
    for (record, copy) in planned {
        let tps: Vec<i32> = match copy.partition {
            Some(p) => vec![p],
            None => targets
                .get(&copy.topic)
                .map(|ps| ps.iter().copied().collect())
                .unwrap_or_default(),
        };
        for p in tps {
            reach.add((copy.topic.clone(), p), record.partition, record.offset);
        }
    }
    reach
}

/// Producing the planned copies: rate-limited, in dead-letter order, the position committed
/// after every acknowledged stretch.
struct Producing<'a> {
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
    fn new(
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
    fn all(
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
        let headers = replay_headers(record, &stamp);
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
    fn finish(
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

/// The selected records at or above the committed position, in dead-letter order, and the
/// high watermark of every dead-letter partition when the read began.
fn read_selection(
    consumer: &Reader,
    selection: &Selection,
    partitions: &[i32],
    committed: &Committed,
) -> Result<(Vec<DlqRecord>, BTreeMap<i32, i64>), DlqError> {
    let starts: BTreeMap<Tp, Option<i64>> = partitions
        .iter()
        .map(|p| {
            (
                (selection.topic.clone(), *p),
                committed.positions.get(p).copied(),
            )
        })
        .collect();
    let mut records = Vec::new();
    let highs = scan::read_to_end(consumer, &starts, |m| {
        let r = scan::record_of(m);
        if selection.matches(&r) {
            records.push(r);
        }
    })?;
    records.sort_by_key(|r| (r.partition, r.offset));
    let highs = highs.into_iter().map(|((_, p), h)| (p, h)).collect();
    Ok((records, highs))
}

/// Refuses the replay when a selected record has no original topic.
fn refuse_homeless(records: &[DlqRecord], dlq: &str) -> Result<(), DlqError> {
    let homeless: Vec<&DlqRecord> = records.iter().filter(|r| r.original.is_none()).collect();
    match homeless.first() {
        None => Ok(()),
        Some(first) => Err(DlqError::MissingOriginalTopic {
            count: homeless.len(),
            topic: dlq.to_owned(),
            partition: first.partition,
            offset: first.offset,
        }),
    }
}

/// The topic a dead-letter topic holds records of, by the naming rule (`<topic>.dlq`).
fn source_of(dlq: &str) -> Option<&str> {
    dlq.strip_suffix(".dlq").filter(|t| !t.is_empty())
}

/// Refuses the replay when a selected record names an original topic other than the one
/// `dlq` is named after: provenance headers are data of the record, and a record that
/// reached the dead-letter topic with forged ones must not pick its replay's target.
fn refuse_foreign(records: &[DlqRecord], dlq: &str) -> Result<(), DlqError> {
    let source = source_of(dlq);
    let foreign: Vec<&DlqRecord> = records
        .iter()
        .filter(|r| {
            r.original
                .as_ref()
                .is_some_and(|o| source != Some(o.topic.as_str()))
        })
        .collect();
    let Some(first) = foreign.first() else {
        return Ok(());
    };
    let expected = match source {
        Some(source) => format!("`{source}`, the topic `{dlq}` is named after"),
        None => format!(
            "known: `{dlq}` is not named `<topic>.dlq`, so the topic its records came from is not known"
        ),
    };
    Err(DlqError::ForeignOriginalTopic {
        count: foreign.len(),
        expected,
        topic: dlq.to_owned(),
        partition: first.partition,
        offset: first.offset,
        // Record data: escaped, so that an error message cannot carry terminal controls.
        named: first
            .original
            .as_ref()
            .map(|o| o.topic.escape_debug().to_string())
            .unwrap_or_default(),
    })
}

/// The topic `record` is replayed into: `to` when named, else its original topic.
fn target_of<'a>(record: &'a DlqRecord, to: Option<&'a str>) -> Option<&'a str> {
    to.or_else(|| record.original.as_ref().map(|o| o.topic.as_str()))
}

/// The partitions of every target topic of `records`.
fn target_partitions(
    consumer: &Reader,
    records: &[DlqRecord],
    to: Option<&str>,
) -> Result<BTreeMap<String, BTreeSet<i32>>, DlqError> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        if let Some(topic) = target_of(r, to) {
            *counts.entry(topic).or_default() += 1;
        }
    }
    let mut out = BTreeMap::new();
    for (topic, count) in counts {
        let partitions = match scan::partitions(consumer, topic) {
            Ok(ps) => ps,
            Err(DlqError::UnknownTopic(_)) => {
                return Err(DlqError::UnknownOriginalTopic {
                    topic: topic.to_owned(),
                    count,
                })
            }
            Err(e) => return Err(e),
        };
        out.insert(topic.to_owned(), partitions.into_iter().collect());
    }
    Ok(out)
}

/// Copies of this replay's records that an interrupted run produced after its last commit.
fn find_copies(
    consumer: &Reader,
    replay_id: &str,
    dlq: &str,
    committed: &Committed,
    ends: &BTreeMap<Tp, i64>,
) -> Result<AlreadyReplayed, DlqError> {
    let mut already = AlreadyReplayed::default();
    if ends.is_empty() {
        return Ok(already);
    }
    let starts: BTreeMap<Tp, Option<i64>> =
        ends.iter().map(|(tp, o)| (tp.clone(), Some(*o))).collect();
    scan::read_to_end(consumer, &starts, |m| {
        if let Some(of) = resume::copy_of(&scan::headers_of(m), replay_id, dlq) {
            use rdkafka::Message as _;
            let at = ((m.topic().to_owned(), m.partition()), m.offset());
            already.found(&of, at, &committed.positions);
        }
    })?;
    Ok(already)
}

/// Where the copy of `record` goes: its target topic (see [`target_of`]), to its original
/// partition when that is the target and has it, else to its key's partition.
fn planned_copy(
    record: &DlqRecord,
    targets: &BTreeMap<String, BTreeSet<i32>>,
    to: Option<&str>,
) -> ReplayedRecord {
    let topic = target_of(record, to).unwrap_or_default().to_owned();
    let partition = record
        .original
        .as_ref()
        .filter(|o| o.topic == topic)
        .and_then(|o| o.partition)
        .filter(|p| targets.get(&topic).is_some_and(|ps| ps.contains(p)));
    ReplayedRecord {
        of: record.position(),
        key: record
            .key
            .as_deref()
            .map(|k| Shown::of(k).display())
            .unwrap_or_default(),
        topic,
        partition,
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
struct Progressor<'a> {
    replay_id: &'a str,
    consumer: &'a Reader,
    dlq: &'a str,
    already: &'a AlreadyReplayed,
    /// Where the records still to be replayed can go.
    reach: &'a TargetReach,
    note: &'a mut ProgressNote,
    /// Per target partition: nothing this run produces from now on lands below it.
    ends: &'a mut BTreeMap<Tp, i64>,
}

impl Progressor<'_> {
    /// A copy was acknowledged at `offset` of `tp`: later copies land above it.
    fn acknowledged(&mut self, tp: Tp, offset: i64) {
        let end = self.ends.entry(tp).or_insert(offset + 1);
        *end = (*end).max(offset + 1);
    }

    /// Commits `positions` (every copy below them acknowledged) with the note.
    fn commit(&mut self, positions: &BTreeMap<i32, i64>) -> Result<(), DlqError> {
        let live = self.reach.live(self.ends, positions);
        let ends = self.already.ends_for(positions, &live);
        self.note.set_ends(&ends);
        resume::commit(self.consumer, self.dlq, positions, self.note)
    }
}
