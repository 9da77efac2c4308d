//! Per-partition offset tracking: the commit point is the lowest unfinished offset, and the
//! offsets above it that are already finished travel in the commit's metadata so that a
//! restart or a rebalance replays only what was really unfinished.
//!
//! Metadata format, version 1 (`sf1`), relative to the committed offset `c`:
//! `sf1;<span>;r;<runs>` — `span` offsets from `c` are covered; `runs` alternate lengths of
//! unfinished and finished offsets, starting with unfinished (decimal, comma-separated) — or
//! `sf1;<span>;b;<hex>` — a bitset over the span, bit `i` set when `c + i` is finished.
//! Whichever is shorter is written; when neither fits the metadata limit the commit carries
//! no metadata (the plain watermark: everything above it is delivered again).
//!
//! The worker stamps each commit's metadata with the time the commit point was taken,
//! `t<ms since the epoch>|<sf1 metadata>`: every record left unfinished by that commit was
//! still unfinished then, so its retry-tier or dead-letter copy, if one was made, was made
//! after that time. A worker taking over the partition looks for such copies from then on.

use std::collections::BTreeSet;

/// The longest metadata string written (Kafka's default `offset.metadata.max.bytes` is 4096).
pub(crate) const MAX_METADATA_BYTES: usize = 4000;

const PREFIX: &str = "sf1";

/// Offsets above a committed offset known to be finished, read back from commit metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FinishedAbove {
    committed: i64,
    finished: BTreeSet<i64>,
    /// When the commit point was taken (ms since the epoch), when the metadata says.
    commit_ms: Option<i64>,
    /// Whether the partition had a committed offset at all (`false`: the default).
    known: bool,
}

/// Stamps sf1 `metadata` with the time `now_ms` its commit point was taken.
pub(crate) fn stamp(metadata: &str, now_ms: i64) -> String {
    format!("t{now_ms}|{metadata}")
}

/// Splits a stamp off `metadata`: the time and the sf1 part.
fn unstamp(metadata: &str) -> (Option<i64>, &str) {
    metadata
        .strip_prefix('t')
        .and_then(|rest| rest.split_once('|'))
        .and_then(|(ms, rest)| Some((Some(ms.parse::<i64>().ok()?), rest)))
        .unwrap_or((None, metadata))
}

impl FinishedAbove {
    /// Parses `metadata` written with a commit at `committed`; unknown or malformed metadata
    /// means nothing is known (everything above `committed` is delivered again).
    pub(crate) fn parse(committed: i64, metadata: &str) -> Self {
        let (commit_ms, metadata) = unstamp(metadata);
        let none = FinishedAbove {
            committed,
            finished: BTreeSet::new(),
            commit_ms,
            known: true,
        };
        let mut parts = metadata.splitn(4, ';');
        if parts.next() != Some(PREFIX) {
            return none;
        }
        let (Some(span), Some(kind), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return none;
        };
        let Ok(span) = span.parse::<i64>() else {
            return none;
        };
        let finished = match kind {
            "r" => parse_runs(committed, span, body),
            "b" => parse_bits(committed, span, body),
            _ => None,
        };
        match finished {
            Some(finished) => FinishedAbove {
                committed,
                finished,
                commit_ms,
                known: true,
            },
            None => none,
        }
    }
    /// Whether `offset` was finished before the commit was written.
    pub(crate) fn contains(&self, offset: i64) -> bool {
        self.finished.contains(&offset)
    }
    /// Records `offset` as finished (a copy of it was found in a retry tier or the
    /// dead-letter topic): it is skipped when delivered.
    pub(crate) fn insert(&mut self, offset: i64) {
        if offset >= self.committed {
            self.finished.insert(offset);
        }
    }
    /// Whether the partition had a committed offset (the default value: none).
    pub(crate) fn is_committed(&self) -> bool {
        self.known
    }
    /// When the commit point was taken, if the metadata was stamped.
    pub(crate) fn commit_ms(&self) -> Option<i64> {
        self.commit_ms
    }
    /// How many offsets are known finished.
    pub(crate) fn len(&self) -> usize {
        self.finished.len()
    }
    /// The committed offset this was read with.
    pub(crate) fn committed(&self) -> i64 {
        self.committed
    }
}

fn parse_runs(committed: i64, span: i64, body: &str) -> Option<BTreeSet<i64>> {
    let mut finished = BTreeSet::new();
    let mut at = committed;
    for (i, run) in body.split(',').filter(|r| !r.is_empty()).enumerate() {
        let len: i64 = run.parse().ok()?;
        if len < 0 || at.checked_add(len)? > committed.checked_add(span)? {
            return None;
        }
        if i % 2 == 1 {
            finished.extend(at..at + len);
        }
        at += len;
    }
    Some(finished)
}

fn parse_bits(committed: i64, span: i64, body: &str) -> Option<BTreeSet<i64>> {
    if !body.len().is_multiple_of(2) || (body.len() as i64) * 4 < span {
        return None;
    }
    let mut finished = BTreeSet::new();
    for (byte_index, pair) in body.as_bytes().chunks(2).enumerate() {
        let byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        for bit in 0..8 {
            let i = byte_index as i64 * 8 + bit;
            if i < span && byte & (1 << bit) != 0 {
                finished.insert(committed + i);
            }
        }
    }
    Some(finished)
}

/// The offsets of one partition that were handed out and are not finished yet.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    unfinished: BTreeSet<i64>,
    /// One past the highest offset seen.
    next: Option<i64>,
    /// Finished offsets restored from the last commit; consulted once per offset.
    restored: FinishedAbove,
    /// Delivered, unfinished offsets whose records were let go to be read again
    /// ([`Self::spill`]): the one delivery after that is begun.
    spilled: BTreeSet<i64>,
}

impl OffsetTracker {
    /// A tracker for a partition whose last commit carried `restored`.
    pub(crate) fn new(restored: FinishedAbove) -> Self {
        OffsetTracker {
            unfinished: BTreeSet::new(),
            // A partition with a commit has a commit point at once: its next commit, stamped,
            // comes before anything new is finished.
            next: restored.is_committed().then(|| restored.committed()),
            restored,
            spilled: BTreeSet::new(),
        }
    }
    /// Records that `offset` was delivered. Returns false when the last commit says it is
    /// already finished, in which case it counts as finished and must be skipped, and when it
    /// was delivered before (the consumer fetched it again: a fetch position reset, say, after
    /// a broker restart), whether it is finished or still running: each offset runs once per
    /// assignment.
    pub(crate) fn begin(&mut self, offset: i64) -> bool {
        if self.next.is_some_and(|next| offset < next) {
            // Delivered before: begun again only when its record was let go (spilled).
            return self.spilled.remove(&offset);
        }
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
        if self.restored.contains(offset) {
            return false;
        }
        self.unfinished.insert(offset);
        true
    }
    /// Notes that the record of the delivered, unfinished `offset` was let go, to be read
    /// again later: it stays unfinished (the commit stays below it), and its next delivery
    /// is begun once.
    pub(crate) fn spill(&mut self, offset: i64) {
        if self.unfinished.contains(&offset) {
            self.spilled.insert(offset);
        }
    }
    /// The offsets let go (spilled) in `[from, to)`, which a read again of the log passed
    /// without delivering: gone from the log (compaction, retention). They count as finished.
    pub(crate) fn spilled_gone(&mut self, from: i64, to: i64) -> Vec<i64> {
        let gone: Vec<i64> = self.spilled.range(from..to).copied().collect();
        for offset in &gone {
            self.spilled.remove(offset);
            self.unfinished.remove(offset);
        }
        gone
    }
    /// Records `offset` as finished before it was delivered (skipped when it is).
    pub(crate) fn skip(&mut self, offset: i64) {
        self.restored.insert(offset);
    }
    /// Whether `offset` was delivered (or skipped) and is finished.
    pub(crate) fn is_finished(&self, offset: i64) -> bool {
        self.next.is_some_and(|next| offset < next) && !self.unfinished.contains(&offset)
    }
    /// One past the highest offset delivered.
    pub(crate) fn next(&self) -> Option<i64> {
        self.next
    }
    /// How many delivered offsets are not finished.
    pub(crate) fn unfinished(&self) -> usize {
        self.unfinished.len()
    }
    /// The lowest delivered offset that is not finished.
    pub(crate) fn lowest_unfinished(&self) -> Option<i64> {
        self.unfinished.first().copied()
    }
    /// Records that `offset` is finished.
    pub(crate) fn finish(&mut self, offset: i64) {
        self.unfinished.remove(&offset);
    }
    /// The offset to commit: the lowest unfinished one, or one past the highest seen.
    pub(crate) fn watermark(&self) -> Option<i64> {
        self.unfinished.first().copied().or(self.next)
    }
    /// The commit: the watermark and the metadata naming the finished offsets above it.
    pub(crate) fn commit_point(&self) -> Option<(i64, String)> {
        let watermark = self.watermark()?;
        let next = self.next?;
        let span = usize::try_from(next - watermark).unwrap_or(usize::MAX);
        if self.unfinished.len() >= span {
            // Nothing above the watermark is finished.
            return Some((watermark, String::new()));
        }
        Some((watermark, encode(watermark, next, &self.unfinished)))
    }
}

/// Encodes which offsets in `[watermark, next)` are finished (those not in `unfinished`).
fn encode(watermark: i64, next: i64, unfinished: &BTreeSet<i64>) -> String {
    let span = next - watermark;
    let runs = encode_runs(watermark, next, unfinished);
    let bits =
        (span <= (MAX_METADATA_BYTES as i64) * 4).then(|| encode_bits(watermark, span, unfinished));
    let best = match bits {
        Some(bits) if bits.len() < runs.len() => bits,
        _ => runs,
    };
    if best.len() > MAX_METADATA_BYTES {
        String::new()
    } else {
        best
    }
}

fn encode_runs(watermark: i64, next: i64, unfinished: &BTreeSet<i64>) -> String {
    let mut out = format!("{PREFIX};{};r;", next - watermark);
    let mut at = watermark;
    let mut first = true;
    let mut push = |out: &mut String, len: i64| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&len.to_string());
    };
    let mut pending_unfinished = 0i64;
    for &offset in unfinished.range(watermark..next) {
        if offset > at {
            push(&mut out, pending_unfinished);
            push(&mut out, offset - at);
            pending_unfinished = 0;
        }
        pending_unfinished += 1;
        at = offset + 1;
        if out.len() > MAX_METADATA_BYTES {
            return out;
        }
    }
    push(&mut out, pending_unfinished);
    if next > at {
        push(&mut out, next - at);
    }
    out
}

fn encode_bits(watermark: i64, span: i64, unfinished: &BTreeSet<i64>) -> String {
    let bytes = usize::try_from((span + 7) / 8).unwrap_or(0);
    let mut bits = vec![0xffu8; bytes];
    if span % 8 != 0 {
        if let Some(last) = bits.last_mut() {
            *last = (1u8 << (span % 8)) - 1;
        }
    }
    for &offset in unfinished.range(watermark..watermark + span) {
        let i = offset - watermark;
        bits[(i / 8) as usize] &= !(1 << (i % 8));
    }
    let mut out = format!("{PREFIX};{span};b;");
    for b in bits {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(tracker: &OffsetTracker) -> (i64, FinishedAbove) {
        let (committed, metadata) = tracker.commit_point().expect("a commit point");
        (committed, FinishedAbove::parse(committed, &metadata))
    }

    #[test]
    fn an_offset_fetched_again_is_not_begun_twice() {
        let mut t = OffsetTracker::new(FinishedAbove::parse(10, ""));
        assert!(!t.begin(3), "below the commit: finished");
        assert!(t.begin(10));
        assert!(t.begin(11));
        assert!(!t.begin(11), "still running: not again");
        t.finish(10);
        assert!(!t.begin(10), "finished: not again");
        assert_eq!(t.lowest_unfinished(), Some(11));
        assert!(t.begin(12));
    }

    #[test]
    fn a_spilled_offset_is_begun_once_more_and_holds_the_commit_meanwhile() {
        let mut t = OffsetTracker::new(FinishedAbove::parse(0, ""));
        for o in 0..4 {
            assert!(t.begin(o));
        }
        t.finish(0);
        t.spill(0);
        t.spill(2);
        t.finish(1);
        t.finish(3);
        assert_eq!(t.watermark(), Some(2), "the spilled record is unfinished");
        assert!(!t.begin(0), "finished before the spill: not begun");
        assert!(!t.begin(1), "never spilled: not begun again");
        assert!(t.begin(2), "spilled: begun at its next delivery");
        assert!(!t.begin(2), "once");
        t.finish(2);
        assert_eq!(t.watermark(), Some(4));
        assert!(t.begin(4) && t.begin(5) && t.begin(6));
        t.spill(4);
        t.spill(6);
        assert_eq!(
            t.spilled_gone(4, 6),
            vec![4],
            "passed by a read again: gone"
        );
        assert_eq!(t.watermark(), Some(5));
        assert!(t.begin(6), "6 was not passed: still begun at its delivery");
    }

    #[test]
    fn a_stamped_commit_keeps_its_time_and_its_finished_offsets() {
        let mut t = OffsetTracker::default();
        for o in 0..5 {
            t.begin(o);
        }
        t.finish(1);
        let (committed, metadata) = t.commit_point().expect("a commit point");
        let read = FinishedAbove::parse(committed, &stamp(&metadata, 1_700_000_000_123));
        assert_eq!(read.commit_ms(), Some(1_700_000_000_123));
        assert!(read.contains(1) && !read.contains(2));
        let plain = FinishedAbove::parse(committed, &metadata);
        assert_eq!(plain.commit_ms(), None);
        assert!(plain.contains(1));
        assert_eq!(FinishedAbove::parse(0, "t12|").commit_ms(), Some(12));
    }

    #[test]
    fn watermark_is_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..20 {
            assert!(t.begin(o));
        }
        for o in [10, 11, 13, 15] {
            t.finish(o);
        }
        assert_eq!(t.watermark(), Some(12));
        t.finish(12);
        assert_eq!(t.watermark(), Some(14));
        for o in 10..20 {
            t.finish(o);
        }
        assert_eq!(t.watermark(), Some(20));
    }

    #[test]
    fn finished_offsets_above_the_watermark_survive_a_round_trip() {
        let mut t = OffsetTracker::default();
        for o in 0..1000 {
            t.begin(o);
        }
        for o in 0..1000 {
            if o != 5 && o != 700 {
                t.finish(o);
            }
        }
        let (committed, restored) = round_trip(&t);
        assert_eq!(committed, 5);
        assert_eq!(restored.len(), 1000 - 5 - 2);
        assert!(!restored.contains(5) && !restored.contains(700));
        assert!(restored.contains(6) && restored.contains(999) && !restored.contains(1000));

        let mut again = OffsetTracker::new(restored);
        let handled: Vec<i64> = (committed..1000).filter(|&o| again.begin(o)).collect();
        assert_eq!(handled, vec![5, 700]);
    }

    #[test]
    fn scattered_offsets_pick_the_bitset_when_it_is_shorter() {
        let mut t = OffsetTracker::default();
        for o in 0..400 {
            t.begin(o);
        }
        for o in (1..400).step_by(2) {
            t.finish(o);
        }
        let (committed, metadata) = t.commit_point().expect("commit");
        assert!(metadata.starts_with("sf1;400;b;"), "{metadata}");
        let restored = FinishedAbove::parse(committed, &metadata);
        for o in 0..400 {
            assert_eq!(restored.contains(o), o % 2 == 1, "offset {o}");
        }
    }

    #[test]
    fn metadata_too_large_falls_back_to_the_plain_watermark() {
        let mut t = OffsetTracker::default();
        for o in 0..100_000 {
            t.begin(o);
        }
        for o in (1..100_000).step_by(2) {
            t.finish(o);
        }
        let (committed, metadata) = t.commit_point().expect("commit");
        assert_eq!(committed, 0);
        assert!(metadata.is_empty());
    }

    #[test]
    fn malformed_metadata_means_nothing_is_known() {
        for m in [
            "",
            "x",
            "sf1;",
            "sf1;5;r;1,a",
            "sf1;5;r;3,9",
            "sf1;10;b;f",
            "sf2;1;r;1",
        ] {
            assert_eq!(FinishedAbove::parse(3, m).len(), 0, "{m}");
        }
    }
}
