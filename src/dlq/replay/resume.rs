//! The bookkeeping that makes a replay resumable with each record replayed once in total.
//!
//! The position is committed as offsets of the dead-letter partitions under the group
//! `steadfast-replay-<id>`: every dead-letter record below a committed offset has been dealt
//! with (replayed and acknowledged, or not selected). The commit's metadata is a
//! [`ProgressNote`]: the selection's fingerprint, how many records were replayed so far, and
//! for each target partition that can still receive copies an offset at or below which no
//! copy of an uncommitted record can sit (`ends`). A rerun reads the target partitions from
//! those offsets to their end and takes every record whose `steadfast-replay-id` is the
//! replay's and whose `steadfast-replay-of` names a dead-letter offset at or above the
//! committed one as already replayed ([`AlreadyReplayed`]).
//!
//! Brokers bound commit metadata (`offset.metadata.max.bytes`, 4096 bytes by default, and
//! the embedded server enforces it), so the `ends` are spread over the commit entries of the
//! dead-letter partitions, at most [`METADATA_LIMIT`] bytes each, and merged when read back.
//! A replay whose `ends` do not fit even so is refused before anything is produced.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::super::error::DlqError;
use super::super::record::RecordRef;
use super::super::scan::{Reader, Tp};
use crate::message::headers;
use crate::message::Headers;

/// Timeout of the commit and committed-offset requests.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of metadata one commit entry carries: below Kafka's default
/// `offset.metadata.max.bytes` (4096), with room for offsets that grow a digit.
pub(crate) const METADATA_LIMIT: usize = 4000;

/// The format [`ProgressNote::encode`] writes: 2 spreads `ends` over the commit entries
/// (1 repeated every end on every entry; still read).
const FORMAT: u32 = 2;

/// The metadata of a replay's commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProgressNote {
    /// The format version ([`FORMAT`]).
    pub(crate) v: u32,
    /// The fingerprint of the selection the replay id belongs to.
    pub(crate) selection: String,
    /// Records replayed (acknowledged) under this id up to the commit.
    pub(crate) done: u64,
    /// Per target topic and partition: copies of records at or above the committed
    /// dead-letter offsets sit at or above this offset. In a commit, each entry carries a
    /// share of them.
    pub(crate) ends: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// The `ends` did not fit in the commit entries (see [`ProgressNote::spread`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooLarge {
    /// Target partitions the note names.
    pub(crate) targets: usize,
    /// Commit entries there were to spread them over.
    pub(crate) entries: usize,
}

impl ProgressNote {
    /// A note of the current format, without `ends`.
    pub(crate) fn new(selection: String, done: u64) -> Self {
        ProgressNote {
            v: FORMAT,
            selection,
            done,
            ends: BTreeMap::new(),
        }
    }
    /// The note as commit metadata (compact JSON).
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).expect("a note of strings and integer maps always serializes")
    }
    /// A note read back from commit metadata.
    pub(crate) fn decode(text: &str) -> Result<Self, String> {
        let note: ProgressNote = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if note.v != 1 && note.v != FORMAT {
            return Err(format!("unknown progress format {}", note.v));
        }
        Ok(note)
    }
    /// `ends` as one map of topic-partitions.
    pub(crate) fn flat_ends(&self) -> BTreeMap<Tp, i64> {
        self.ends
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| ((t.clone(), *p), *o)))
            .collect()
    }
    /// Sets `ends` from a map of topic-partitions.
    pub(crate) fn set_ends(&mut self, ends: &BTreeMap<Tp, i64>) {
        self.ends.clear();
        for ((t, p), o) in ends {
            self.ends.entry(t.clone()).or_default().insert(*p, *o);
        }
    }
    /// The note as the metadata of `entries` commit entries, each at most [`METADATA_LIMIT`]
    /// bytes: every one with the selection and `done`, the `ends` shared out among them in
    /// order. Entries past those the `ends` need carry none.
    pub(crate) fn spread(&self, entries: usize) -> Result<Vec<String>, TooLarge> {
        let targets = self.ends.values().map(BTreeMap::len).sum();
        let too_large = TooLarge { targets, entries };
        let empty = ProgressNote {
            ends: BTreeMap::new(),
            ..self.clone()
        };
        // The size of the encoded note, kept as entries are added: `"topic":{}` for a
        // topic, `"partition":offset` for an end, a comma before all but the first.
        let base = empty.encode().len();
        let mut out = Vec::new();
        let mut part = empty.clone();
        let mut size = base;
        for (topic, ends) in &self.ends {
            let topic_size = serde_json::to_string(topic)
                .expect("a string always serializes")
                .len()
                + 3;
            for (p, o) in ends {
                let end_size = p.to_string().len() + o.to_string().len() + 3;
                let grow = |part: &ProgressNote| match part.ends.get(topic) {
                    Some(ps) => end_size + usize::from(!ps.is_empty()),
                    None => topic_size + usize::from(!part.ends.is_empty()) + end_size,
                };
                if size + grow(&part) > METADATA_LIMIT {
                    if part.ends.is_empty() {
                        return Err(too_large);
                    }
                    debug_assert_eq!(part.encode().len(), size);
                    out.push(std::mem::replace(&mut part, empty.clone()).encode());
                    size = base;
                }
                size += grow(&part);
                part.ends.entry(topic.clone()).or_default().insert(*p, *o);
            }
        }
        debug_assert_eq!(part.encode().len(), size);
        out.push(part.encode());
        if out.len() > entries.max(1) {
            return Err(too_large);
        }
        while out.len() < entries {
            out.push(empty.encode());
        }
        Ok(out)
    }
}

/// What a replay id has committed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Committed {
    /// Per dead-letter partition: every record below this offset was dealt with.
    pub(crate) positions: BTreeMap<i32, i64>,
    /// The note, when the id has committed anything.
    pub(crate) note: Option<ProgressNote>,
}

/// Reads the committed progress of `consumer`'s group (the replay's) on `topic`.
pub(crate) fn read_committed(
    consumer: &Reader,
    topic: &str,
    partitions: &[i32],
    replay_id: &str,
) -> Result<Committed, DlqError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .map_err(|e| DlqError::broker(format!("reading the progress of replay {replay_id}"), e))?;
    let entries = committed.elements();
    committed_from(
        entries.iter().map(|e| CommittedEntry {
            partition: e.partition(),
            error: e.error(),
            offset: e.offset(),
            metadata: e.metadata(),
        }),
        topic,
        replay_id,
    )
}

/// One partition of an OffsetFetch answer.
#[derive(Debug)]
pub(crate) struct CommittedEntry<'a> {
    /// The partition.
    pub(crate) partition: i32,
    /// The partition's own error: the request as a whole may succeed while a partition
    /// fails (a coordinator loading its offsets, for one).
    pub(crate) error: Result<(), KafkaError>,
    /// Its committed offset.
    pub(crate) offset: Offset,
    /// The metadata committed with it.
    pub(crate) metadata: &'a str,
}

/// The progress in an OffsetFetch answer. A partition that answers with an error fails the
/// whole read: taken as "nothing committed", it would restart the replay from the beginning
/// and replay everything again.
pub(crate) fn committed_from<'a>(
    entries: impl IntoIterator<Item = CommittedEntry<'a>>,
    topic: &str,
    replay_id: &str,
) -> Result<Committed, DlqError> {
    let mut out = Committed::default();
    let mut ends: BTreeMap<Tp, i64> = BTreeMap::new();
    for e in entries {
        if let Err(source) = e.error {
            return Err(DlqError::broker(
                format!(
                    "reading the progress of replay {replay_id} on {topic}/{} (nothing was replayed; run again once the broker answers)",
                    e.partition
                ),
                source,
            ));
        }
        if let Offset::Offset(o) = e.offset {
            out.positions.insert(e.partition, o);
            if e.metadata.is_empty() {
                continue;
            }
            let bad = |reason: String| DlqError::BadProgress {
                id: replay_id.to_owned(),
                reason,
            };
            let note = ProgressNote::decode(e.metadata).map_err(bad)?;
            // Each entry carries a share of the ends; a lower end only means more to read.
            for (tp, o) in note.flat_ends() {
                let end = ends.entry(tp).or_insert(o);
                *end = (*end).min(o);
            }
            match &mut out.note {
                None => out.note = Some(note),
                Some(first) if first.selection != note.selection => {
                    return Err(bad(format!(
                        "its commit entries name two selections, {} and {}",
                        first.selection, note.selection
                    )))
                }
                Some(first) => first.done = first.done.max(note.done),
            }
        }
    }
    if let Some(note) = &mut out.note {
        note.set_ends(&ends);
    }
    Ok(out)
}

/// Commits `positions` of `topic` with `note` as metadata, synchronously.
pub(crate) fn commit(
    consumer: &Reader,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
    note: &ProgressNote,
) -> Result<(), DlqError> {
    let metadata = note
        .spread(positions.len())
        .map_err(|t| DlqError::ProgressTooLarge {
            targets: t.targets,
            dlq_partitions: t.entries,
            limit: METADATA_LIMIT,
        })?;
    let mut tpl = TopicPartitionList::new();
    for (p, o) in positions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(|e| DlqError::broker("building the commit", e))?;
    }
    for (mut e, metadata) in tpl.elements().into_iter().zip(&metadata) {
        e.set_metadata(metadata);
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| DlqError::broker("committing the replay position", e))
}

/// The dead-letter record a target-topic record is a copy of, when it is a copy made by
/// replay `replay_id` of a record of `dlq_topic`.
pub(crate) fn copy_of(headers: &Headers, replay_id: &str, dlq_topic: &str) -> Option<RecordRef> {
    if headers.get_str(headers::REPLAY_ID) != Some(replay_id) {
        return None;
    }
    headers
        .get_str(headers::REPLAY_OF)
        .and_then(RecordRef::parse)
        .filter(|r| r.topic == dlq_topic)
}

/// Dead-letter records an earlier run of the replay produced after its last commit: found in
/// the target partitions, they are skipped.
#[derive(Debug, Clone, Default)]
pub(crate) struct AlreadyReplayed {
    /// (dead-letter partition, offset) → where its copy sits (target partition, offset).
    copies: BTreeMap<(i32, i64), (Tp, i64)>,
}

impl AlreadyReplayed {
    /// Notes a copy of `of` found at `at`, if `of` is at or above the committed position
    /// (below it, the commit already covers it).
    pub(crate) fn found(&mut self, of: &RecordRef, at: (Tp, i64), committed: &BTreeMap<i32, i64>) {
        let from = committed.get(&of.partition).copied().unwrap_or(0);
        if of.offset >= from {
            self.copies.entry((of.partition, of.offset)).or_insert(at);
        }
    }
    /// Whether the record at `partition`/`offset` of the dead-letter topic was replayed.
    pub(crate) fn contains(&self, partition: i32, offset: i64) -> bool {
        self.copies.contains_key(&(partition, offset))
    }
    /// How many were found.
    pub(crate) fn len(&self) -> usize {
        self.copies.len()
    }
    /// The `ends` to commit with `positions`: `candidates` lowered, per target partition, to
    /// the lowest copy of a record that `positions` do not cover yet, so that a later run
    /// still finds it.
    pub(crate) fn ends_for(
        &self,
        positions: &BTreeMap<i32, i64>,
        candidates: &BTreeMap<Tp, i64>,
    ) -> BTreeMap<Tp, i64> {
        let mut ends = candidates.clone();
        for ((p, o), (tp, at)) in &self.copies {
            if positions.get(p).is_some_and(|covered| o < covered) {
                continue;
            }
            let end = ends.entry(tp.clone()).or_insert(*at);
            *end = (*end).min(*at);
        }
        ends
    }
}

/// Which target partitions the records still to be replayed can go to: per target
/// partition, the last such record of each dead-letter partition.
#[derive(Debug, Clone, Default)]
pub(crate) struct TargetReach {
    last: BTreeMap<Tp, BTreeMap<i32, i64>>,
}

impl TargetReach {
    /// The copy of the record at `partition`/`offset` may land on `tp`.
    pub(crate) fn add(&mut self, tp: Tp, partition: i32, offset: i64) {
        let last = self
            .last
            .entry(tp)
            .or_default()
            .entry(partition)
            .or_insert(offset);
        *last = (*last).max(offset);
    }
    /// `ends` without the target partitions that no record at or above `positions` goes
    /// to: nothing can land there any more, so a rerun need not read them.
    pub(crate) fn live(
        &self,
        ends: &BTreeMap<Tp, i64>,
        positions: &BTreeMap<i32, i64>,
    ) -> BTreeMap<Tp, i64> {
        ends.iter()
            .filter(|(tp, _)| {
                self.last.get(*tp).is_some_and(|last| {
                    last.iter()
                        .any(|(p, o)| positions.get(p).is_none_or(|at| o >= at))
                })
            })
            .map(|(tp, o)| (tp.clone(), *o))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn tp(t: &str, p: i32) -> Tp {
        (t.to_owned(), p)
    }

    #[test]
    fn the_progress_note_round_trips_through_commit_metadata() {
        let mut note = ProgressNote::new("abc".into(), 7);
        let ends = BTreeMap::from([(tp("orders", 0), 10), (tp("orders", 1), 3)]);
        note.set_ends(&ends);
        let text = note.encode();
        assert!(text.len() < 200, "compact: {text}");
        let back = ProgressNote::decode(&text).expect("decodes");
        assert_eq!(back, note);
        assert_eq!(back.flat_ends(), ends);
        assert!(
            ProgressNote::decode("{\"v\":3,\"selection\":\"\",\"done\":0,\"ends\":{}}").is_err()
        );
        let v1 = "{\"v\":1,\"selection\":\"abc\",\"done\":7,\"ends\":{\"orders\":{\"0\":10}}}";
        assert_eq!(
            ProgressNote::decode(v1)
                .expect("the first format is still read")
                .done,
            7
        );
        assert!(ProgressNote::decode("garbage").is_err());
    }

    #[test]
    fn only_this_replays_copies_of_this_dead_letter_topic_count() {
        let h = |id: &str, of: &str| -> Headers {
            [
                (headers::REPLAY_ID, Bytes::from(id.to_owned())),
                (headers::REPLAY_OF, Bytes::from(of.to_owned())),
            ]
            .into_iter()
            .collect()
        };
        assert_eq!(
            copy_of(&h("r1", "orders.dlq/0/5"), "r1", "orders.dlq").map(|r| r.offset),
            Some(5)
        );
        assert_eq!(
            copy_of(&h("r2", "orders.dlq/0/5"), "r1", "orders.dlq"),
            None
        );
        assert_eq!(copy_of(&h("r1", "other.dlq/0/5"), "r1", "orders.dlq"), None);
        assert_eq!(copy_of(&Headers::new(), "r1", "orders.dlq"), None);
    }

    #[test]
    fn copies_below_the_committed_position_are_not_counted_twice() {
        let committed = BTreeMap::from([(0, 10), (1, 0)]);
        let mut already = AlreadyReplayed::default();
        let of = |p, o| RecordRef {
            topic: "orders.dlq".into(),
            partition: p,
            offset: o,
        };
        already.found(&of(0, 9), (tp("orders", 0), 100), &committed);
        already.found(&of(0, 10), (tp("orders", 0), 101), &committed);
        already.found(&of(0, 10), (tp("orders", 0), 150), &committed);
        already.found(&of(1, 0), (tp("orders", 1), 40), &committed);
        assert!(!already.contains(0, 9), "covered by the commit");
        assert!(already.contains(0, 10));
        assert!(already.contains(1, 0));
        assert_eq!(already.len(), 2);

        // A commit that covers (0, 10) but not (1, 0) must keep orders/1 at or below 40.
        let positions = BTreeMap::from([(0, 11), (1, 0)]);
        let candidates = BTreeMap::from([(tp("orders", 0), 200), (tp("orders", 1), 300)]);
        let ends = already.ends_for(&positions, &candidates);
        assert_eq!(ends[&tp("orders", 0)], 200);
        assert_eq!(ends[&tp("orders", 1)], 40);
        // Once both are covered, the candidates stand.
        let positions = BTreeMap::from([(0, 11), (1, 1)]);
        assert_eq!(already.ends_for(&positions, &candidates), candidates);
    }

    #[test]
    fn a_partition_that_answers_with_an_error_fails_the_read() {
        use rdkafka::types::RDKafkaErrorCode;
        let entry = |partition, error, offset| CommittedEntry {
            partition,
            error,
            offset,
            metadata: "",
        };
        let ok = committed_from(
            [
                entry(0, Ok(()), Offset::Offset(4)),
                entry(1, Ok(()), Offset::Invalid),
            ],
            "orders.dlq",
            "r1",
        )
        .expect("no errors");
        assert_eq!(ok.positions, BTreeMap::from([(0, 4)]));

        let failed = committed_from(
            [
                entry(0, Ok(()), Offset::Offset(4)),
                entry(
                    1,
                    Err(KafkaError::OffsetFetch(
                        RDKafkaErrorCode::CoordinatorLoadInProgress,
                    )),
                    Offset::Invalid,
                ),
            ],
            "orders.dlq",
            "r1",
        )
        .expect_err("a failed partition is not \"nothing committed\"");
        let text = failed.to_string();
        assert!(matches!(failed, DlqError::Broker { .. }), "{text}");
        assert!(text.contains("replay r1 on orders.dlq/1"), "{text}");
    }

    /// A commit of `spread` notes, as OffsetFetch answers it.
    fn read_back(metadata: &[String]) -> Result<Committed, DlqError> {
        committed_from(
            metadata.iter().enumerate().map(|(p, m)| CommittedEntry {
                partition: i32::try_from(p).expect("few partitions"),
                error: Ok(()),
                offset: Offset::Offset(5),
                metadata: m,
            }),
            "orders.dlq",
            "r1",
        )
    }

    #[test]
    fn the_note_is_spread_over_the_commit_entries_within_the_metadata_limit() {
        // 600 target partitions at large offsets: over 12 kB.
        let topic = "orders-".repeat(30);
        let ends: BTreeMap<Tp, i64> = (0..600)
            .map(|p| (tp(&topic, p), 1_000_000_000_000 + i64::from(p)))
            .collect();
        let mut note = ProgressNote::new("abc".into(), 42);
        note.set_ends(&ends);
        assert!(note.encode().len() > 3 * METADATA_LIMIT);

        let metadata = note.spread(8).expect("fits in 8 entries");
        assert_eq!(metadata.len(), 8, "one for each entry");
        for m in &metadata {
            assert!(m.len() <= METADATA_LIMIT, "{} bytes", m.len());
        }
        let back = read_back(&metadata).expect("reads back");
        let back_note = back.note.expect("a note");
        assert_eq!(back_note.flat_ends(), ends, "every end, once");
        assert_eq!((back_note.done, back_note.selection.as_str()), (42, "abc"));

        assert_eq!(
            note.spread(3),
            Err(TooLarge {
                targets: 600,
                entries: 3
            }),
            "refused when the entries cannot hold it"
        );
        // A small note fits in one entry; the others carry the selection alone.
        let mut small = ProgressNote::new("abc".into(), 1);
        small.set_ends(&BTreeMap::from([(tp("orders", 0), 10)]));
        let metadata = small.spread(3).expect("fits");
        assert_eq!(metadata[0], small.encode());
        assert_eq!(
            read_back(&metadata).expect("reads").note.expect("a note"),
            small
        );
    }

    #[test]
    fn only_target_partitions_that_can_still_receive_copies_are_noted() {
        let mut reach = TargetReach::default();
        // dead-letter 0/5 goes to orders/1; 0/9 and 1/3 to orders/2 (or anywhere of them).
        reach.add(tp("orders", 1), 0, 5);
        reach.add(tp("orders", 2), 0, 9);
        reach.add(tp("orders", 2), 1, 3);
        let ends = BTreeMap::from([
            (tp("orders", 0), 7),
            (tp("orders", 1), 8),
            (tp("orders", 2), 9),
        ]);
        let at = |p0, p1| BTreeMap::from([(0, p0), (1, p1)]);
        assert_eq!(
            reach.live(&ends, &at(0, 0)).keys().collect::<Vec<_>>(),
            [&tp("orders", 1), &tp("orders", 2)],
            "nothing goes to orders/0"
        );
        assert_eq!(
            reach.live(&ends, &at(6, 0)).keys().collect::<Vec<_>>(),
            [&tp("orders", 2)],
            "0/5 is covered"
        );
        assert_eq!(
            reach.live(&ends, &at(10, 3)).keys().collect::<Vec<_>>(),
            [&tp("orders", 2)],
            "1/3 is not"
        );
        assert!(reach.live(&ends, &at(10, 4)).is_empty());
    }
}
