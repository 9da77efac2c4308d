//! One segment of a partition log: a file of record batches, `{base_offset:020}.log`, with
//! its sparse indexes. Appends go through `pwrite` at the known end; reads use `pread` on a
//! shared file handle, so a reader never holds the partition lock while it does I/O. The
//! file is opened when it is used and may be closed between uses (see [`super::open_files`]).

use std::fs::File;
use std::io::{self, IoSlice, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::{verify_crc, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use super::index::{OffsetEntry, SegmentIndex, TimeEntry};
use super::open_files::{OpenFiles, SegmentFile};

/// What recovery found in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveryReport {
    /// Bytes of whole, valid batches.
    pub(crate) valid_bytes: u64,
    /// Bytes cut from the end because they were torn or corrupt.
    pub(crate) truncated_bytes: u64,
}

/// A segment of a partition log.
#[derive(Debug)]
pub(crate) struct Segment {
    base_offset: i64,
    file: SegmentFile,
    size: u64,
    next_offset: i64,
    max_timestamp: i64,
    last_batch: Option<(i64, u64)>,
    index: SegmentIndex,
    bytes_since_index: u64,
    /// Bytes known to be on stable storage: written before an fsync that succeeded.
    synced_size: u64,
    /// A failed write could not be cut back: the file may hold bytes past `size`, which
    /// must be cut before anything else is appended.
    torn_tail: bool,
}

/// The three files of a segment.
fn paths(dir: &Path, base_offset: i64) -> (PathBuf, PathBuf, PathBuf) {
    let stem = format!("{base_offset:020}");
    (
        dir.join(format!("{stem}.log")),
        dir.join(format!("{stem}.index")),
        dir.join(format!("{stem}.timeindex")),
    )
}

/// Parses a segment file name back into its base offset.
pub(crate) fn base_offset_of(file_name: &str) -> Option<i64> {
    let stem = file_name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A snapshot of a segment taken under the partition lock, read from without it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    pub(crate) file: Arc<File>,
    /// Bytes of the segment that hold whole batches at the time of the snapshot.
    pub(crate) end: u64,
    /// Where to start scanning (from the index).
    pub(crate) start_hint: u64,
}

impl Segment {
    /// Creates a new, empty segment.
    pub(crate) fn create(dir: &Path, base_offset: i64, files: &Arc<OpenFiles>) -> io::Result<Self> {
        let (log_path, _, _) = paths(dir, base_offset);
        Ok(Segment {
            base_offset,
            file: SegmentFile::create(files, log_path)?,
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            last_batch: None,
            index: SegmentIndex::new(),
            bytes_since_index: 0,
            synced_size: 0,
            torn_tail: false,
        })
    }

    /// Opens an existing segment. The last segment of a partition (`verify_all`) has every
    /// batch CRC-checked and a torn or corrupt tail truncated; older segments trust their
    /// index and only scan their tail, unless the index is missing or inconsistent.
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        verify_all: bool,
        index_interval: u64,
        files: &Arc<OpenFiles>,
    ) -> io::Result<(Self, RecoveryReport)> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let mut file = SegmentFile::open(files, log_path)?;
        let file_len = file.get()?.metadata()?.len();
        if !verify_all {
            if let Some(index) = SegmentIndex::load(&index_path, &time_path, file_len)? {
                match Self::from_trusted_index(file, file_len, base_offset, index)? {
                    Ok(segment) => {
                        let report = RecoveryReport {
                            valid_bytes: segment.size,
                            truncated_bytes: 0,
                        };
                        return Ok((segment, report));
                    }
                    // The tail did not end cleanly: fall through to a full recovery.
                    Err(handed_back) => file = handed_back,
                }
            }
        }
        let mut segment = Segment {
            base_offset,
            file,
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            last_batch: None,
            index: SegmentIndex::new(),
            bytes_since_index: 0,
            synced_size: 0,
            torn_tail: false,
        };
        let report = segment.recover(file_len, index_interval)?;
        if !verify_all {
            // An older segment whose index had to be rebuilt: it takes no more appends.
            segment.seal()?;
        }
        Ok((segment, report))
    }

    /// Loads a sealed segment whose index files are consistent, scanning only the batches
    /// after the last index entry. When that tail does not end exactly at the file end, the
    /// file is handed back (`Ok(Err(file))`) for a full recovery.
    fn from_trusted_index(
        file: SegmentFile,
        file_len: u64,
        base_offset: i64,
        index: SegmentIndex,
    ) -> io::Result<Result<Self, SegmentFile>> {
        let start = index.position_for_offset(u32::MAX);
        let handle = file.get()?;
        let mut scanner = HeaderScanner::new(&handle, start, file_len);
        let mut next_offset = base_offset;
        let mut max_timestamp = index.max_timestamp().unwrap_or(-1);
        let mut last_batch = None;
        let mut end = start;
        while let Some((pos, header)) = scanner.next_header()? {
            next_offset = header.last_offset() + 1;
            max_timestamp = max_timestamp.max(header.max_timestamp);
            last_batch = Some((header.base_offset, pos));
            end = pos + header.total_size() as u64;
        }
        let failed = scanner.failed;
        if end != file_len || failed {
            return Ok(Err(file));
        }
        if start == 0 && last_batch.is_none() && file_len != 0 {
            return Ok(Err(file));
        }
        Ok(Ok(Segment {
            base_offset,
            file,
            size: file_len,
            next_offset,
            max_timestamp,
            last_batch,
            index,
            bytes_since_index: 0,
            synced_size: file_len,
            torn_tail: false,
        }))
    }

    /// Reads every batch, checking CRCs and offset continuity, rebuilding the indexes, and
    /// truncates the file after the last good batch.
    fn recover(&mut self, file_len: u64, index_interval: u64) -> io::Result<RecoveryReport> {
        let file = self.file.get()?;
        let mut reader = io::BufReader::with_capacity(1 << 20, file.as_ref());
        let mut batch = Vec::new();
        let mut pos = 0u64;
        loop {
            if file_len - pos < LOG_OVERHEAD as u64 {
                break;
            }
            batch.resize(LOG_OVERHEAD, 0);
            reader.read_exact(&mut batch[..LOG_OVERHEAD])?;
            let Ok(size) = BatchHeader::peek_size(&batch) else {
                break;
            };
            if pos + size as u64 > file_len {
                break;
            }
            batch.resize(size, 0);
            reader.read_exact(&mut batch[LOG_OVERHEAD..])?;
            let Ok(header) = BatchHeader::parse(&batch) else {
                break;
            };
            if verify_crc(&batch, &header).is_err() || header.base_offset != self.next_offset {
                break;
            }
            self.note_appended(&header, pos, index_interval);
            pos += size as u64;
        }
        self.size = pos;
        let truncated = file_len - pos;
        if truncated > 0 {
            file.set_len(pos)?;
            file.sync_all()?;
        }
        // What recovery read is what the next process start would read.
        self.synced_size = pos;
        Ok(RecoveryReport {
            valid_bytes: pos,
            truncated_bytes: truncated,
        })
    }

    /// Updates the end, offsets, timestamps and indexes for a batch written at `pos`.
    fn note_appended(&mut self, header: &BatchHeader, pos: u64, index_interval: u64) {
        let relative_offset = (header.base_offset - self.base_offset) as u32;
        if self.bytes_since_index >= index_interval {
            self.index.push_offset(OffsetEntry {
                relative_offset,
                position: pos as u32,
            });
            self.index.push_time(TimeEntry {
                timestamp: self.max_timestamp.max(header.max_timestamp),
                relative_offset,
                position: pos as u32,
            });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += header.total_size() as u64;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.next_offset = header.last_offset() + 1;
        self.last_batch = Some((header.base_offset, pos));
    }

    /// Appends `batches` at their new base offsets (`headers` are theirs, offsets set), with
    /// one vectored write: each batch's new base offset, then the rest of its bytes as they
    /// came. All or nothing: when the write fails, the file is cut back to where it ended
    /// (now, or before the next append if cutting fails too) and nothing in memory changes,
    /// so no reader ever sees part of the data.
    pub(crate) fn append(
        &mut self,
        batches: &[BatchAt<'_>],
        headers: &[BatchHeader],
        index_interval: u64,
    ) -> io::Result<()> {
        let file = self.file.get()?;
        if self.torn_tail {
            file.set_len(self.size)?;
            self.torn_tail = false;
        }
        if let Err(e) = write_batches_at(&file, batches, self.size) {
            // Cut a partial write so the file ends at a batch boundary again.
            self.torn_tail = file.set_len(self.size).is_err();
            return Err(e);
        }
        let mut pos = self.size;
        for header in headers {
            self.note_appended(header, pos, index_interval);
            pos += header.total_size() as u64;
        }
        self.size = pos;
        Ok(())
    }

    /// Bytes known to be on stable storage.
    pub(crate) fn synced_size(&self) -> u64 {
        self.synced_size
    }

    /// Notes that an fsync that started when the segment was `size` bytes long succeeded.
    pub(crate) fn mark_synced(&mut self, size: u64) {
        self.synced_size = self.synced_size.max(size.min(self.size));
    }

    /// Cuts the segment back to `len` bytes (a batch boundary, such as the synced size),
    /// on disk and in memory: offsets, timestamps and indexes are rebuilt from what is left.
    pub(crate) fn truncate_to(&mut self, len: u64, index_interval: u64) -> io::Result<()> {
        let file = self.file.get()?;
        file.set_len(len)?;
        file.sync_all()?;
        drop(file);
        self.index = SegmentIndex::new();
        self.size = 0;
        self.next_offset = self.base_offset;
        self.max_timestamp = -1;
        self.last_batch = None;
        self.bytes_since_index = 0;
        self.torn_tail = false;
        self.recover(len, index_interval)?;
        Ok(())
    }

    /// Finishes a segment that will receive no more data: a final time-index entry for its
    /// newest timestamp, the data fsynced, then the index files written (see
    /// [`SegmentIndex::write_files`]).
    pub(crate) fn seal(&mut self) -> io::Result<()> {
        if let Some((base, pos)) = self.last_batch {
            self.index.push_time(TimeEntry {
                timestamp: self.max_timestamp,
                relative_offset: (base - self.base_offset) as u32,
                position: pos as u32,
            });
        }
        self.file.get()?.sync_data()?;
        self.synced_size = self.size;
        let (_, index_path, time_path) = paths(self.dir(), self.base_offset);
        self.index.write_files(&index_path, &time_path);
        Ok(())
    }

    /// Fsyncs the data without sealing (the segment stays active; its indexes are rebuilt
    /// by recovery).
    pub(crate) fn seal_data(&self) -> io::Result<()> {
        self.file.get()?.sync_data()
    }

    /// A snapshot to read `offset` from (opening the file if it was closed).
    pub(crate) fn view_for_offset(&self, offset: i64) -> io::Result<SegmentView> {
        let relative = (offset - self.base_offset).clamp(0, u32::MAX as i64) as u32;
        Ok(SegmentView {
            file: self.file.get()?,
            end: self.size,
            start_hint: self.index.position_for_offset(relative),
        })
    }

    /// A snapshot to search for the first record at or after `timestamp` (opening the file
    /// if it was closed).
    pub(crate) fn view_for_timestamp(&self, timestamp: i64) -> io::Result<SegmentView> {
        Ok(SegmentView {
            file: self.file.get()?,
            end: self.size,
            start_hint: self.index.position_for_timestamp(timestamp),
        })
    }

    /// The partition directory the segment's files are in.
    fn dir(&self) -> &Path {
        self.file.path().parent().unwrap_or(Path::new("."))
    }

    /// Base offset (the offset of its first batch).
    pub(crate) fn base_offset(&self) -> i64 {
        self.base_offset
    }
    /// Offset after its last batch.
    pub(crate) fn next_offset(&self) -> i64 {
        self.next_offset
    }
    /// Size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }
    /// Newest timestamp in the segment, -1 when empty.
    pub(crate) fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    /// The log file, for fsync (opened if it was closed).
    pub(crate) fn file(&self) -> io::Result<Arc<File>> {
        self.file.get()
    }
    /// Deletes the segment's files.
    pub(crate) fn delete_files(&self) -> io::Result<()> {
        let (log, index, time) = paths(self.dir(), self.base_offset);
        for p in [log, index, time] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl SegmentIndex {
    /// Largest timestamp recorded in the time index.
    pub(crate) fn max_timestamp(&self) -> Option<i64> {
        self.last_time().map(|e| e.timestamp)
    }
}

/// Walks batch headers of a segment file from a position, reading in large chunks.
#[derive(Debug)]
pub(crate) struct HeaderScanner<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// Set when a header could not be parsed before `end`.
    pub(crate) failed: bool,
}

/// Bytes read per step while walking headers: an index entry lies within about 4 KiB of the
/// batch a read looks for, so a small read finds it without pulling in the data after it.
const SCAN_CHUNK: u64 = 8 * 1024;

impl<'a> HeaderScanner<'a> {
    /// Starts at `pos` (a batch boundary) and stops at `end`.
    pub(crate) fn new(file: &'a File, pos: u64, end: u64) -> Self {
        HeaderScanner {
            file,
            pos,
            end,
            buf: Vec::new(),
            buf_start: 0,
            failed: false,
        }
    }

    /// The next batch's position and header, or `None` at the end.
    pub(crate) fn next_header(&mut self) -> io::Result<Option<(u64, BatchHeader)>> {
        if self.end.saturating_sub(self.pos) < HEADER_LEN as u64 {
            if self.pos < self.end {
                self.failed = true;
            }
            return Ok(None);
        }
        let have = self.pos >= self.buf_start
            && self.pos + HEADER_LEN as u64 <= self.buf_start + self.buf.len() as u64;
        if !have {
            let len = SCAN_CHUNK.min(self.end - self.pos) as usize;
            self.buf.resize(len, 0);
            self.file.read_exact_at(&mut self.buf, self.pos)?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        match BatchHeader::parse(&self.buf[at..at + HEADER_LEN]) {
            Ok(header) if self.pos + header.total_size() as u64 <= self.end => {
                let pos = self.pos;
                self.pos += header.total_size() as u64;
                Ok(Some((pos, header)))
            }
            _ => {
                self.failed = true;
                Ok(None)
            }
        }
    }
}

impl SegmentView {
    /// Position of the first batch whose last offset is at or after `offset`.
    pub(crate) fn find_offset(&self, offset: i64) -> io::Result<Option<(u64, BatchHeader)>> {
        let mut scanner = HeaderScanner::new(&self.file, self.start_hint, self.end);
        while let Some((pos, header)) = scanner.next_header()? {
            if header.last_offset() >= offset {
                return Ok(Some((pos, header)));
            }
        }
        Ok(None)
    }

    /// Position of the first batch whose newest timestamp is at or after `timestamp`.
    pub(crate) fn find_timestamp(&self, timestamp: i64) -> io::Result<Option<(u64, BatchHeader)>> {
        let mut scanner = HeaderScanner::new(&self.file, self.start_hint, self.end);
        while let Some((pos, header)) = scanner.next_header()? {
            if header.max_timestamp >= timestamp {
                return Ok(Some((pos, header)));
            }
        }
        Ok(None)
    }

    /// Reads whole batches starting at `pos`, up to `max_bytes`; with `at_least_one`, the
    /// first batch is returned however large it is, so a consumer can make progress.
    pub(crate) fn read_batches(
        &self,
        pos: u64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> io::Result<Bytes> {
        let available = self.end.saturating_sub(pos);
        let len = (max_bytes as u64).min(available) as usize;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, pos)?;
        let mut whole = 0;
        while let Ok(size) = BatchHeader::peek_size(&buf[whole..]) {
            if whole + size > buf.len() {
                break;
            }
            whole += size;
        }
        if whole == 0 && at_least_one && available >= LOG_OVERHEAD as u64 {
            let mut prefix = [0u8; LOG_OVERHEAD];
            self.file.read_exact_at(&mut prefix, pos)?;
            let size = BatchHeader::peek_size(&prefix)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let size = (size as u64).min(available) as usize;
            buf.resize(size, 0);
            self.file.read_exact_at(&mut buf, pos)?;
            return Ok(Bytes::from(buf));
        }
        buf.truncate(whole);
        Ok(Bytes::from(buf))
    }
}

/// A batch to append: its bytes as they came, and the base offset it is written with.
pub(crate) struct BatchAt<'a> {
    /// The offset of its first record in this log, as written (big-endian): the buffer the
    /// vectored write takes in place of the producer's.
    pub(crate) base_offset: [u8; 8],
    /// The whole batch; its first 8 bytes (the base offset the producer wrote) are replaced.
    pub(crate) bytes: &'a [u8],
}

/// At most this many buffers go to one `pwritev` (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// Writes `batches` to `file` from `position`, each after its new base offset, through
/// vectored writes (`pwritev`), resuming after a short write.
fn write_batches_at(file: &File, batches: &[BatchAt<'_>], position: u64) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batches.len() * 2);
    for batch in batches {
        let rest = batch.bytes.get(8..).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a batch shorter than its base offset",
            )
        })?;
        slices.push(IoSlice::new(&batch.base_offset));
        slices.push(IoSlice::new(rest));
    }
    let mut remaining: &mut [IoSlice<'_>] = &mut slices;
    let mut position = position;
    while !remaining.is_empty() {
        let chunk = &remaining[..remaining.len().min(MAX_IOVECS)];
        match rustix::io::pwritev(file, chunk, position) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                position += written as u64;
                IoSlice::advance_slices(&mut remaining, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _};

    use super::*;

    /// Batches written with their new base offsets in place of the producer's, in order,
    /// after what the file held; as many batches as take two or more `pwritev` calls.
    #[test]
    fn batches_are_written_after_their_new_base_offsets() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("segment"))
            .expect("a file");
        file.write_all_at(b"head", 0).expect("written");
        // Seeded: `SEGMENT_WRITE_SEED=<n>` replays a run. Batch sizes from the bare 8-byte
        // header (an empty rest) up; more batches than one `pwritev` takes.
        let seed: u64 = std::env::var("SEGMENT_WRITE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("SEGMENT_WRITE_SEED={seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let count = rng.random_range(MAX_IOVECS / 2 + 1..=2 * MAX_IOVECS);
        let bodies: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let mut body = vec![0xEE; 8];
                body.extend(std::iter::repeat_n(i as u8, rng.random_range(0..300)));
                body
            })
            .collect();
        let batches: Vec<BatchAt<'_>> = bodies
            .iter()
            .enumerate()
            .map(|(i, bytes)| BatchAt {
                base_offset: (1_000 + i as i64).to_be_bytes(),
                bytes,
            })
            .collect();
        write_batches_at(&file, &batches, 4).expect("written");
        let mut expected = b"head".to_vec();
        for (i, body) in bodies.iter().enumerate() {
            expected.extend_from_slice(&(1_000 + i as i64).to_be_bytes());
            expected.extend_from_slice(&body[8..]);
        }
        let written = std::fs::read(dir.path().join("segment")).expect("read back");
        assert_eq!(written.len(), expected.len());
        assert!(
            written == expected,
            "the file holds the batches with their new offsets"
        );
        let short = [BatchAt {
            base_offset: 0_i64.to_be_bytes(),
            bytes: &[1, 2, 3],
        }];
        assert!(
            write_batches_at(&file, &short, 0).is_err(),
            "a batch under 8 bytes"
        );
    }
}
