//! The last applied version per key in process memory.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::store::{StoreError, VersionStore};

/// [`VersionStore`] in process memory.
#[derive(Debug, Default)]
pub struct MemoryVersionStore {
    versions: Mutex<HashMap<String, i64>>,
}

impl MemoryVersionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl VersionStore for MemoryVersionStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.versions.lock().get(key).copied())
    }

    async fn advance(&self, key: &str, version: i64) -> Result<bool, StoreError> {
        let mut versions = self.versions.lock();
        match versions.get_mut(key) {
            Some(stored) if *stored >= version => Ok(false),
            Some(stored) => {
                *stored = version;
                Ok(true)
            }
            None => {
                versions.insert(key.to_owned(), version);
                Ok(true)
            }
        }
    }
}
