//! A partition log: an ordered map of segments (`BTreeMap<base_offset, Segment>`), the log
//! start and end offsets, producer sequence state, and a watch that wakes long-polling
//! fetches when data arrives.
//!
//! Disk errors. A failed write changes nothing in memory and is cut from the file (see
//! [`Segment::append`]). A failed fsync leaves the page cache in an unknown state (Linux
//! may drop the dirty pages and report the error only once), so the partition treats
//! everything after the last successful fsync as lost: the active segment is cut back to
//! its synced size, its indexes and the producer sequences are rebuilt, and the
//! partition's epoch moves on. Requests waiting for that data get KAFKA_STORAGE_ERROR, and
//! so does any request whose data was appended before the cut even if its own fsync later
//! succeeds (the epoch tells). `acks=1` data not yet fsynced under the interval policy is
//! dropped with it: it was never durable (a crash would lose it too), and its offsets are
//! given out again, so the log stays contiguous. Data acknowledged after an fsync is never
//! cut.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use std::sync::Arc;

use super::batch::{BatchError, IncomingBatch};
use super::open_files::OpenFiles;
use super::producer_state::{ProducerStates, SequenceCheck, SequenceError};
use super::record_scan::first_record_at_or_after;
use super::segment::{base_offset_of, BatchAt, HeaderScanner, Segment, SegmentView};
use super::sync::{SyncMark, SyncTarget};
use crate::config::LogConfig;

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppendError {
    /// The batch is malformed or fails its CRC.
    #[error("corrupt batch: {0}")]
    Corrupt(#[from] BatchError),
    /// The batch is larger than `max.message.bytes`.
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge {
        /// Size of the batch.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Idempotent-producer sequence check failed.
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    /// Transactional batches are not supported.
    #[error("transactional batches are not supported")]
    Transactional,
    /// The write failed.
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
}

/// Why a read was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The offset is before the log start or after the log end.
    #[error("offset {offset} outside [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// First offset kept.
        log_start: i64,
        /// Next offset to be written.
        log_end: i64,
    },
    /// The read failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// Result of an append.
#[derive(Debug)]
pub(crate) struct Appended {
    /// Offset of the first record of the request (or of the original, for a duplicate).
    pub(crate) base_offset: i64,
    /// First offset kept in the log.
    pub(crate) log_start_offset: i64,
    /// The partition's epoch after the append: if it has moved on by the time an fsync
    /// succeeds, the data was cut by a failed fsync in between (see [`Partition::epoch`]).
    pub(crate) epoch: u64,
}

/// Result of a read.
#[derive(Debug)]
pub(crate) struct ReadResult {
    /// Whole record batches, possibly empty.
    pub(crate) records: Bytes,
    /// Next offset to be written (the high watermark of a single-node log).
    pub(crate) high_watermark: i64,
    /// First offset kept.
    pub(crate) log_start_offset: i64,
}

/// The decompressed-size bound for batches of at most `max_message_bytes`: 16 times that,
/// and at least 64 MiB.
pub(crate) fn inflate_limit(max_message_bytes: usize) -> u64 {
    (max_message_bytes as u64)
        .saturating_mul(16)
        .max(64 * 1024 * 1024)
}

#[derive(Debug)]
struct PartitionLog {
    segments: BTreeMap<i64, Segment>,
    producers: ProducerStates,
    dirty: bool,
    /// Moves on every time unsynced data is dropped after a failed fsync.
    epoch: u64,
    /// Dropping the unsynced tail failed: retried before the next append.
    tail_unknown: bool,
}

/// One partition of a topic.
#[derive(Debug)]
pub(crate) struct Partition {
    dir: PathBuf,
    config: LogConfig,
    files: Arc<OpenFiles>,
    /// The device the partition's directory is on (for batched syncs).
    device: u64,
    log: Mutex<PartitionLog>,
    end_offset: watch::Sender<i64>,
}

impl PartitionLog {
    fn active(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a partition always has an active segment")
    }

    /// First offset kept: the base of the oldest segment.
    fn log_start_offset(&self) -> i64 {
        *self
            .segments
            .keys()
            .next()
            .expect("a partition always has an active segment")
    }

    /// Next offset to be written: the end of the active segment.
    fn next_offset(&self) -> i64 {
        self.segments
            .values()
            .next_back()
            .expect("a partition always has an active segment")
            .next_offset()
    }
}

impl Partition {
    /// Opens (recovering) or creates the partition stored in `dir`; its segment files are
    /// kept open within the bound of `files`.
    pub(crate) fn open(dir: &Path, config: LogConfig, files: &Arc<OpenFiles>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let device = std::fs::metadata(dir)?.dev();
        let mut bases: Vec<i64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(base_offset_of))
            .collect();
        bases.sort_unstable();
        let mut segments = BTreeMap::new();
        for (i, base) in bases.iter().enumerate() {
            let is_last = i + 1 == bases.len();
            let (segment, seg_report) =
                Segment::open(dir, *base, is_last, config.index_interval_bytes, files)?;
            if seg_report.truncated_bytes > 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    segment = base,
                    truncated_bytes = seg_report.truncated_bytes,
                    "truncated a torn or corrupt segment tail"
                );
            }
            segments.insert(*base, segment);
        }
        if segments.is_empty() {
            segments.insert(0, Segment::create(dir, 0, files)?);
        }
        let next_offset = segments
            .values()
            .next_back()
            .expect("not empty")
            .next_offset();
        // Producer sequences come from the log tail: the last two segments, and more (up to
        // six) while they are small, so a producer's last few batches are found even when
        // they span several tiny segments.
        let mut tail: Vec<&Segment> = Vec::new();
        let mut tail_bytes = 0u64;
        for segment in segments.values().rev() {
            if tail.len() >= 2 && (tail.len() >= 6 || tail_bytes >= 64 * 1024 * 1024) {
                break;
            }
            tail_bytes += segment.size();
            tail.push(segment);
        }
        let producers = producer_states(tail)?;
        let (end_offset, _) = watch::channel(next_offset);
        Ok(Partition {
            dir: dir.to_path_buf(),
            config,
            files: files.clone(),
            device,
            log: Mutex::new(PartitionLog {
                segments,
                producers,
                dirty: false,
                epoch: 0,
                tail_unknown: false,
            }),
            end_offset,
        })
    }

    /// Drops what was written to the active segment after its last successful fsync (on
    /// disk and in memory) and moves the epoch on; the producer sequences are rebuilt from
    /// what is left. When that fails too, the next append tries again first.
    fn drop_unsynced_tail(&self, log: &mut PartitionLog) -> io::Result<()> {
        log.epoch += 1;
        log.tail_unknown = true;
        let index_interval = self.config.index_interval_bytes;
        let active = log.active();
        let keep = active.synced_size();
        let dropped = active.size() - keep;
        active.truncate_to(keep, index_interval)?;
        log.producers = producer_states(log.segments.values().rev().take(6).collect())?;
        log.tail_unknown = false;
        let next = log.next_offset();
        tracing::error!(
            dir = %self.dir.display(),
            dropped_bytes = dropped,
            next_offset = next,
            "dropped the unsynced tail of the partition after a failed fsync"
        );
        self.end_offset.send_replace(next);
        Ok(())
    }

    /// Fsyncs the active segment. On failure the unsynced tail is dropped (see the module
    /// comment) before the error is returned.
    pub(crate) fn sync_active(&self) -> io::Result<()> {
        let (file, base, size, epoch) = {
            let mut log = self.log.lock();
            let epoch = log.epoch;
            let active = log.active();
            (active.file(), active.base_offset(), active.size(), epoch)
        };
        // A file that cannot be opened again cannot be fsynced: that fails like an fsync.
        let result = file.and_then(|file| file.sync_data());
        let mut log = self.log.lock();
        match result {
            Ok(()) => {
                if log.epoch == epoch {
                    if let Some(segment) = log.segments.get_mut(&base) {
                        segment.mark_synced(size);
                    }
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "fsync failed");
                if let Err(cut) = self.drop_unsynced_tail(&mut log) {
                    tracing::error!(dir = %self.dir.display(), error = %cut, "dropping the unsynced tail failed; appends are refused until it succeeds");
                }
                Err(e)
            }
        }
    }

    /// Whether anything was appended since the last call (the interval flush syncs the
    /// partitions for which this says yes).
    pub(crate) fn take_dirty(&self) -> bool {
        std::mem::take(&mut self.log.lock().dirty)
    }

    /// The current epoch; it moves on whenever unsynced data is dropped.
    pub(crate) fn epoch(&self) -> u64 {
        self.log.lock().epoch
    }

    /// Seals the active segment and starts a new one at the log end. Runs off the async
    /// worker (see [`super::blocking`]) as it fsyncs a whole segment; it holds only this
    /// partition's lock. A failed fsync drops the unsynced tail, as in
    /// [`Self::sync_active`].
    fn roll(&self, log: &mut PartitionLog) -> io::Result<()> {
        super::blocking::run(|| {
            if let Err(e) = log.active().seal() {
                if let Err(cut) = self.drop_unsynced_tail(log) {
                    tracing::error!(dir = %self.dir.display(), error = %cut, "dropping the unsynced tail failed");
                }
                return Err(e);
            }
            let new_base = log.next_offset();
            log.segments
                .insert(new_base, Segment::create(&self.dir, new_base, &self.files)?);
            tracing::debug!(dir = %self.dir.display(), base_offset = new_base, "rolled segment");
            Ok(())
        })
    }

    /// Appends a produce request's batches, assigning offsets.
    pub(crate) fn append(&self, batches: &[IncomingBatch]) -> Result<Appended, AppendError> {
        let mut log = self.log.lock();
        if log.tail_unknown {
            super::blocking::run(|| self.drop_unsynced_tail(&mut log))?;
        }
        // The batches are written as they came, each after its new base offset: no copy.
        let mut parts: Vec<BatchAt<'_>> = Vec::with_capacity(batches.len());
        let mut size = 0u64;
        let mut headers = Vec::with_capacity(batches.len());
        let mut first_offset = None;
        let mut next = log.next_offset();
        for batch in batches {
            if batch.bytes.len() > self.config.max_message_bytes {
                return Err(AppendError::TooLarge {
                    size: batch.bytes.len(),
                    max: self.config.max_message_bytes,
                });
            }
            if batch.header.is_transactional() {
                return Err(AppendError::Transactional);
            }
            match log.producers.check(&batch.header)? {
                SequenceCheck::Duplicate { base_offset } => {
                    first_offset.get_or_insert(base_offset);
                    continue;
                }
                SequenceCheck::Append => {}
            }
            parts.push(BatchAt {
                base_offset: next.to_be_bytes(),
                bytes: &batch.bytes,
            });
            size += batch.bytes.len() as u64;
            let mut header = batch.header;
            header.base_offset = next;
            first_offset.get_or_insert(next);
            next += header.offset_count();
            headers.push(header);
        }
        let log_start_offset = log.log_start_offset();
        let Some(base_offset) = first_offset else {
            return Err(AppendError::Corrupt(BatchError::Truncated));
        };
        if headers.is_empty() {
            // A retried batch: the original may still be waiting for its fsync (or its fsync
            // failed), so the retry's acknowledgement waits for one as well.
            return Ok(Appended {
                base_offset,
                log_start_offset,
                epoch: log.epoch,
            });
        }
        let needs_roll = {
            let active = log.active();
            active.size() > 0
                && (active.size() + size > self.config.segment_bytes
                    || next - active.base_offset() > u32::MAX as i64 / 2)
        };
        if needs_roll {
            self.roll(&mut log)?;
        }
        let index_interval = self.config.index_interval_bytes;
        log.active().append(&parts, &headers, index_interval)?;
        for header in &headers {
            log.producers.record(header);
        }
        log.dirty = true;
        let epoch = log.epoch;
        drop(log);
        self.end_offset.send_replace(next);
        Ok(Appended {
            base_offset,
            log_start_offset,
            epoch,
        })
    }

    /// Reads whole batches from `offset`, at most `max_bytes` (with `at_least_one`, the first
    /// batch however large).
    pub(crate) fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<ReadResult, ReadError> {
        let (view, high_watermark, log_start_offset) = {
            let log = self.log.lock();
            let (log_start, log_end) = (log.log_start_offset(), log.next_offset());
            if offset < log_start || offset > log_end {
                return Err(ReadError::OffsetOutOfRange {
                    offset,
                    log_start,
                    log_end,
                });
            }
            let view = (offset < log_end)
                .then(|| log.segments.range(..=offset).next_back())
                .flatten()
                .map(|(base, s)| s.view_for_offset(offset).map(|v| (*base, v)))
                .transpose()?;
            (view, log_end, log_start)
        };
        let mut records = Bytes::new();
        let mut next = view;
        while let Some((base, view)) = next {
            if let Some((pos, _)) = view.find_offset(offset)? {
                records = view.read_batches(pos, max_bytes, at_least_one)?;
                break;
            }
            // The segment ends before `offset`: a gap left by recovering a damaged older
            // segment. Read on from the next segment rather than stall the consumer.
            next = self
                .log
                .lock()
                .segments
                .range(base + 1..)
                .next()
                .map(|(b, s)| s.view_for_offset(offset).map(|v| (*b, v)))
                .transpose()?;
        }
        Ok(ReadResult {
            records,
            high_watermark,
            log_start_offset,
        })
    }

    /// The first offset whose record has a timestamp at or after `timestamp`, with that
    /// record's timestamp; `None` when every record is older.
    pub(crate) fn offset_for_timestamp(&self, timestamp: i64) -> io::Result<Option<(i64, i64)>> {
        let candidates: Vec<SegmentView> = {
            let log = self.log.lock();
            log.segments
                .values()
                .filter(|s| s.max_timestamp() >= timestamp)
                .map(|s| s.view_for_timestamp(timestamp))
                .collect::<io::Result<_>>()?
        };
        for view in candidates {
            let Some((pos, header)) = view.find_timestamp(timestamp)? else {
                continue;
            };
            let batch = view.read_batches(pos, header.total_size(), true)?;
            if let Some(found) = first_record_at_or_after(&batch, timestamp, self.inflate_limit())?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Most bytes a stored batch may inflate to when its records are read: a batch that
    /// decompresses past this ("decompression bomb") is refused as corrupt.
    fn inflate_limit(&self) -> u64 {
        inflate_limit(self.config.max_message_bytes)
    }

    /// First offset kept in the log.
    pub(crate) fn log_start_offset(&self) -> i64 {
        self.log.lock().log_start_offset()
    }

    /// Next offset to be written.
    pub(crate) fn log_end_offset(&self) -> i64 {
        self.log.lock().next_offset()
    }

    /// A receiver that sees the log end offset change.
    pub(crate) fn watch_end(&self) -> watch::Receiver<i64> {
        self.end_offset.subscribe()
    }

    /// Deletes whole segments, oldest first, that are past retention by time (newest record
    /// older than `now_ms - retention`) or by size; never the active segment. Returns the
    /// number of segments deleted.
    pub(crate) fn enforce_retention(&self, now_ms: i64) -> io::Result<usize> {
        let removed = {
            let mut log = self.log.lock();
            let mut removed = Vec::new();
            let mut total: u64 = log.segments.values().map(|s| s.size()).sum();
            while log.segments.len() > 1 {
                let oldest = log.segments.values().next().expect("more than one segment");
                let expired_by_time = self.config.retention.is_some_and(|r| {
                    oldest.max_timestamp() < now_ms.saturating_sub(r.as_millis() as i64)
                });
                let over_size = self
                    .config
                    .retention_bytes
                    .is_some_and(|limit| total - oldest.size() >= limit);
                if !(expired_by_time || over_size) {
                    break;
                }
                let (_, segment) = log.segments.pop_first().expect("more than one segment");
                total -= segment.size();
                removed.push(segment);
            }
            removed
        };
        for segment in &removed {
            segment.delete_files()?;
            tracing::info!(
                dir = %self.dir.display(),
                segment = segment.base_offset(),
                "deleted segment past retention"
            );
        }
        Ok(removed.len())
    }

    /// Seals the active segment's data to disk (used at shutdown).
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut log = self.log.lock();
        log.dirty = false;
        log.active().seal_data()
    }

    /// Base offsets of the segments, oldest first (for tests and tooling).
    pub(crate) fn segment_bases(&self) -> Vec<i64> {
        self.log.lock().segments.keys().copied().collect()
    }
}

/// Producer sequence state read from `tail`, segments newest first.
fn producer_states(tail: Vec<&Segment>) -> io::Result<ProducerStates> {
    let mut producers = ProducerStates::default();
    for segment in tail.into_iter().rev() {
        let view = segment.view_for_offset(segment.base_offset())?;
        let mut scanner = HeaderScanner::new(&view.file, 0, view.end);
        while let Some((_, header)) = scanner.next_header()? {
            producers.record(&header);
        }
    }
    Ok(producers)
}

impl SyncTarget for Partition {
    fn sync_now(&self) -> io::Result<()> {
        self.sync_active()
    }

    fn mark(&self) -> Option<SyncMark> {
        self.files.root_on(self.device)?;
        let mut log = self.log.lock();
        let epoch = log.epoch;
        let active = log.active();
        Some(SyncMark {
            device: self.device,
            file: active.base_offset(),
            size: active.size(),
            epoch,
        })
    }

    fn file_on_device(&self) -> io::Result<Arc<std::fs::File>> {
        self.files
            .root_on(self.device)
            .ok_or_else(|| io::Error::other("the partition is not on the store's file system"))
    }

    /// As after a successful [`Partition::sync_active`]: what was written when `mark` was
    /// taken is durable, unless a failed fsync cut data since (the epoch moved on).
    fn synced(&self, mark: SyncMark) {
        let mut log = self.log.lock();
        if log.epoch == mark.epoch {
            if let Some(segment) = log.segments.get_mut(&mark.file) {
                segment.mark_synced(mark.size);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use steadfast_testkit::batch::{encode_batch, BatchSpec, ProducerSpec};

    use super::*;
    use crate::storage::batch::split_batches;

    /// One batch of one record from producer 7, sequence `seq`.
    fn batch(seq: i32) -> Vec<IncomingBatch> {
        let mut spec = BatchSpec::numbered(
            1,
            1_000 + seq as i64,
            |_| b"k".to_vec(),
            |_| format!("value-{seq}").into_bytes(),
        );
        spec.producer = Some(ProducerSpec {
            id: 7,
            epoch: 0,
            first_sequence: seq,
        });
        split_batches(&encode_batch(&spec)).expect("one batch")
    }

    #[test]
    fn a_failed_fsync_drops_only_the_unsynced_tail_and_offsets_stay_contiguous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = OpenFiles::new(64);
        let partition = Partition::open(dir.path(), LogConfig::default(), &files).expect("open");
        for seq in 0..3 {
            partition.append(&batch(seq)).expect("append");
        }
        partition.sync_active().expect("fsync");
        let synced_len = std::fs::metadata(dir.path().join(format!("{:020}.log", 0)))
            .expect("stat")
            .len();
        let before = partition.append(&batch(3)).expect("append");
        assert_eq!(before.base_offset, 3);
        partition.append(&batch(4)).expect("append");
        assert_eq!(partition.log_end_offset(), 5);

        // What a failed fsync does: everything after the last successful one is dropped.
        {
            let mut log = partition.log.lock();
            partition
                .drop_unsynced_tail(&mut log)
                .expect("drop the tail");
        }
        assert_eq!(partition.log_end_offset(), 3, "the end offset moved back");
        assert_ne!(partition.epoch(), before.epoch, "waiters can tell");
        let on_disk = std::fs::metadata(dir.path().join(format!("{:020}.log", 0)))
            .expect("stat")
            .len();
        assert_eq!(on_disk, synced_len, "cut on disk to the synced size");
        let read = partition.read(0, 1 << 20, true).expect("read");
        assert_eq!(read.high_watermark, 3);
        assert_eq!(
            read.records.len() as u64,
            synced_len,
            "only whole synced batches"
        );

        // The producer's dropped sequence is appended again (not taken for a duplicate),
        // at the next contiguous offset.
        let again = partition.append(&batch(3)).expect("append the retry");
        assert_eq!(again.base_offset, 3);
        drop(partition);
        let reopened = Partition::open(dir.path(), LogConfig::default(), &files).expect("reopen");
        assert_eq!(reopened.log_end_offset(), 4);
    }

    #[test]
    fn a_batched_sync_makes_every_partitions_data_durable() {
        use crate::storage::sync::{sync_targets, BATCH_THRESHOLD};
        let dir = tempfile::tempdir().expect("tempdir");
        // Fewer open files than partitions: some are synced through a reopened file.
        let files = OpenFiles::with_root(0, dir.path()).expect("open files");
        let partitions: Vec<Arc<Partition>> = (0..BATCH_THRESHOLD * 2)
            .map(|p| {
                let partition = Partition::open(
                    &dir.path().join(p.to_string()),
                    LogConfig::default(),
                    &files,
                )
                .expect("open");
                partition.append(&batch(0)).expect("append");
                partition.append(&batch(1)).expect("append");
                Arc::new(partition)
            })
            .collect();
        let results = sync_targets(
            partitions
                .iter()
                .enumerate()
                .map(|(i, p)| (i, p.clone() as Arc<dyn SyncTarget>))
                .collect(),
        );
        assert!(results.values().all(|r| r.is_ok()), "{results:?}");
        // What a failed fsync would do now cuts nothing: all of it is known to be synced.
        for partition in &partitions {
            let mut log = partition.log.lock();
            partition
                .drop_unsynced_tail(&mut log)
                .expect("drop the tail");
            drop(log);
            assert_eq!(partition.log_end_offset(), 2, "nothing was unsynced");
        }
    }

    #[test]
    fn only_sealed_segments_have_index_files_and_they_are_used_at_the_next_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = OpenFiles::new(0);
        let config = LogConfig {
            segment_bytes: 1024,
            index_interval_bytes: 100,
            ..LogConfig::default()
        };
        let partition = Partition::open(dir.path(), config.clone(), &files).expect("open");
        for seq in 0..40 {
            partition.append(&batch(seq)).expect("append");
        }
        let bases = partition.segment_bases();
        assert!(bases.len() >= 3, "rolled: {bases:?}");
        let index_of = |base: i64| dir.path().join(format!("{base:020}.index"));
        let (active, sealed) = bases.split_last().expect("segments");
        for base in sealed {
            let len = std::fs::metadata(index_of(*base))
                .expect("index file")
                .len();
            assert!(
                len > 0,
                "segment {base}: an index was written when it was sealed"
            );
        }
        assert!(
            !index_of(*active).exists(),
            "the active segment's index lives only in memory"
        );
        drop(partition);
        let written = |base: &i64| {
            std::fs::metadata(index_of(*base))
                .and_then(|m| m.modified())
                .expect("index file time")
        };
        let before: Vec<_> = sealed.iter().map(written).collect();

        let reopened = Partition::open(dir.path(), config, &files).expect("reopen");
        let after: Vec<_> = sealed.iter().map(written).collect();
        assert_eq!(
            before, after,
            "the sealed segments' indexes were loaded, not rebuilt"
        );
        assert_eq!(reopened.segment_bases(), bases);
        assert_eq!(reopened.log_end_offset(), 40);
        for offset in 0..40 {
            let read = reopened.read(offset, 1 << 20, true).expect("read");
            let batches = crate::storage::batch::split_batches(&read.records).expect("batches");
            assert_eq!(batches[0].header.base_offset, offset, "read at {offset}");
        }
    }
}
