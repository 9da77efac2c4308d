//! Sparse indexes of a segment: offset → file position, and timestamp → offset.
//!
//! Both are kept in memory. A sealed segment's indexes are written to files beside it
//! (`{base_offset:020}.index`, 8-byte entries; `{base_offset:020}.timeindex`, 16-byte
//! entries) once, when it is sealed, and loaded from them at the next start; the active
//! segment's indexes live only in memory (recovery rebuilds them from the segment, which it
//! reads whole anyway), so an active segment holds no descriptors for them. Recovery
//! rebuilds any index whose files do not match their segment.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

/// One offset-index entry: the first batch starting at or after some byte boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    /// Offset relative to the segment base offset.
    pub(crate) relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub(crate) position: u32,
}

/// One time-index entry: by this offset, the largest timestamp seen in the segment is `timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    /// Largest timestamp seen up to and including the batch at `relative_offset`.
    pub(crate) timestamp: i64,
    /// Offset (relative to the segment base) of the batch that raised the maximum.
    pub(crate) relative_offset: u32,
    /// Byte position of that batch.
    pub(crate) position: u32,
}

/// The sparse indexes of one segment (see the module comment).
#[derive(Debug, Default)]
pub(crate) struct SegmentIndex {
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
}

const OFFSET_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 16;

impl SegmentIndex {
    /// An empty index.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Loads index files written earlier; `None` when they are missing or do not fit a
    /// segment of `segment_size` bytes (then the caller rebuilds them).
    pub(crate) fn load(
        offset_path: &Path,
        time_path: &Path,
        segment_size: u64,
    ) -> io::Result<Option<Self>> {
        let (Ok(offset_bytes), Ok(time_bytes)) =
            (std::fs::read(offset_path), std::fs::read(time_path))
        else {
            return Ok(None);
        };
        if offset_bytes.len() % OFFSET_ENTRY_LEN != 0 || time_bytes.len() % TIME_ENTRY_LEN != 0 {
            return Ok(None);
        }
        let offsets: Vec<OffsetEntry> = offset_bytes
            .chunks_exact(OFFSET_ENTRY_LEN)
            .map(|c| OffsetEntry {
                relative_offset: u32::from_be_bytes(c[0..4].try_into().expect("4 bytes")),
                position: u32::from_be_bytes(c[4..8].try_into().expect("4 bytes")),
            })
            .collect();
        let times: Vec<TimeEntry> = time_bytes
            .chunks_exact(TIME_ENTRY_LEN)
            .map(|c| TimeEntry {
                timestamp: i64::from_be_bytes(c[0..8].try_into().expect("8 bytes")),
                relative_offset: u32::from_be_bytes(c[8..12].try_into().expect("4 bytes")),
                position: u32::from_be_bytes(c[12..16].try_into().expect("4 bytes")),
            })
            .collect();
        let monotonic = offsets
            .windows(2)
            .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position)
            && times.windows(2).all(|w| w[0].timestamp < w[1].timestamp);
        let in_bounds = offsets.iter().all(|e| (e.position as u64) < segment_size)
            && times.iter().all(|e| (e.position as u64) < segment_size);
        if !monotonic || !in_bounds {
            return Ok(None);
        }
        Ok(Some(SegmentIndex { offsets, times }))
    }

    /// Records an offset-index entry.
    pub(crate) fn push_offset(&mut self, entry: OffsetEntry) {
        self.offsets.push(entry);
    }

    /// Records a time-index entry if it raises the largest timestamp indexed so far.
    pub(crate) fn push_time(&mut self, entry: TimeEntry) {
        if self
            .times
            .last()
            .is_some_and(|last| last.timestamp >= entry.timestamp)
        {
            return;
        }
        self.times.push(entry);
    }

    /// Writes both index files (replacing what they held) and fsyncs them. On failure
    /// they are removed (best effort): a segment without index files has them rebuilt at
    /// the next start, and one whose files are cut short is still read correctly (a load
    /// checks them against the segment, and a read scans on from the last entry), so
    /// the index files never stop a segment from being sealed.
    pub(crate) fn write_files(&self, offset_path: &Path, time_path: &Path) {
        let mut offsets = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_LEN);
        for entry in &self.offsets {
            offsets.extend_from_slice(&entry.relative_offset.to_be_bytes());
            offsets.extend_from_slice(&entry.position.to_be_bytes());
        }
        let mut times = Vec::with_capacity(self.times.len() * TIME_ENTRY_LEN);
        for entry in &self.times {
            times.extend_from_slice(&entry.timestamp.to_be_bytes());
            times.extend_from_slice(&entry.relative_offset.to_be_bytes());
            times.extend_from_slice(&entry.position.to_be_bytes());
        }
        let write = |path: &Path, bytes: &[u8]| -> io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)?;
            file.write_all(bytes)?;
            file.sync_data()
        };
        let written = write(offset_path, &offsets).and_then(|()| write(time_path, &times));
        if let Err(e) = written {
            tracing::warn!(path = %offset_path.display(), error = %e, "writing a sealed segment's index files failed; they are rebuilt at the next start");
            for path in [offset_path, time_path] {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Byte position from which to scan for `relative_offset`: the last indexed batch at or
    /// before it, or the segment start.
    pub(crate) fn position_for_offset(&self, relative_offset: u32) -> u64 {
        let idx = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        if idx == 0 {
            0
        } else {
            self.offsets[idx - 1].position as u64
        }
    }

    /// Byte position from which to scan for the first record with a timestamp at or after
    /// `timestamp`: every batch before the returned position has only older timestamps.
    pub(crate) fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        // Entries are (max timestamp so far, batch): all batches before the first entry whose
        // max reaches `timestamp` are older, so the scan starts at the entry before it.
        let idx = self.times.partition_point(|e| e.timestamp < timestamp);
        if idx == 0 {
            0
        } else {
            self.times[idx - 1].position as u64
        }
    }

    /// The newest time-index entry.
    pub(crate) fn last_time(&self) -> Option<TimeEntry> {
        self.times.last().copied()
    }

    /// Number of offset entries (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn offset_entries(&self) -> usize {
        self.offsets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_the_last_entry_at_or_before_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut idx = SegmentIndex::new();
        for (i, (off, pos)) in [(0u32, 0u32), (10, 4096), (20, 8192)]
            .into_iter()
            .enumerate()
        {
            idx.push_offset(OffsetEntry {
                relative_offset: off,
                position: pos,
            });
            idx.push_time(TimeEntry {
                timestamp: 100 * (i as i64 + 1),
                relative_offset: off,
                position: pos,
            });
        }
        assert_eq!(idx.position_for_offset(0), 0);
        assert_eq!(idx.position_for_offset(15), 4096);
        assert_eq!(idx.position_for_offset(25), 8192);
        assert_eq!(idx.position_for_timestamp(50), 0);
        assert_eq!(idx.position_for_timestamp(150), 0);
        assert_eq!(idx.position_for_timestamp(250), 4096);

        idx.write_files(&dir.path().join("a.index"), &dir.path().join("a.timeindex"));
        let loaded = SegmentIndex::load(
            &dir.path().join("a.index"),
            &dir.path().join("a.timeindex"),
            10_000,
        )
        .expect("load")
        .expect("consistent files");
        assert_eq!(loaded.offset_entries(), 3);
        assert_eq!(loaded.position_for_offset(15), 4096);
    }

    #[test]
    fn an_index_pointing_past_the_segment_is_not_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (o, t) = (dir.path().join("b.index"), dir.path().join("b.timeindex"));
        let mut idx = SegmentIndex::new();
        idx.push_offset(OffsetEntry {
            relative_offset: 5,
            position: 9000,
        });
        idx.write_files(&o, &t);
        assert!(SegmentIndex::load(&o, &t, 100).expect("load").is_none());
    }
}
