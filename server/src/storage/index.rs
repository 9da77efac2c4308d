//! Sparse indexes of a segment: offset → file position, and timestamp → offset.
//!
//! Both are kept in memory and appended to files beside the segment
//! (`{base_offset:020}.index`, 8-byte entries; `{base_offset:020}.timeindex`, 12-byte
//! entries). Recovery rebuilds them from the segment whenever they do not match it.

use std::fs::{File, OpenOptions};
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

/// The sparse indexes of one segment, mirrored to their files.
#[derive(Debug)]
pub(crate) struct SegmentIndex {
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    /// Open while the segment is active; sealed segments keep only the in-memory entries,
    /// so they hold no file descriptors for their indexes.
    files: Option<(File, File)>,
    /// Set when writing an index file failed: the files are no longer mirrored (recovery
    /// rebuilds them) while the in-memory entries, which reads use, stay complete.
    files_failed: bool,
}

const OFFSET_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 16;

impl SegmentIndex {
    /// Creates empty index files (truncating any existing ones).
    pub(crate) fn create(offset_path: &Path, time_path: &Path) -> io::Result<Self> {
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(p)
        };
        Ok(SegmentIndex {
            offsets: Vec::new(),
            times: Vec::new(),
            files: Some((open(offset_path)?, open(time_path)?)),
            files_failed: false,
        })
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
        Ok(Some(SegmentIndex {
            offsets,
            times,
            files: None,
            files_failed: false,
        }))
    }

    /// Records an offset-index entry. A failed file write does not fail the caller: the
    /// entry is kept in memory and the files stop being mirrored (see [`Self::mirror`]).
    pub(crate) fn push_offset(&mut self, entry: OffsetEntry) {
        let mut buf = [0u8; OFFSET_ENTRY_LEN];
        buf[0..4].copy_from_slice(&entry.relative_offset.to_be_bytes());
        buf[4..8].copy_from_slice(&entry.position.to_be_bytes());
        self.mirror(|(offsets, _)| offsets.write_all(&buf));
        self.offsets.push(entry);
    }

    /// Records a time-index entry if it raises the largest timestamp indexed so far (a
    /// failed file write is handled as in [`Self::push_offset`]).
    pub(crate) fn push_time(&mut self, entry: TimeEntry) {
        if self
            .times
            .last()
            .is_some_and(|last| last.timestamp >= entry.timestamp)
        {
            return;
        }
        let mut buf = [0u8; TIME_ENTRY_LEN];
        buf[0..8].copy_from_slice(&entry.timestamp.to_be_bytes());
        buf[8..12].copy_from_slice(&entry.relative_offset.to_be_bytes());
        buf[12..16].copy_from_slice(&entry.position.to_be_bytes());
        self.mirror(|(_, times)| times.write_all(&buf));
        self.times.push(entry);
    }

    /// Writes to the index files unless an earlier write failed. On failure both files are
    /// cut back to their whole entries (best effort) and no longer written: a segment whose
    /// index files are short or empty is rebuilt by recovery, so the index files never
    /// stop an append.
    fn mirror(&mut self, write: impl FnOnce(&mut (File, File)) -> io::Result<()>) {
        if self.files_failed {
            return;
        }
        let Some(files) = self.files.as_mut() else {
            return;
        };
        if let Err(e) = write(files) {
            tracing::warn!(error = %e, "index file write failed; the index will be rebuilt on recovery");
            self.files_failed = true;
            let _ = files
                .0
                .set_len((self.offsets.len() * OFFSET_ENTRY_LEN) as u64);
            let _ = files.1.set_len((self.times.len() * TIME_ENTRY_LEN) as u64);
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

    /// Flushes both index files to stable storage.
    pub(crate) fn sync(&self) -> io::Result<()> {
        if let Some((offsets, times)) = &self.files {
            offsets.sync_data()?;
            times.sync_data()?;
        }
        Ok(())
    }

    /// Syncs and closes the index files: the segment takes no more appends. Files that
    /// stopped being mirrored are emptied, so loading them later rebuilds the index.
    pub(crate) fn close(&mut self) -> io::Result<()> {
        if self.files_failed {
            if let Some((offsets, times)) = &self.files {
                offsets.set_len(0)?;
                times.set_len(0)?;
            }
        }
        self.sync()?;
        self.files = None;
        Ok(())
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
        let mut idx =
            SegmentIndex::create(&dir.path().join("a.index"), &dir.path().join("a.timeindex"))
                .expect("create");
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
        let mut idx = SegmentIndex::create(&o, &t).expect("create");
        idx.push_offset(OffsetEntry {
            relative_offset: 5,
            position: 9000,
        });
        assert!(SegmentIndex::load(&o, &t, 100).expect("load").is_none());
    }
}
