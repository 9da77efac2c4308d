//! A store backend written outside the crate, with nothing but the public API: the lock, dedup
//! and version traits over one `HashMap` behind a mutex. It passes the exported conformance
//! suite, and a worker (rdkafka against the embedded server) runs on it through the builder's
//! store handles: stale versions dropped, a redelivered id dropped, every key locked while
//! handled — and each store actually called.

use crate::support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use steadfast::store::{DedupStore, LockStore, Reservation, StoreError, VersionStore};
use steadfast::{Context, Handler, HandlerError, Retry, Worker};
use support::*;
use tokio_util::sync::CancellationToken;

/// What one key of the map holds.
#[derive(Debug, Clone)]
enum Entry {
    /// A lock grant: its token and when its lease ends.
    Lease(u64, Instant),
    /// The largest token granted or accepted for a key (grants and fences).
    Token(u64),
    /// A dedup reservation: its owner and when it ends.
    Reserved(String, Instant),
    /// A completed id, until when it is remembered.
    Completed(Instant),
    /// An applied version.
    Version(i64),
}

/// Every store in one map, under `lock:`, `token:`, `fence:`, `dedup:` and `version:` keys;
/// `calls` counts calls per trait (lock, dedup, version).
#[derive(Debug, Default)]
struct MapStore {
    map: Mutex<HashMap<String, Entry>>,
    calls: [AtomicU64; 3],
}

impl MapStore {
    fn count(&self, which: usize) {
        self.calls[which].fetch_add(1, Ordering::Relaxed);
    }
    fn calls(&self, which: usize) -> u64 {
        self.calls[which].load(Ordering::Relaxed)
    }
    fn token(map: &HashMap<String, Entry>, key: &str) -> u64 {
        match map.get(key) {
            Some(Entry::Token(t)) => *t,
            _ => 0,
        }
    }
}

#[async_trait]
impl LockStore for MapStore {
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        self.count(0);
        let now = Instant::now();
        let mut map = self.map.lock();
        if let Some(Entry::Lease(_, until)) = map.get(&format!("lock:{key}")) {
            if *until > now {
                return Ok(None);
            }
        }
        let token = Self::token(&map, &format!("token:{key}")) + 1;
        map.insert(format!("token:{key}"), Entry::Token(token));
        map.insert(format!("lock:{key}"), Entry::Lease(token, now + ttl));
        Ok(Some(token))
    }

    async fn renew(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        self.count(0);
        let now = Instant::now();
        let mut map = self.map.lock();
        match map.get_mut(&format!("lock:{key}")) {
            Some(Entry::Lease(held, until)) if *held == token && *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &str, token: u64) -> Result<(), StoreError> {
        self.count(0);
        let mut map = self.map.lock();
        if matches!(map.get(&format!("lock:{key}")), Some(Entry::Lease(held, _)) if *held == token)
        {
            map.remove(&format!("lock:{key}"));
        }
        Ok(())
    }

    async fn fence(&self, key: &str, token: u64) -> Result<bool, StoreError> {
        self.count(0);
        let mut map = self.map.lock();
        if token < Self::token(&map, &format!("fence:{key}")) {
            return Ok(false);
        }
        map.insert(format!("fence:{key}"), Entry::Token(token));
        Ok(true)
    }
}

#[async_trait]
impl DedupStore for MapStore {
    async fn reserve(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Reservation, StoreError> {
        self.count(1);
        let now = Instant::now();
        let mut map = self.map.lock();
        let key = format!("dedup:{id}");
        match map.get(&key) {
            Some(Entry::Completed(until)) if *until > now => return Ok(Reservation::Completed),
            Some(Entry::Reserved(holder, until)) if holder != owner && *until > now => {
                return Ok(Reservation::InProgress)
            }
            _ => {}
        }
        map.insert(key, Entry::Reserved(owner.to_owned(), now + lease));
        Ok(Reservation::Reserved)
    }

    async fn complete(&self, id: &str, _owner: &str, ttl: Duration) -> Result<(), StoreError> {
        self.count(1);
        let until = Instant::now() + ttl;
        self.map
            .lock()
            .insert(format!("dedup:{id}"), Entry::Completed(until));
        Ok(())
    }

    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.count(1);
        let mut map = self.map.lock();
        let key = format!("dedup:{id}");
        if matches!(map.get(&key), Some(Entry::Reserved(holder, _)) if holder == owner) {
            map.remove(&key);
        }
        Ok(())
    }
}

#[async_trait]
impl VersionStore for MapStore {
    async fn get(&self, key: &str) -> Result<Option<i64>, StoreError> {
        self.count(2);
        match self.map.lock().get(&format!("version:{key}")) {
            Some(Entry::Version(v)) => Ok(Some(*v)),
            _ => Ok(None),
        }
    }

    async fn advance(&self, key: &str, version: i64) -> Result<bool, StoreError> {
        self.count(2);
        let mut map = self.map.lock();
        let key = format!("version:{key}");
        if matches!(map.get(&key), Some(Entry::Version(v)) if *v >= version) {
            return Ok(false);
        }
        map.insert(key, Entry::Version(version));
        Ok(true)
    }
}

mod conformance {
    use super::MapStore;
    use std::sync::Arc;

    steadfast::store_conformance_tests!(
        lock: Arc::new(MapStore::default()),
        dedup: Arc::new(MapStore::default()),
        version: Arc::new(MapStore::default()),
    );
}

/// One handler call: the id, the version and the lock token held.
type Call = (String, i64, Option<u64>);

/// Records what it handled, with the lock token it held.
#[derive(Clone)]
struct Recording(Arc<Mutex<Vec<Call>>>);

impl Handler for Recording {
    type Message = Update;
    const GROUP: &'static str = "custom-store";

    fn handle_message(
        &self,
        message: Update,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self.0
            .lock()
            .push((message.id, message.version, cx.lock_token()));
        std::future::ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_runs_on_a_store_backend_written_outside_the_crate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(&dir.path().join("data")).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "custom-store", 1).await;
    // Key a: versions 1, 3, then a stale 2; key b: id b1 twice (a redelivery).
    let updates = [
        ("a", 1, "a1"),
        ("a", 3, "a3"),
        ("a", 2, "a2"),
        ("b", 1, "b1"),
        ("b", 2, "b1"),
    ];
    let records: Vec<_> = updates
        .iter()
        .map(|(key, version, id)| record(&update(key, *version, id)))
        .collect();
    produce_raw(&bootstrap, &topic, &records).await;

    let store = Arc::new(MapStore::default());
    let seen = Recording(Arc::new(Mutex::new(Vec::new())));
    let worker = Worker::builder()
        .brokers(bootstrap.clone())
        .topic(topic.clone())
        .group(group.clone())
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::none())
        .lock_store(store.clone())
        .dedup_store(store.clone())
        .version_store(store.clone())
        .handler(seen.clone())
        .build()
        .expect("a worker with store handles and no store URL is valid");
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await.expect("the worker runs") }
    });
    eventually(
        Duration::from_secs(30),
        "all five records committed",
        || committed(&bootstrap, &group, &topic).0 == Some(5),
    )
    .await;
    stop.cancel();
    let stats = running.await.expect("worker task");

    let seen = seen.0.lock().clone();
    // Keys run side by side: their calls interleave in any order, each key's in its own.
    let mut handled: Vec<(&str, i64)> = seen.iter().map(|(id, v, _)| (id.as_str(), *v)).collect();
    handled.sort_unstable();
    assert_eq!(
        handled,
        [("a1", 1), ("a3", 3), ("b1", 1)],
        "the stale version 2 and the second b1 are dropped: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, _, token)| token.is_some()),
        "every call held a lock grant of the custom store: {seen:?}"
    );
    assert_eq!(
        (stats.handled, stats.dropped, stats.dropped_stale),
        (3, 2, 1),
        "{stats:?}"
    );
    let store_key = format!("{group}/{topic}/a");
    assert_eq!(
        VersionStore::get(store.as_ref(), &store_key)
            .await
            .expect("get"),
        Some(3),
        "the custom version store holds the applied version"
    );
    assert!(
        (0..3).all(|which| store.calls(which) > 0),
        "the lock, dedup and version stores were all called: {:?}",
        (0..3).map(|w| store.calls(w)).collect::<Vec<_>>()
    );
    server.shutdown().await;
}
