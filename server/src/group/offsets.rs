//! Durable committed offsets of consumer groups.
//!
//! Commits are appended as JSON lines to `<data-dir>/groups/offsets.log` and fsynced before
//! the commit is acknowledged (group commit). On start the log is read — a torn last line
//! from a crash is ignored — and compacted: rewritten with only the latest offset of every
//! group/topic/partition, then swapped in with an atomic rename.
//!
//! Disk errors: a failed append is cut from the file again, so the log never holds a torn
//! line followed by good ones (the map is only changed after a write succeeds). After a
//! failed fsync the file's unsynced tail is unknown, so the next append first rewrites the
//! whole log from the map (the same compaction as at start); until that succeeds, commits
//! are refused.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::durable::write_durably;
use crate::storage::sync::SyncTarget;

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommittedOffset {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: Option<String>,
    /// When it was committed, ms since the epoch.
    pub(crate) commit_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum LogEntry {
    Commit {
        group: String,
        topic: String,
        partition: i32,
        #[serde(flatten)]
        committed: CommittedOffset,
    },
    DeleteGroup {
        group: String,
    },
}

type GroupOffsets = BTreeMap<(String, i32), CommittedOffset>;

/// The open offsets log.
#[derive(Debug)]
struct LogFile {
    file: Arc<File>,
    /// Bytes of whole lines in the file.
    len: u64,
    /// An fsync failed or a failed write could not be cut: rewrite before appending.
    needs_rewrite: bool,
}

/// The committed offsets of every group.
#[derive(Debug)]
pub(crate) struct OffsetStore {
    path: PathBuf,
    file: Mutex<LogFile>,
    offsets: Mutex<HashMap<String, GroupOffsets>>,
}

/// Every offset of `offsets` as log lines.
fn compacted(offsets: &HashMap<String, GroupOffsets>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (group, entries) in offsets {
        for ((topic, partition), committed) in entries {
            let entry = LogEntry::Commit {
                group: group.clone(),
                topic: topic.clone(),
                partition: *partition,
                committed: committed.clone(),
            };
            serde_json::to_writer(&mut out, &entry).map_err(io::Error::other)?;
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// Replaces the log at `path` with `body` and opens it for appending.
fn rewrite(path: &Path, body: &[u8]) -> io::Result<LogFile> {
    write_durably(path, body)?;
    let file = OpenOptions::new().append(true).open(path)?;
    Ok(LogFile {
        file: Arc::new(file),
        len: body.len() as u64,
        needs_rewrite: false,
    })
}

impl OffsetStore {
    /// Loads and compacts the offsets log under `data_dir/groups`.
    pub(crate) fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("groups");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("offsets.log");
        let mut offsets: HashMap<String, GroupOffsets> = HashMap::new();
        if path.exists() {
            let reader = BufReader::new(File::open(&path)?);
            for (n, line) in reader.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<LogEntry>(&line) {
                    Ok(LogEntry::Commit {
                        group,
                        topic,
                        partition,
                        committed,
                    }) => {
                        offsets
                            .entry(group)
                            .or_default()
                            .insert((topic, partition), committed);
                    }
                    Ok(LogEntry::DeleteGroup { group }) => {
                        offsets.remove(&group);
                    }
                    Err(e) => {
                        // Only a torn final line is expected (a crash mid-append).
                        tracing::warn!(line = n + 1, error = %e, "ignoring unreadable offsets log line");
                    }
                }
            }
        }
        let file = rewrite(&path, &compacted(&offsets)?)?;
        Ok(OffsetStore {
            path,
            file: Mutex::new(file),
            offsets: Mutex::new(offsets),
        })
    }

    /// Appends entries and applies them to the in-memory map while holding the file lock,
    /// so memory and disk agree on the order of concurrent changes.
    fn append(&self, entries: &[LogEntry]) -> io::Result<()> {
        let mut buf = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut buf, entry).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let mut log = self.file.lock();
        let mut offsets = self.offsets.lock();
        if log.needs_rewrite {
            let body = compacted(&offsets)?;
            *log = crate::storage::blocking::run(|| rewrite(&self.path, &body))?;
            tracing::info!(path = %self.path.display(), "rewrote the offsets log after a disk error");
        }
        if let Err(e) = (&*log.file).write_all(&buf) {
            // Cut the torn line, or rewrite the whole log before the next append.
            log.needs_rewrite = log.file.set_len(log.len).is_err();
            return Err(e);
        }
        log.len += buf.len() as u64;
        for entry in entries {
            match entry {
                LogEntry::Commit {
                    group,
                    topic,
                    partition,
                    committed,
                } => {
                    offsets
                        .entry(group.clone())
                        .or_default()
                        .insert((topic.clone(), *partition), committed.clone());
                }
                LogEntry::DeleteGroup { group } => {
                    offsets.remove(group);
                }
            }
        }
        Ok(())
    }

    /// Records commits; the store is then to be fsynced (as a [`SyncTarget`]) before
    /// acknowledging.
    pub(crate) fn commit(
        &self,
        group: &str,
        commits: Vec<(String, i32, CommittedOffset)>,
    ) -> io::Result<()> {
        let entries: Vec<LogEntry> = commits
            .iter()
            .map(|(topic, partition, committed)| LogEntry::Commit {
                group: group.to_owned(),
                topic: topic.clone(),
                partition: *partition,
                committed: committed.clone(),
            })
            .collect();
        self.append(&entries)
    }

    /// The committed offset of one partition.
    pub(crate) fn get(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.offsets
            .lock()
            .get(group)?
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// Every committed offset of a group.
    pub(crate) fn all(&self, group: &str) -> Vec<(String, i32, CommittedOffset)> {
        self.offsets
            .lock()
            .get(group)
            .map(|entries| {
                entries
                    .iter()
                    .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Groups that have committed offsets, with their newest commit time.
    pub(crate) fn groups(&self) -> Vec<(String, i64)> {
        self.offsets
            .lock()
            .iter()
            .map(|(g, entries)| {
                (
                    g.clone(),
                    entries.values().map(|c| c.commit_ms).max().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Whether a group has committed offsets.
    pub(crate) fn has_group(&self, group: &str) -> bool {
        self.offsets.lock().contains_key(group)
    }

    /// Forgets a group's offsets; durable once the store is next fsynced.
    pub(crate) fn delete_group(&self, group: &str) -> io::Result<()> {
        if !self.has_group(group) {
            return Ok(());
        }
        self.append(&[LogEntry::DeleteGroup {
            group: group.to_owned(),
        }])
    }
}

impl SyncTarget for OffsetStore {
    fn sync_now(&self) -> io::Result<()> {
        let file = self.file.lock().file.clone();
        file.sync_data().inspect_err(|e| {
            tracing::error!(path = %self.path.display(), error = %e, "fsync of the offsets log failed; it is rewritten before the next commit");
            self.file.lock().needs_rewrite = true;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(offset: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: Some("m".into()),
            commit_ms: 1,
        }
    }

    #[test]
    fn offsets_survive_reopen_and_the_log_is_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = OffsetStore::open(dir.path()).expect("open");
            for o in 0..100 {
                store
                    .commit("g", vec![("t".into(), 0, committed(o))])
                    .expect("commit");
            }
            store
                .commit("gone", vec![("t".into(), 1, committed(5))])
                .expect("commit");
            store.delete_group("gone").expect("delete");
            store.sync_now().expect("sync");
        }
        // A torn line at the end (crash mid-append) is ignored.
        let log = dir.path().join("groups").join("offsets.log");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(b"{\"op\":\"commit\",\"gro"))
            .expect("append torn line");
        let store = OffsetStore::open(dir.path()).expect("reopen");
        assert_eq!(store.get("g", "t", 0), Some(committed(99)));
        assert_eq!(store.get("gone", "t", 1), None);
        let lines = std::fs::read_to_string(&log).expect("read").lines().count();
        assert_eq!(lines, 1, "compacted to the latest entry");
    }
}
