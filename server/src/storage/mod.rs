//! Durable storage of the embedded server: topics, each a set of partition logs on disk.
//!
//! Layout under the data directory:
//! `topics/<topic>/topic.json` (id, partition count, config overrides) and
//! `topics/<topic>/<partition>/{base_offset:020}.{log,index,timeindex}`.

pub(crate) mod batch;
pub(crate) mod blocking;
pub(crate) mod index;
pub(crate) mod open_files;
pub(crate) mod partition;
pub(crate) mod producer_state;
pub(crate) mod record_scan;
pub(crate) mod segment;
pub(crate) mod sync;
pub(crate) mod topic_config;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::open_files::OpenFiles;
use self::partition::Partition;
use crate::config::LogConfig;
use crate::durable::{sync_dir, write_durably};
use crate::error::ServerError;

/// What is persisted about a topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicMeta {
    id: Uuid,
    partitions: i32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

/// A topic and its partitions.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: String,
    pub(crate) id: Uuid,
    pub(crate) partitions: Vec<Arc<Partition>>,
}

impl Topic {
    /// A partition by index.
    pub(crate) fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// Why a topic could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateTopicError {
    /// The name is not a legal Kafka topic name.
    #[error("invalid topic name `{0}`: use 1-249 of [a-zA-Z0-9._-], not `.` or `..`")]
    InvalidName(String),
    /// A topic of that name exists.
    #[error("topic `{0}` already exists")]
    AlreadyExists(String),
    /// Partition count below one or above [`MAX_PARTITIONS`].
    #[error("number of partitions must be between 1 and {MAX_PARTITIONS}, got {0}")]
    InvalidPartitions(i32),
    /// A config override is unknown or has a bad value.
    #[error("{0}")]
    InvalidConfig(String),
    /// The files could not be written.
    #[error(transparent)]
    Storage(#[from] ServerError),
}

/// Most partitions a topic may have on this single node.
pub(crate) const MAX_PARTITIONS: i32 = 10_000;

/// Checks a topic name against Kafka's rules.
pub(crate) fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Every topic of the server.
///
/// The `topics` lock is only ever held for map lookups and changes, never across file
/// creation or removal, so produce and fetch never wait for another topic's disk work.
#[derive(Debug)]
pub(crate) struct LogStore {
    root: PathBuf,
    defaults: LogConfig,
    /// The segment files kept open, bounded (see [`open_files`]).
    files: Arc<OpenFiles>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Names of topics whose files are being created (reserved against a second create).
    creating: Mutex<HashSet<String>>,
}

/// Releases a name reserved in [`LogStore::creating`] when the create ends, however it ends.
struct Reservation<'a> {
    creating: &'a Mutex<HashSet<String>>,
    name: &'a str,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.creating.lock().remove(self.name);
    }
}

impl LogStore {
    /// Opens the store under `data_dir`, recovering every partition, with at most
    /// `max_open_files` segment files open at a time.
    pub(crate) fn open(
        data_dir: &Path,
        defaults: LogConfig,
        max_open_files: usize,
    ) -> Result<Self, ServerError> {
        let root = data_dir.join("topics");
        std::fs::create_dir_all(&root).map_err(|e| ServerError::storage(&root, e))?;
        let files = OpenFiles::with_root(max_open_files, &root)
            .map_err(|e| ServerError::storage(&root, e))?;
        let mut topics = HashMap::new();
        let entries = std::fs::read_dir(&root).map_err(|e| ServerError::storage(&root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ServerError::storage(&root, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(".deleting-") {
                std::fs::remove_dir_all(&path).map_err(|e| ServerError::storage(&path, e))?;
                continue;
            }
            let meta_path = path.join("topic.json");
            if !meta_path.exists() {
                // A create that did not finish: nothing was acknowledged for it.
                tracing::warn!(path = %path.display(), "removing incomplete topic directory");
                std::fs::remove_dir_all(&path).map_err(|e| ServerError::storage(&path, e))?;
                continue;
            }
            let raw = std::fs::read(&meta_path).map_err(|e| ServerError::storage(&meta_path, e))?;
            let meta: TopicMeta =
                serde_json::from_slice(&raw).map_err(|e| ServerError::InvalidMetadata {
                    path: meta_path.clone(),
                    reason: e.to_string(),
                })?;
            let config = topic_config::apply(&defaults, &meta.configs).map_err(|reason| {
                ServerError::InvalidMetadata {
                    path: meta_path.clone(),
                    reason,
                }
            })?;
            let topic = Self::open_topic(&path, name.clone(), &meta, config, &files)?;
            topics.insert(name, Arc::new(topic));
        }
        Ok(LogStore {
            root,
            defaults,
            files,
            topics: RwLock::new(topics),
            creating: Mutex::new(HashSet::new()),
        })
    }

    fn open_topic(
        dir: &Path,
        name: String,
        meta: &TopicMeta,
        config: LogConfig,
        files: &Arc<OpenFiles>,
    ) -> Result<Topic, ServerError> {
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for p in 0..meta.partitions {
            let pdir = dir.join(p.to_string());
            let partition = Partition::open(&pdir, config.clone(), files)
                .map_err(|e| ServerError::storage(&pdir, e))?;
            partitions.push(Arc::new(partition));
        }
        Ok(Topic {
            name,
            id: meta.id,
            partitions,
        })
    }

    /// A topic by name.
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    /// A topic by id.
    pub(crate) fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics.read().values().find(|t| t.id == id).cloned()
    }

    /// Every topic, sorted by name.
    pub(crate) fn topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.topics.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Checks a create request without creating anything.
    pub(crate) fn validate_create(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<LogConfig, CreateTopicError> {
        if !is_valid_topic_name(name) {
            return Err(CreateTopicError::InvalidName(name.to_owned()));
        }
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(CreateTopicError::InvalidPartitions(partitions));
        }
        if self.topics.read().contains_key(name) {
            return Err(CreateTopicError::AlreadyExists(name.to_owned()));
        }
        topic_config::apply(&self.defaults, configs).map_err(CreateTopicError::InvalidConfig)
    }

    /// Creates a topic; its metadata file is written last, so a crash leaves no half topic.
    /// The files are made off the async worker (see [`blocking`]) and without the topics
    /// lock: the name is reserved meanwhile, and the topic appears once it is complete.
    pub(crate) fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, CreateTopicError> {
        let config = self.validate_create(name, partitions, &configs)?;
        let _reservation = {
            let mut creating = self.creating.lock();
            if self.topics.read().contains_key(name) || !creating.insert(name.to_owned()) {
                return Err(CreateTopicError::AlreadyExists(name.to_owned()));
            }
            Reservation {
                creating: &self.creating,
                name,
            }
        };
        let meta = TopicMeta {
            id: Uuid::new_v4(),
            partitions,
            configs,
        };
        let topic = blocking::run(|| self.create_files(name, &meta, config))?;
        let topic = Arc::new(topic);
        self.topics.write().insert(name.to_owned(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Makes a new topic's directory, partitions and metadata file (blocking). On failure
    /// the directory is removed again (best effort; recovery removes what is left, as it
    /// has no metadata file).
    fn create_files(
        &self,
        name: &str,
        meta: &TopicMeta,
        config: LogConfig,
    ) -> Result<Topic, ServerError> {
        let dir = self.root.join(name);
        let made = (|| {
            std::fs::create_dir_all(&dir).map_err(|e| ServerError::storage(&dir, e))?;
            let topic = Self::open_topic(&dir, name.to_owned(), meta, config, &self.files)?;
            let meta_path = dir.join("topic.json");
            let body = serde_json::to_vec_pretty(meta).map_err(|e| {
                ServerError::storage(&meta_path, std::io::Error::other(e.to_string()))
            })?;
            // Written last (atomically), so a crash before it leaves no half topic.
            write_durably(&meta_path, &body).map_err(|e| ServerError::storage(&meta_path, e))?;
            sync_dir(&self.root).map_err(|e| ServerError::storage(&self.root, e))?;
            Ok(topic)
        })();
        if made.is_err() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a failed topic's directory");
            }
        }
        made
    }

    /// Deletes a topic and its data; `None` when there is no such topic. The topic is gone
    /// from the map at once; its directory is renamed away durably off the async worker
    /// (see [`blocking`]), and the files are removed by a background task (or, if the
    /// process stops first, at the next start).
    pub(crate) fn delete_topic(&self, name: &str) -> Result<Option<Arc<Topic>>, ServerError> {
        let Some(topic) = self.topics.write().remove(name) else {
            return Ok(None);
        };
        let dir = self.root.join(name);
        let doomed = self.root.join(format!(".deleting-{}", Uuid::new_v4()));
        let renamed = blocking::run(|| {
            std::fs::rename(&dir, &doomed).map_err(|e| ServerError::storage(&dir, e))?;
            sync_dir(&self.root).map_err(|e| ServerError::storage(&self.root, e))
        });
        if let Err(e) = renamed {
            if doomed.exists() {
                // Renamed but not known to be durable: the topic is gone either way.
                tracing::warn!(topic = name, error = %e, "deleted topic; its removal may not survive a crash");
            } else {
                // Nothing changed on disk: the topic stays.
                self.topics.write().entry(name.to_owned()).or_insert(topic);
                return Err(e);
            }
        }
        let remove = move || {
            if let Err(e) = std::fs::remove_dir_all(&doomed) {
                tracing::warn!(dir = %doomed.display(), error = %e, "removing a deleted topic's files failed; retried at the next start");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(Some(topic))
    }

    /// The bounded set of open segment files.
    pub(crate) fn open_files(&self) -> &OpenFiles {
        &self.files
    }

    /// Every partition of every topic.
    pub(crate) fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics
            .read()
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }
}

/// An exclusive lock on a data directory, so two servers never write the same files.
/// Released when dropped, or by the OS when the process dies.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the lock on `data_dir/lock`, failing at once if another server holds it.
    pub(crate) fn acquire(data_dir: &Path) -> Result<Self, ServerError> {
        let path = data_dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ServerError::storage(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::Config(format!(
                "data directory {} is in use by another steadfast server",
                data_dir.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(ServerError::storage(&path, e)),
        }
    }
}
