//! What a replay reads and decides before it produces anything: the committed position and
//! note, the selected records, whether their targets can be trusted, where each copy goes,
//! and the copies an interrupted run left.

use std::collections::{BTreeMap, BTreeSet};

use super::resume::{self, AlreadyReplayed, Committed, ProgressNote};
use super::ReplayedRecord;
use crate::dlq::error::DlqError;
use crate::dlq::record::{DlqRecord, Shown};
use crate::dlq::scan::{self, Reader, Tp};
use crate::dlq::selection::Selection;

/// What a replay reads before it produces anything.
pub(super) struct Found {
    /// The dead-letter topic's partitions.
    pub(super) dlq_partitions: Vec<i32>,
    /// The replay's committed position and progress note.
    pub(super) committed: Committed,
    /// The selected records at or above the committed position, in dead-letter order.
    pub(super) records: Vec<DlqRecord>,
    /// Each dead-letter partition's high watermark when the read began.
    pub(super) highs: BTreeMap<i32, i64>,
    /// The partitions of every target topic.
    pub(super) targets: BTreeMap<String, BTreeSet<i32>>,
    /// Where an earlier run's note says its copies end, per target partition.
    pub(super) previous_ends: BTreeMap<Tp, i64>,
    /// Copies an interrupted run produced after its last commit.
    pub(super) already: AlreadyReplayed,
}

impl Found {
    /// Reads the replay's state and its selection with `consumer`, refusing a replay id in use
    /// by another selection and records whose target cannot be trusted.
    pub(super) fn read(
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
    pub(super) fn done_before(&self) -> u64 {
        self.committed.note.as_ref().map_or(0, |n| n.done)
    }

    /// The records still to replay, each with where its copy goes.
    pub(super) fn planned(&self, to: Option<&str>) -> Vec<(&DlqRecord, ReplayedRecord)> {
        self.records
            .iter()
            .filter(|r| !self.already.contains(r.partition, r.offset))
            .map(|r| (r, planned_copy(r, &self.targets, to)))
            .collect()
    }

    /// Before anything is produced, the note must name every target partition this run may
    /// write to, at an offset below anything it will write there: the earlier run's ends,
    /// and the log end of every other target partition.
    pub(super) fn ends_before_producing(
        &self,
        consumer: &Reader,
    ) -> Result<BTreeMap<Tp, i64>, DlqError> {
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
    pub(super) fn start_positions(&self) -> BTreeMap<i32, i64> {
        self.dlq_partitions
            .iter()
            .map(|p| (*p, self.committed.positions.get(p).copied().unwrap_or(0)))
            .collect()
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
