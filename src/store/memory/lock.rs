//! A lease lock per key in process memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::store::{LockStore, StoreError};

#[derive(Debug, Default)]
struct KeyLock {
    /// The last token granted (tokens of a key grow by one per grant).
    last_token: u64,
    /// The running lease: its token and when it expires.
    lease: Option<(u64, Instant)>,
    /// The largest token a fencing check accepted.
    fenced: u64,
}

/// [`LockStore`] in process memory.
#[derive(Debug, Default)]
pub struct MemoryLockStore {
    keys: Mutex<HashMap<String, KeyLock>>,
}

impl MemoryLockStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl LockStore for MemoryLockStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        let lock = keys.entry(key.to_owned()).or_default();
        if matches!(lock.lease, Some((_, expires)) if expires > now) {
            return Ok(None);
        }
        lock.last_token += 1;
        lock.lease = Some((lock.last_token, now + ttl));
        Ok(Some(lock.last_token))
    }

    async fn renew(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        match keys.get_mut(key).and_then(|l| l.lease.as_mut()) {
            Some((held, expires)) if *held == token && *expires > now => {
                *expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &str, token: u64) -> Result<(), StoreError> {
        let mut keys = self.keys.lock();
        if let Some(lock) = keys.get_mut(key) {
            if matches!(lock.lease, Some((held, _)) if held == token) {
                lock.lease = None;
            }
        }
        Ok(())
    }

    async fn fence(&self, key: &str, token: u64) -> Result<bool, StoreError> {
        let mut keys = self.keys.lock();
        let lock = keys.entry(key.to_owned()).or_default();
        if token < lock.fenced {
            return Ok(false);
        }
        lock.fenced = token;
        Ok(true)
    }
}
