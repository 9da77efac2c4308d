//! A bounded set of open segment files, so the descriptors the storage holds do not grow
//! with the number of partitions: a segment's log file is opened when it is used, and the
//! least recently used one is closed when more than the limit are open.
//!
//! Closing a file loses nothing. Data written through one descriptor stays in the page
//! cache, and an fsync through a later descriptor of the same file makes it durable: Linux
//! writes back and reports errors per file, not per descriptor (a write-back error that no
//! descriptor has seen yet is reported to the next fsync, even through a descriptor opened
//! after it; since Linux 4.16). A reader that took a file just before it was closed here
//! keeps that descriptor until it is done, so the limit can be passed briefly by the reads
//! in flight.
//!
//! Every method is called under the lock of the partition that owns the segment, so a
//! segment's file is never opened again after the segment is dropped.
//!
//! The set also holds one descriptor on the store's root directory for the life of the
//! store: batched syncs (see [`super::sync`]) sync the file system through it, and since
//! it stays open, `syncfs` on it reports every write-back error on that file system since
//! the store opened, whoever else has seen it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

/// Fewest files kept open, whatever the limit asked for.
pub(crate) const MIN_OPEN_FILES: usize = 16;

/// The open segment files of a store, at most `capacity` of them, least recently used
/// closed first.
#[derive(Debug)]
pub(crate) struct OpenFiles {
    /// Unbounded to the `lru` crate (which would allocate room for `capacity` entries at
    /// once); bounded by [`Self::insert`].
    cache: Mutex<LruCache<u64, Arc<File>>>,
    capacity: usize,
    next_id: AtomicU64,
    /// Files opened again after they had been closed.
    opens: AtomicU64,
    /// The store's root directory and its device, when known.
    root: Option<(u64, Arc<File>)>,
}

impl OpenFiles {
    /// Keeps at most `capacity` files open (at least [`MIN_OPEN_FILES`]), with no root
    /// directory (so no batched syncs).
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self::bounded(capacity, None))
    }

    /// Keeps at most `capacity` files open (at least [`MIN_OPEN_FILES`]) and the root
    /// directory `root` of the store.
    pub(crate) fn with_root(capacity: usize, root: &Path) -> io::Result<Arc<Self>> {
        let dir = File::open(root)?;
        let device = dir.metadata()?.dev();
        Ok(Arc::new(Self::bounded(
            capacity,
            Some((device, Arc::new(dir))),
        )))
    }

    fn bounded(capacity: usize, root: Option<(u64, Arc<File>)>) -> Self {
        OpenFiles {
            cache: Mutex::new(LruCache::unbounded()),
            capacity: capacity.max(MIN_OPEN_FILES),
            next_id: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            root,
        }
    }

    /// The root directory, if it is on `device`: a file to sync that file system through.
    pub(crate) fn root_on(&self, device: u64) -> Option<Arc<File>> {
        self.root
            .as_ref()
            .filter(|(d, _)| *d == device)
            .map(|(_, file)| file.clone())
    }

    /// Most files kept open.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Files open now (held by the cache).
    pub(crate) fn open_now(&self) -> usize {
        self.cache.lock().len()
    }

    /// Files opened again after they had been closed, since the start.
    #[cfg(test)]
    pub(crate) fn reopens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    /// Adds a file just opened; the least recently used one is closed if the set is full
    /// (outside the lock).
    fn insert(&self, id: u64, file: Arc<File>) -> Arc<File> {
        let evicted = {
            let mut cache = self.cache.lock();
            if let Some(open) = cache.get(&id) {
                return open.clone();
            }
            cache.put(id, file.clone());
            (cache.len() > self.capacity)
                .then(|| cache.pop_lru())
                .flatten()
        };
        drop(evicted);
        file
    }

    /// The open file `id`, opened from `path` if it is not open.
    fn get(&self, id: u64, path: &Path) -> io::Result<Arc<File>> {
        if let Some(file) = self.cache.lock().get(&id) {
            return Ok(file.clone());
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        self.opens.fetch_add(1, Ordering::Relaxed);
        Ok(self.insert(id, Arc::new(file)))
    }

    /// Closes file `id` if it is open (its segment is gone).
    fn forget(&self, id: u64) {
        let closed = self.cache.lock().pop(&id);
        drop(closed);
    }
}

/// The log file of one segment, open while it is in use (see the module comment).
#[derive(Debug)]
pub(crate) struct SegmentFile {
    id: u64,
    path: PathBuf,
    files: Arc<OpenFiles>,
}

impl SegmentFile {
    /// Creates the file at `path`, empty (an existing file is truncated).
    pub(crate) fn create(files: &Arc<OpenFiles>, path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        Ok(Self::adopt(files, path, file))
    }

    /// Opens the existing file at `path`.
    pub(crate) fn open(files: &Arc<OpenFiles>, path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        Ok(Self::adopt(files, path, file))
    }

    fn adopt(files: &Arc<OpenFiles>, path: PathBuf, file: File) -> Self {
        let id = files.next_id.fetch_add(1, Ordering::Relaxed);
        files.insert(id, Arc::new(file));
        SegmentFile {
            id,
            path,
            files: files.clone(),
        }
    }

    /// The open file, opened again if it was closed.
    pub(crate) fn get(&self) -> io::Result<Arc<File>> {
        self.files.get(self.id, &self.path)
    }

    /// Where the file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        self.files.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt as _;

    use super::*;

    #[test]
    fn no_more_than_the_limit_stay_open_and_closed_files_reopen_with_their_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = OpenFiles::new(MIN_OPEN_FILES);
        let segments: Vec<SegmentFile> = (0..MIN_OPEN_FILES * 4)
            .map(|i| {
                let segment = SegmentFile::create(&files, dir.path().join(format!("{i}.log")))
                    .expect("create");
                segment
                    .get()
                    .expect("open")
                    .write_all_at(format!("segment {i}").as_bytes(), 0)
                    .expect("write");
                segment
            })
            .collect();
        assert_eq!(files.open_now(), MIN_OPEN_FILES, "the oldest were closed");
        // The first segment's file was closed long ago: it opens again with its data.
        let mut buf = [0u8; 9];
        segments[0]
            .get()
            .expect("reopen")
            .read_exact_at(&mut buf, 0)
            .expect("read");
        assert_eq!(&buf, b"segment 0");
        assert!(files.reopens() >= 1);
        assert_eq!(files.open_now(), MIN_OPEN_FILES);
        // Dropping segments closes their files.
        drop(segments);
        assert_eq!(files.open_now(), 0);
    }
}
