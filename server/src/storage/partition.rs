//! A partition log: an ordered map of segments (`BTreeMap<base_offset, Segment>`), the log
//! start and end offsets, producer sequence state, and a watch that wakes long-polling
//! fetches when data arrives.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::batch::{set_base_offset, BatchError, IncomingBatch};
use super::producer_state::{ProducerStates, SequenceCheck, SequenceError};
use super::record_scan::first_record_at_or_after;
use super::segment::{base_offset_of, HeaderScanner, Segment, SegmentView};
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
    /// The file the data went to, when anything was written (for fsync).
    pub(crate) written_to: Option<Arc<File>>,
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
}

/// One partition of a topic.
#[derive(Debug)]
pub(crate) struct Partition {
    dir: PathBuf,
    config: LogConfig,
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
    /// Opens (recovering) or creates the partition stored in `dir`.
    pub(crate) fn open(dir: &Path, config: LogConfig) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut bases: Vec<i64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(base_offset_of))
            .collect();
        bases.sort_unstable();
        let mut segments = BTreeMap::new();
        for (i, base) in bases.iter().enumerate() {
            let is_last = i + 1 == bases.len();
            let (segment, seg_report) =
                Segment::open(dir, *base, is_last, config.index_interval_bytes)?;
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
            segments.insert(0, Segment::create(dir, 0)?);
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
        let mut producers = ProducerStates::default();
        for segment in tail.into_iter().rev() {
            let view = segment.view_for_offset(segment.base_offset());
            let mut scanner = HeaderScanner::new(&view.file, 0, view.end);
            while let Some((_, header)) = scanner.next_header()? {
                producers.record(&header);
            }
        }
        let (end_offset, _) = watch::channel(next_offset);
        Ok(Partition {
            dir: dir.to_path_buf(),
            config,
            log: Mutex::new(PartitionLog {
                segments,
                producers,
                dirty: false,
            }),
            end_offset,
        })
    }

    /// Appends a produce request's batches, assigning offsets.
    pub(crate) fn append(&self, batches: &[IncomingBatch]) -> Result<Appended, AppendError> {
        let mut log = self.log.lock();
        let mut data = Vec::with_capacity(batches.iter().map(|b| b.bytes.len()).sum());
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
            let start = data.len();
            data.extend_from_slice(&batch.bytes);
            set_base_offset(&mut data[start..], next);
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
                written_to: Some(log.active().file().clone()),
            });
        }
        let needs_roll = {
            let active = log.active();
            active.size() > 0
                && (active.size() + data.len() as u64 > self.config.segment_bytes
                    || next - active.base_offset() > u32::MAX as i64 / 2)
        };
        if needs_roll {
            log.active().seal()?;
            let new_base = log.next_offset();
            log.segments
                .insert(new_base, Segment::create(&self.dir, new_base)?);
            tracing::debug!(dir = %self.dir.display(), base_offset = new_base, "rolled segment");
        }
        let index_interval = self.config.index_interval_bytes;
        let active = log.active();
        active.append(&data, &headers, index_interval)?;
        let written_to = Some(active.file().clone());
        for header in &headers {
            log.producers.record(header);
        }
        log.dirty = true;
        drop(log);
        self.end_offset.send_replace(next);
        Ok(Appended {
            base_offset,
            log_start_offset,
            written_to,
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
                .map(|(base, s)| (*base, s.view_for_offset(offset)));
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
                .map(|(b, s)| (*b, s.view_for_offset(offset)));
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
                .collect()
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

    /// The active segment's file if anything was written since the last call.
    pub(crate) fn take_dirty(&self) -> Option<Arc<File>> {
        let mut log = self.log.lock();
        if !log.dirty {
            return None;
        }
        log.dirty = false;
        Some(log.active().file().clone())
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
