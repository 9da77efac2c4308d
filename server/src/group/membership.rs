//! Durable membership of consumer groups, so that a restarted server (even after SIGKILL)
//! lets members carry on in their generation instead of handing every partition to the
//! first member back while the others still consume theirs.
//!
//! What is written: one file per group, `<data-dir>/groups/members/<sha256 of the group
//! id>.json`, holding a [`GroupRecord`] (generation, protocol type and name, leader, and per
//! member its ids, client id and host, timeouts, subscription metadata and assignment).
//! Each write replaces the file atomically and durably ([`write_durably`]).
//!
//! When: when a group becomes Stable (the leader's assignment is in: the SyncGroup answers
//! wait until the record is on disk, as Kafka's do; if the write fails they get
//! COORDINATOR_NOT_AVAILABLE and the group rebalances), when a static member takes over
//! its place in a Stable group (its JoinGroup answer waits likewise), when a group becomes
//! Empty (it keeps its generation), and the file is removed when a group is deleted or
//! forgotten. Nothing is written while a group rebalances: a group that was mid-rebalance at
//! a crash comes back as its last Stable (or Empty) state. Its members then meet the usual
//! answers: a member that had joined the newer generation gets ILLEGAL_GENERATION and
//! rejoins, a member the record does not know gets UNKNOWN_MEMBER_ID, and a rejoin that
//! starts a rebalance makes the others rejoin via REBALANCE_IN_PROGRESS.
//!
//! On start every record is loaded: a Stable group keeps its generation, leader, members and
//! assignments, and every member's session starts afresh then (a member that died with the
//! server is expired after its session timeout, and a normal rebalance follows). A file that
//! cannot be read, parsed, is of another format version or does not make a consistent group
//! is logged, moved aside (`.unreadable`), and its group starts empty; committed offsets are
//! in a file of their own (`offsets.log`) and are never touched by this.
//!
//! Writes are staged in memory under the coordinator's lock (so they are ordered as the
//! changes were) and written by [`MembershipStore::flush`] on a blocking thread.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::record::{GroupRecord, RecordHeader, FORMAT_VERSION};
use crate::durable::{sync_dir, write_durably};

/// Why a group's membership record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MembershipError {
    /// The file could not be read, written or removed.
    #[error("{path}: {source}")]
    Io {
        /// The record's file.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// The file is not a record (torn, damaged, or not ours).
    #[error("{path}: not a group membership record: {reason}")]
    Unreadable {
        /// The record's file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The record is of a format version this server does not read.
    #[error("{path}: format version {version}, this server reads version {FORMAT_VERSION}")]
    UnknownVersion {
        /// The record's file.
        path: PathBuf,
        /// The version it names.
        version: u32,
    },
    /// The record parses but does not make a consistent group.
    #[error("{path}: inconsistent group membership: {reason}")]
    Inconsistent {
        /// The record's file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The groups whose records a [`MembershipStore::flush`] could not write.
#[derive(Debug, Default)]
pub(crate) struct FlushFailures(HashMap<String, MembershipError>);

impl FlushFailures {
    /// Whether the group's record, as staged before the flush began, is on disk.
    pub(crate) fn written(&self, group_id: &str) -> bool {
        !self.0.contains_key(group_id)
    }
}

/// The membership records of every group, on disk under `<data-dir>/groups/members`.
#[derive(Debug)]
pub(crate) struct MembershipStore {
    dir: PathBuf,
    /// Records waiting to be written, the newest per group (`None`: remove the group's).
    staged: Mutex<HashMap<String, Option<GroupRecord>>>,
    /// Held while writing, so that records reach the disk in the order they were staged.
    writing: Mutex<()>,
}

/// A group's file name: the id hashed, as ids may hold any character and be long.
fn file_name(group_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, group_id.as_bytes());
    let mut name: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    name.push_str(".json");
    name
}

impl MembershipStore {
    /// Opens the store under `data_dir` and reads every record in it. Unreadable records are
    /// logged and moved aside; only a failure to create or list the directory is an error.
    pub(crate) fn open(data_dir: &Path) -> io::Result<(Self, Vec<GroupRecord>)> {
        let dir = data_dir.join("groups").join("members");
        std::fs::create_dir_all(&dir)?;
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {}
                // A write cut short by a crash; the record it was replacing is intact.
                Some("tmp") => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "could not remove a leftover temporary file");
                    }
                    continue;
                }
                _ => continue,
            }
            match read_record(&path) {
                Ok(record) => records.push(record),
                Err(e) => {
                    tracing::error!(error = %e, "group membership record unreadable: the group starts empty (its committed offsets are kept); the file is moved aside");
                    let mut aside = path.clone().into_os_string();
                    aside.push(".unreadable");
                    if let Err(e) = std::fs::rename(&path, &aside) {
                        tracing::warn!(path = %path.display(), error = %e, "could not move the unreadable record aside");
                    }
                }
            }
        }
        let store = MembershipStore {
            dir,
            staged: Mutex::new(HashMap::new()),
            writing: Mutex::new(()),
        };
        Ok((store, records))
    }

    /// Stages a group's record (`None`: the group is gone), replacing any not yet written;
    /// [`Self::flush`] writes it.
    pub(crate) fn stage(&self, group_id: &str, record: Option<GroupRecord>) {
        self.staged.lock().insert(group_id.to_owned(), record);
    }

    /// Whether records wait to be written (a failed write is staged again for a retry).
    pub(crate) fn has_staged(&self) -> bool {
        !self.staged.lock().is_empty()
    }

    /// Writes every staged record (blocking: call it on a blocking thread). A record that
    /// fails is logged and staged again, unless a newer one was staged meanwhile.
    pub(crate) fn flush(&self) -> FlushFailures {
        let _writing = self.writing.lock();
        let batch = std::mem::take(&mut *self.staged.lock());
        let mut failures = FlushFailures::default();
        for (group_id, record) in batch {
            if let Err(e) = self.write(&group_id, record.as_ref()) {
                tracing::error!(group = %group_id, error = %e, "writing the group's membership failed; a restart would restore an older state of it");
                self.staged.lock().entry(group_id.clone()).or_insert(record);
                failures.0.insert(group_id, e);
            }
        }
        failures
    }

    /// Writes (or removes) one group's file.
    fn write(&self, group_id: &str, record: Option<&GroupRecord>) -> Result<(), MembershipError> {
        let path = self.dir.join(file_name(group_id));
        let io_error = |source| MembershipError::Io {
            path: path.clone(),
            source,
        };
        match record {
            Some(record) => {
                let body = serde_json::to_vec(record).map_err(|e| MembershipError::Io {
                    path: path.clone(),
                    source: io::Error::other(e),
                })?;
                write_durably(&path, &body).map_err(io_error)
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => sync_dir(&self.dir).map_err(io_error),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(e)),
            },
        }
    }
}

/// Reads one record file.
fn read_record(path: &Path) -> Result<GroupRecord, MembershipError> {
    let body = std::fs::read(path).map_err(|source| MembershipError::Io {
        path: path.to_owned(),
        source,
    })?;
    let unreadable = |e: serde_json::Error| MembershipError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let header: RecordHeader = serde_json::from_slice(&body).map_err(unreadable)?;
    if header.version != FORMAT_VERSION {
        return Err(MembershipError::UnknownVersion {
            path: path.to_owned(),
            version: header.version,
        });
    }
    let record: GroupRecord = serde_json::from_slice(&body).map_err(unreadable)?;
    if path.file_name().and_then(|n| n.to_str()) != Some(file_name(&record.group_id).as_str()) {
        return Err(MembershipError::Inconsistent {
            path: path.to_owned(),
            reason: format!("the file is not named after group {}", record.group_id),
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_group(id: &str, generation: i32) -> GroupRecord {
        GroupRecord {
            version: FORMAT_VERSION,
            group_id: id.to_owned(),
            generation,
            protocol_type: Some("consumer".to_owned()),
            protocol_name: None,
            leader: None,
            members: Vec::new(),
        }
    }

    #[test]
    fn staged_records_are_written_replaced_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, loaded) = MembershipStore::open(dir.path()).expect("open");
        assert!(loaded.is_empty());
        store.stage("a", Some(empty_group("a", 1)));
        store.stage("a", Some(empty_group("a", 2)));
        store.stage("b/with:odd chars", Some(empty_group("b/with:odd chars", 3)));
        store.stage("c", Some(empty_group("c", 4)));
        assert!(store.flush().written("a"));
        store.stage("c", None);
        assert!(store.flush().written("c"));
        assert!(!store.has_staged());
        drop(store);
        let (_, mut loaded) = MembershipStore::open(dir.path()).expect("reopen");
        loaded.sort_by(|x, y| x.group_id.cmp(&y.group_id));
        assert_eq!(
            loaded,
            vec![empty_group("a", 2), empty_group("b/with:odd chars", 3)]
        );
    }

    #[test]
    fn unreadable_records_and_other_versions_are_skipped_and_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = MembershipStore::open(dir.path()).expect("open");
        for id in ["torn", "future", "kept"] {
            store.stage(id, Some(empty_group(id, 1)));
        }
        store.flush();
        let members = dir.path().join("groups").join("members");
        let torn = members.join(file_name("torn"));
        let body = std::fs::read(&torn).expect("read");
        std::fs::write(&torn, &body[..body.len() / 2]).expect("tear");
        let future = members.join(file_name("future"));
        let mut record = empty_group("future", 1);
        record.version = FORMAT_VERSION + 1;
        std::fs::write(&future, serde_json::to_vec(&record).expect("json")).expect("write");
        std::fs::write(members.join("leftover.json.tmp"), b"{").expect("write");

        let (_, loaded) = MembershipStore::open(dir.path()).expect("reopen");
        assert_eq!(loaded, vec![empty_group("kept", 1)]);
        assert!(!torn.exists() && !future.exists(), "moved aside");
        assert!(!members.join("leftover.json.tmp").exists());
        let (_, again) = MembershipStore::open(dir.path()).expect("reopen again");
        assert_eq!(again.len(), 1, "reported once");
    }
}
