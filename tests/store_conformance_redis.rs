//! The store conformance suite against the Redis backends (Redis at 127.0.0.1:6379, a fresh
//! random key prefix per test), plus what only Redis has to show: tokens that keep growing
//! across a restart without persistence, calls that fail fast while Redis is down and work
//! again by themselves, and the shared rate limit.

use crate::support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steadfast::store::redis::{restart_loses, Persistence, RedisStores};
use steadfast::store::{
    DedupStore, LockStore, RateLimitStore, Reservation, StoreError, VersionStore,
};

const URL: &str = "redis://127.0.0.1:6379";
const LONG: Duration = Duration::from_secs(60);

fn fresh_prefix() -> String {
    format!("sf-test-{}", uuid::Uuid::new_v4())
}

async fn stores_at(url: &str, prefix: &str) -> RedisStores {
    RedisStores::connect(url, prefix).await.unwrap_or_else(|e| {
        panic!("start redis-server on 127.0.0.1:6379 (scripts/services.sh): {e}")
    })
}

async fn stores() -> RedisStores {
    stores_at(URL, &fresh_prefix()).await
}

async fn lock() -> Arc<dyn LockStore> {
    // The suite grants leases of `LONG`.
    support::redis_up_for(LONG).await;
    Arc::new(stores().await.lock_store())
}
async fn dedup() -> Arc<dyn DedupStore> {
    Arc::new(stores().await.dedup_store())
}
async fn version() -> Arc<dyn VersionStore> {
    Arc::new(stores().await.version_store())
}

async fn rate() -> Arc<dyn RateLimitStore> {
    Arc::new(stores().await)
}

steadfast::store_conformance_tests!(
    lock: lock().await,
    dedup: dedup().await,
    version: version().await,
    rate: rate().await,
);

#[tokio::test]
async fn versions_beyond_lua_number_precision_compare_exactly() {
    let store = version().await;
    let big = i64::MAX - 1;
    assert!(store.advance("big", big).await.expect("advance"));
    assert!(
        !store.advance("big", big - 1).await.expect("advance"),
        "one below is refused although both round to the same double"
    );
    assert!(store.advance("big", i64::MAX).await.expect("advance"));
    assert_eq!(store.get("big").await.expect("get"), Some(i64::MAX));
    assert!(store.advance("neg", -10).await.expect("advance"));
    assert!(!store.advance("neg", -11).await.expect("advance"));
    assert!(store.advance("neg", -9).await.expect("advance"));
}

#[tokio::test]
async fn a_bad_url_is_reported_without_its_password() {
    let err = RedisStores::connect("redis://:s3cret@127.0.0.1:notaport", "p")
        .await
        .expect_err("a port that is not a number");
    assert!(matches!(err, StoreError::Url { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test]
async fn connecting_to_a_redis_that_is_down_fails_fast_as_unavailable() {
    let refusing = support::RefusingPort::new();
    let started = Instant::now();
    let err = RedisStores::connect(&format!("redis://127.0.0.1:{}", refusing.port), "p")
        .await
        .expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// A `redis-server` child without persistence, killed (SIGKILL) when dropped.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start(port: u16) -> RedisServer {
        let mut server = RedisServer { port, child: None };
        server.spawn();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the server answers PING.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).expect("url");
        loop {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(500)))
                .set_response_timeout(Some(Duration::from_millis(500)));
            if let Ok(mut conn) = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok_and(|p| p == "PONG") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `call` and checks that it fails as unavailable within a few seconds.
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = call.await;
    let took = started.elapsed();
    match result {
        Err(e) if e.is_unavailable() => {}
        other => panic!("{what} while Redis is down: {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "{what} took {took:?}");
}

/// The lease of the restart test's grants: the time a Redis that started keeping nothing
/// holds back its first grant.
const RESTART_LEASE: Duration = Duration::from_secs(1);

/// Asks `call` until it answers `granted`, for up to 15 s: calls failing as unavailable (a
/// reconnect in progress) and answers that hold the grant back are asked again. The answer,
/// and whether the grant was held back at least once.
async fn until_granted<T: std::fmt::Debug, F, Fut>(
    what: &str,
    mut call: F,
    granted: impl Fn(&T) -> bool,
) -> (T, bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut held_back = false;
    loop {
        match call().await {
            Ok(answer) if granted(&answer) => return (answer, held_back),
            Ok(_) => held_back = true,
            Err(e) => assert!(e.is_unavailable(), "{what}: {e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no grant within 15 s of the Redis's start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_growing_across_a_redis_restart() {
    let spawned = Instant::now();
    let mut server = RedisServer::start(support::free_port());
    server.wait_ready().await;
    let stores = stores_at(&server.url(), &fresh_prefix()).await;
    let lock = stores.lock_store();
    let dedup = stores.dedup_store();
    let version = stores.version_store();

    // A Redis that just started grants nothing until it has been up for a lease: it cannot
    // tell a first start from a restart that forgot the leases it granted.
    let (first, _) = until_granted(
        "first acquire",
        || lock.acquire("k", RESTART_LEASE),
        Option::is_some,
    )
    .await;
    assert!(
        spawned.elapsed() >= RESTART_LEASE,
        "granted {:?} after the Redis was started, within its lease",
        spawned.elapsed()
    );
    let mut last = first.expect("granted");
    lock.release("k", last).await.expect("release");
    for _ in 0..5 {
        let token = lock
            .acquire("k", RESTART_LEASE)
            .await
            .expect("acquire")
            .expect("granted at once once a grant was made");
        assert!(token > last);
        last = token;
        lock.release("k", token).await.expect("release");
    }
    // A holder and a reservation that are still running when the Redis restarts (a lease
    // longer than the one cleared would wait for the Redis to be up that long).
    let holder = lock
        .acquire("held", RESTART_LEASE)
        .await
        .expect("acquire")
        .expect("granted");
    assert_eq!(
        dedup.reserve("id", "a", LONG).await.expect("reserve"),
        Reservation::Reserved
    );
    assert!(version.advance("v", 7).await.expect("advance"));

    server.kill();
    assert_unavailable("acquire", lock.acquire("k", LONG)).await;
    assert_unavailable("renew", lock.renew("k", last, LONG)).await;
    assert_unavailable("reserve", dedup.reserve("id", "b", LONG)).await;
    assert_unavailable("get", version.get("v")).await;
    assert_unavailable("rate limit", stores.rate_limiter("r", 10.0, 1).reserve()).await;

    let restarted = Instant::now();
    server.spawn();
    server.wait_ready().await;
    // The same stores, no new connection by hand: the first calls may still meet the
    // reconnect in progress. The Redis forgot the holder's lease: it holds the key back
    // until it has been up for a lease, by which time the holder has found its lease lost
    // at its next renewal.
    let (renewed, _) = until_granted(
        "the holder's renewal after the restart",
        || lock.renew("held", holder, LONG),
        |_| true,
    )
    .await;
    assert!(
        !renewed,
        "the holder from before the restart renewed a forgotten lease"
    );
    assert_eq!(
        lock.acquire("held", LONG).await.expect("acquire"),
        None,
        "a lease longer than the Redis has been up since its restart was granted"
    );
    let (granted, _) = until_granted(
        "acquire after the restart",
        || lock.acquire("held", RESTART_LEASE),
        Option::is_some,
    )
    .await;
    assert!(
        restarted.elapsed() >= RESTART_LEASE,
        "granted {:?} after the restart, within a lease",
        restarted.elapsed()
    );
    let first = granted.expect("granted");
    assert_eq!(
        dedup.reserve("id", "b", LONG).await.expect("reserve"),
        Reservation::Reserved,
        "the reservation from before the restart is forgotten"
    );
    assert_eq!(
        version.get("v").await.expect("get"),
        None,
        "the restarted Redis forgot everything"
    );
    assert!(
        first > last,
        "token after the restart {first} > token before {last}"
    );
    lock.release("held", first).await.expect("release");
    let next = lock
        .acquire("held", RESTART_LEASE)
        .await
        .expect("acquire")
        .expect("granted");
    assert!(next > first, "{next} > {first}");
}

#[tokio::test]
async fn a_lease_longer_than_the_redis_has_been_up_is_held_back_and_the_longest_cleared_is_kept() {
    support::redis_up_for(Duration::from_secs(2)).await;
    let lock = stores().await.lock_store();
    let long = support::redis_uptime().await + Duration::from_secs(3600);
    assert_eq!(
        lock.acquire("a", long).await.expect("acquire"),
        None,
        "a holder of a forgotten lease of {long:?} may still run"
    );
    // A lease within the uptime is granted, and from then on leases as long are granted
    // at once; a longer one is still held back.
    let short = Duration::from_secs(1);
    let granted = lock.acquire("b", short).await.expect("acquire");
    assert!(granted.is_some(), "a lease within the uptime is granted");
    assert_eq!(lock.acquire("a", long).await.expect("acquire"), None);
    let again = lock.acquire("c", short).await.expect("acquire");
    assert!(again.is_some());
    for (key, token) in [("b", granted), ("c", again)] {
        lock.release(key, token.expect("granted"))
            .await
            .expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_never_exceeds_rate_plus_burst() {
    const PER_SECOND: f64 = 100.0;
    const BURST: u32 = 10;
    let prefix = fresh_prefix();
    let a = stores_at(URL, &prefix).await;
    let b = stores_at(URL, &prefix).await;
    let limiters = [
        a.rate_limiter("api", PER_SECOND, BURST),
        b.rate_limiter("api", PER_SECOND, BURST),
    ];

    let started = Instant::now();
    let until = started + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let limiter = limiters[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut permits = Vec::new();
            while Instant::now() < until {
                limiter.acquire().await.expect("acquire");
                permits.push(Instant::now());
            }
            permits
        }));
    }
    let mut permits = Vec::new();
    for t in tasks {
        permits.extend(t.await.expect("task"));
    }
    permits.sort();

    // Every window [t, t + 1 s) that starts at a permit (the fullest windows do).
    let mut most = 0;
    let mut end = 0;
    for (start, at) in permits.iter().enumerate() {
        while end < permits.len() && permits[end] < *at + Duration::from_secs(1) {
            end += 1;
        }
        let count = end - start;
        most = most.max(count);
        assert!(
            count <= PER_SECOND as usize + BURST as usize,
            "{count} permits within 1 s from {:?} after the start",
            at.duration_since(started)
        );
    }
    assert!(
        permits.len() >= 250,
        "only {} permits in 3 s (at most {most} in a second)",
        permits.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_persistence_is_told_apart_from_one_with_snapshots() {
    let server = RedisServer::start(support::free_port());
    server.wait_ready().await;
    let stores = stores_at(&server.url(), &fresh_prefix()).await;
    let none = stores.persistence().await.expect("CONFIG GET");
    assert_eq!(
        none,
        Persistence {
            aof: false,
            snapshots: false
        },
        "started with --save \"\" --appendonly no"
    );
    let lost = restart_loses(&["dedup", "stale", "lock"], none).expect("a warning");
    assert!(lost.contains("message ids"), "{lost}");
    // A snapshot schedule; nothing is written (the server is killed, not shut down).
    let client = redis::Client::open(server.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a connection");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("save")
        .arg("900 1")
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET save");
    let snapshots = stores.persistence().await.expect("CONFIG GET");
    assert!(snapshots.snapshots && !snapshots.aof, "{snapshots:?}");
    assert_eq!(restart_loses(&["dedup", "stale", "lock"], snapshots), None);
}
