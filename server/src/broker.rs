//! The state every request handler shares: configuration, storage, identity of this node,
//! and the producer-id allocator.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::ServerConfig;
use crate::durable::write_durably;
use crate::error::ServerError;
use crate::group::GroupCoordinator;
use crate::storage::sync::Syncer;
use crate::storage::LogStore;

/// The node id of the single embedded broker.
pub(crate) const NODE_ID: i32 = 0;

/// Shared state of a running server.
#[derive(Debug)]
pub(crate) struct Broker {
    pub(crate) config: ServerConfig,
    pub(crate) store: LogStore,
    pub(crate) syncer: Syncer,
    /// Host and port of the main listener, for requests that come through none.
    pub(crate) advertised: (String, u16),
    /// The users file, when authentication and rights are on.
    pub(crate) users: Option<std::sync::Arc<crate::auth::UserDirectory>>,
    pub(crate) cluster_id: String,
    pub(crate) producer_ids: ProducerIdAllocator,
    pub(crate) groups: GroupCoordinator,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClusterMeta {
    cluster_id: String,
}

/// Loads the cluster id from the data directory, creating it on first start.
pub(crate) fn load_cluster_id(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("cluster.json");
    if path.exists() {
        let raw = std::fs::read(&path).map_err(|e| ServerError::storage(&path, e))?;
        let meta: ClusterMeta =
            serde_json::from_slice(&raw).map_err(|e| ServerError::InvalidMetadata {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        return Ok(meta.cluster_id);
    }
    let meta = ClusterMeta {
        cluster_id: format!("steadfast-{}", uuid::Uuid::new_v4().simple()),
    };
    let body = serde_json::to_vec(&meta).expect("cluster metadata serializes");
    write_durably(&path, &body).map_err(|e| ServerError::storage(&path, e))?;
    Ok(meta.cluster_id)
}

/// Hands out producer ids that are never reused, across restarts: ids are reserved in
/// blocks whose upper end is persisted before any id of the block is given out.
#[derive(Debug)]
pub(crate) struct ProducerIdAllocator {
    path: PathBuf,
    state: Mutex<(i64, i64)>,
}

const PRODUCER_ID_BLOCK: i64 = 1000;

impl ProducerIdAllocator {
    /// Loads the allocator state from `data_dir/producer_ids`.
    pub(crate) fn load(data_dir: &Path) -> Result<Self, ServerError> {
        let path = data_dir.join("producer_ids");
        let reserved_until = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|e| ServerError::InvalidMetadata {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(ServerError::storage(&path, e)),
        };
        Ok(ProducerIdAllocator {
            path,
            state: Mutex::new((reserved_until, reserved_until)),
        })
    }

    /// The next unused producer id.
    pub(crate) fn next(&self) -> std::io::Result<i64> {
        let mut state = self.state.lock();
        let (next, reserved_until) = *state;
        if next >= reserved_until {
            let new_end = reserved_until + PRODUCER_ID_BLOCK;
            write_durably(&self.path, new_end.to_string().as_bytes())?;
            state.1 = new_end;
        }
        state.0 = next + 1;
        Ok(next)
    }
}
