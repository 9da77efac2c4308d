//! Two-phase deduplication of message ids in process memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::store::{DedupStore, Reservation, StoreError};

#[derive(Debug)]
enum Entry {
    Reserved { owner: String, until: Instant },
    Completed { until: Instant },
}

/// [`DedupStore`] in process memory; expired entries are swept as the map grows.
#[derive(Debug, Default)]
pub struct MemoryDedupStore {
    ids: Mutex<HashMap<String, Entry>>,
}

impl MemoryDedupStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn sweep(ids: &mut HashMap<String, Entry>, now: Instant) {
    ids.retain(|_, e| match e {
        Entry::Reserved { until, .. } | Entry::Completed { until } => *until > now,
    });
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn reserve(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Reservation, StoreError> {
        let now = Instant::now();
        let mut ids = self.ids.lock();
        if ids.len() >= 4096 && ids.len().is_power_of_two() {
            sweep(&mut ids, now);
        }
        match ids.get(id) {
            Some(Entry::Completed { until }) if *until > now => Ok(Reservation::Completed),
            Some(Entry::Reserved { owner: held, until }) if *until > now && held != owner => {
                Ok(Reservation::InProgress)
            }
            _ => {
                ids.insert(
                    id.to_owned(),
                    Entry::Reserved {
                        owner: owner.to_owned(),
                        until: now + lease,
                    },
                );
                Ok(Reservation::Reserved)
            }
        }
    }

    async fn complete(&self, id: &str, _owner: &str, ttl: Duration) -> Result<(), StoreError> {
        let until = Instant::now() + ttl;
        self.ids
            .lock()
            .insert(id.to_owned(), Entry::Completed { until });
        Ok(())
    }

    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        let mut ids = self.ids.lock();
        if matches!(ids.get(id), Some(Entry::Reserved { owner: held, .. }) if held == owner) {
            ids.remove(id);
        }
        Ok(())
    }
}
