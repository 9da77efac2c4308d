//! The conformance suite every store backend passes, exported so that a backend written
//! outside this crate can run it: each check is a function over a store handle, and
//! [`crate::store_conformance_tests!`] turns them into `#[test]` functions.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use steadfast::store::memory::{MemoryDedupStore, MemoryLockStore, MemoryVersionStore, MemoryRateLimitStore};
//! # use steadfast::store::{DedupStore, LockStore, RateLimitStore, VersionStore};
//! fn lock() -> Arc<dyn LockStore> { Arc::new(MemoryLockStore::new()) }
//! fn dedup() -> Arc<dyn DedupStore> { Arc::new(MemoryDedupStore::new()) }
//! fn version() -> Arc<dyn VersionStore> { Arc::new(MemoryVersionStore::new()) }
//! fn rate() -> Arc<dyn RateLimitStore> { Arc::new(MemoryRateLimitStore::new()) }
//!
//! // Each expression is evaluated in an async block, once per test: it may `.await`.
//! steadfast::store_conformance_tests!(lock: lock(), dedup: dedup(), version: version(), rate: rate());
//! ```
//!
//! Every test gets a fresh store from its expression; a backend that keeps state outside the
//! process (a database) should hand each test its own key prefix or schema. Some checks wait
//! out leases of 300 ms.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{DedupStore, LockStore, RateLimit, RateLimitStore, Reservation, VersionStore};

/// Runs one check on a multi-threaded runtime of two workers (what the generated tests use).
pub fn block_on<F: Future>(check: F) -> F::Output {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(check),
        Err(e) => panic!("the conformance check cannot start a runtime: {e}"),
    }
}

/// A lease long enough never to expire within a test.
const LONG: Duration = Duration::from_secs(60);
/// A lease short enough to expire within a test.
const SHORT: Duration = Duration::from_millis(300);

/// Waits out a short lease (plus margin for the store's clock granularity).
async fn outlive_short_lease() {
    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
}

/// Checks that lock grants one holder at a time.
pub async fn lock_grants_one_holder_at_a_time(store: &dyn LockStore) {
    let first = store
        .acquire("k", LONG)
        .await
        .expect("acquire")
        .expect("free key is granted");
    assert_eq!(
        store.acquire("k", LONG).await.expect("acquire"),
        None,
        "a held key is not granted again"
    );
    let other = store.acquire("other", LONG).await.expect("acquire");
    assert!(other.is_some(), "other keys are independent");
    store.release("k", first).await.expect("release");
    let second = store
        .acquire("k", LONG)
        .await
        .expect("acquire")
        .expect("released key is granted");
    assert!(
        second > first,
        "tokens strictly increase: {first} then {second}"
    );
}

/// Checks that lock tokens increase across many grants.
pub async fn lock_tokens_increase_across_many_grants(store: &dyn LockStore) {
    let mut last = 0;
    for _ in 0..20 {
        let token = store
            .acquire("seq", LONG)
            .await
            .expect("acquire")
            .expect("granted");
        assert!(token > last, "token {token} after {last}");
        last = token;
        store.release("seq", token).await.expect("release");
    }
}

/// Checks that lock lease expires and renewal extends.
pub async fn lock_lease_expires_and_renewal_extends(store: &dyn LockStore) {
    let token = store
        .acquire("lease", SHORT)
        .await
        .expect("acquire")
        .expect("granted");
    for _ in 0..3 {
        tokio::time::sleep(SHORT / 2).await;
        assert!(
            store.renew("lease", token, SHORT).await.expect("renew"),
            "a running lease renews"
        );
    }
    assert_eq!(
        store.acquire("lease", SHORT).await.expect("acquire"),
        None,
        "the renewed lease still holds"
    );
    outlive_short_lease().await;
    assert!(
        !store.renew("lease", token, SHORT).await.expect("renew"),
        "an expired lease does not renew"
    );
    let next = store
        .acquire("lease", LONG)
        .await
        .expect("acquire")
        .expect("expired lease is granted again");
    assert!(next > token);
    assert!(
        !store.renew("lease", token, LONG).await.expect("renew"),
        "the old holder cannot renew the new grant"
    );
    store
        .release("lease", token)
        .await
        .expect("releasing a lost lease is not an error");
    assert_eq!(
        store.acquire("lease", LONG).await.expect("acquire"),
        None,
        "the old holder's release leaves the new grant"
    );
    store.release("lease", next).await.expect("release");
}

/// Checks that lock fence refuses older tokens.
pub async fn lock_fence_refuses_older_tokens(store: &dyn LockStore) {
    let old = store
        .acquire("fenced", SHORT)
        .await
        .expect("acquire")
        .expect("granted");
    outlive_short_lease().await;
    let new = store
        .acquire("fenced", LONG)
        .await
        .expect("acquire")
        .expect("granted");
    assert!(
        store.fence("fenced", new).await.expect("fence"),
        "the current holder writes"
    );
    assert!(
        !store.fence("fenced", old).await.expect("fence"),
        "the late writer is refused"
    );
    assert!(
        store.fence("fenced", new).await.expect("fence"),
        "the same token writes again"
    );
    assert!(
        store.fence("unfenced", old).await.expect("fence"),
        "fences are per key"
    );
}

/// Checks that dedup is two phase.
pub async fn dedup_is_two_phase(store: &dyn DedupStore) {
    assert_eq!(
        store.reserve("id-1", "a", LONG).await.expect("reserve"),
        Reservation::Reserved
    );
    assert_eq!(
        store.reserve("id-1", "b", LONG).await.expect("reserve"),
        Reservation::InProgress
    );
    store.complete("id-1", "a", LONG).await.expect("complete");
    assert_eq!(
        store.reserve("id-1", "b", LONG).await.expect("reserve"),
        Reservation::Completed
    );
    assert_eq!(
        store.reserve("id-2", "b", LONG).await.expect("reserve"),
        Reservation::Reserved,
        "ids are independent"
    );
}

/// Checks that dedup release lets another owner retry.
pub async fn dedup_release_lets_another_owner_retry(store: &dyn DedupStore) {
    assert_eq!(
        store.reserve("r", "a", LONG).await.expect("reserve"),
        Reservation::Reserved
    );
    store
        .release("r", "b")
        .await
        .expect("release by a non-owner");
    assert_eq!(
        store.reserve("r", "b", LONG).await.expect("reserve"),
        Reservation::InProgress,
        "another owner cannot release"
    );
    store.release("r", "a").await.expect("release");
    assert_eq!(
        store.reserve("r", "b", LONG).await.expect("reserve"),
        Reservation::Reserved,
        "a released id is never marked handled"
    );
    store.complete("r", "b", LONG).await.expect("complete");
    store
        .release("r", "b")
        .await
        .expect("release after complete");
    assert_eq!(
        store.reserve("r", "c", LONG).await.expect("reserve"),
        Reservation::Completed,
        "release does not undo a completion"
    );
}

/// Checks that dedup reservation of a crashed holder expires.
pub async fn dedup_reservation_of_a_crashed_holder_expires(store: &dyn DedupStore) {
    assert_eq!(
        store.reserve("crash", "a", SHORT).await.expect("reserve"),
        Reservation::Reserved
    );
    outlive_short_lease().await;
    assert_eq!(
        store.reserve("crash", "b", LONG).await.expect("reserve"),
        Reservation::Reserved
    );
}

/// Checks that dedup completion expires after its ttl.
pub async fn dedup_completion_expires_after_its_ttl(store: &dyn DedupStore) {
    assert_eq!(
        store.reserve("ttl", "a", LONG).await.expect("reserve"),
        Reservation::Reserved
    );
    store.complete("ttl", "a", SHORT).await.expect("complete");
    assert_eq!(
        store.reserve("ttl", "b", LONG).await.expect("reserve"),
        Reservation::Completed
    );
    outlive_short_lease().await;
    assert_eq!(
        store.reserve("ttl", "b", LONG).await.expect("reserve"),
        Reservation::Reserved
    );
}

/// Checks that version advances only forward.
pub async fn version_advances_only_forward(store: &dyn VersionStore) {
    assert_eq!(store.get("v").await.expect("get"), None);
    assert!(store.advance("v", 1).await.expect("advance"));
    assert!(store.advance("v", 3).await.expect("advance"));
    assert!(
        !store.advance("v", 2).await.expect("advance"),
        "an older version is refused"
    );
    assert!(
        !store.advance("v", 3).await.expect("advance"),
        "the same version is refused"
    );
    assert_eq!(store.get("v").await.expect("get"), Some(3));
    assert!(
        store.advance("w", -5).await.expect("advance"),
        "keys are independent, negatives allowed"
    );
    assert_eq!(store.get("w").await.expect("get"), Some(-5));
}

/// Checks that version compare and set has one winner.
pub async fn version_compare_and_set_has_one_winner(store: Arc<dyn VersionStore>) {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.advance("race", 10).await.expect("advance")
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("task") {
            winners += 1;
        }
    }
    assert_eq!(
        winners, 1,
        "exactly one concurrent advance to the same version wins"
    );
}

/// Checks that lock has one winner under contention.
pub async fn lock_has_one_winner_under_contention(store: Arc<dyn LockStore>) {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.acquire("contended", LONG).await.expect("acquire")
        }));
    }
    let mut granted = 0;
    for t in tasks {
        if t.await.expect("task").is_some() {
            granted += 1;
        }
    }
    assert_eq!(
        granted, 1,
        "exactly one of concurrent acquirers gets the lock"
    );
}

/// Checks that a rate limit grants `burst` permits at once, then one per interval, and that
/// limits with other names are independent.
pub async fn rate_limit_allows_a_burst_then_the_rate(store: &dyn RateLimitStore) {
    let limit = RateLimit {
        name: "conformance-burst".to_owned(),
        per_second: 10.0,
        burst: 3,
    };
    // A permit is due one interval after the one before it, counted from the first
    // reservation: measured as when a reservation returned plus the wait it was told, so
    // that slow store calls (a loaded machine) do not move the due times.
    let start = std::time::Instant::now();
    for n in 1..=3 {
        let wait = store.reserve(&limit).await.expect("reserve");
        assert!(
            wait < Duration::from_millis(30),
            "permit {n} of a burst of 3 is usable at once, not after {wait:?}"
        );
    }
    for (n, intervals) in [("fourth", 1), ("fifth", 2)] {
        let wait = store.reserve(&limit).await.expect("reserve");
        let due = start.elapsed() + wait;
        let expected = Duration::from_millis(100 * intervals);
        assert!(
            due >= expected - Duration::from_millis(20)
                && due <= expected + Duration::from_millis(150),
            "the {n} permit is due about {expected:?} after the first, not {due:?} (it was told to wait {wait:?})"
        );
    }
    let other = RateLimit {
        name: "conformance-other".to_owned(),
        ..limit.clone()
    };
    let wait = store.reserve(&other).await.expect("reserve");
    assert!(
        wait < Duration::from_millis(30),
        "another limit's permits are its own, not after {wait:?}"
    );
}

/// Checks that a rate that is not a positive finite number is refused with an error.
pub async fn rate_limit_refuses_a_rate_that_is_not_positive(store: &dyn RateLimitStore) {
    for per_second in [0.0, -1.0, f64::NAN] {
        let limit = RateLimit {
            name: "conformance-bad".to_owned(),
            per_second,
            burst: 1,
        };
        assert!(
            store.reserve(&limit).await.is_err(),
            "a rate of {per_second} permits a second is refused"
        );
    }
}

/// Checks that, under contention of many tasks, a burst is granted at once only `burst` times.
pub async fn rate_limit_has_burst_winners_under_contention(store: Arc<dyn RateLimitStore>) {
    let limit = RateLimit {
        name: "conformance-contention".to_owned(),
        per_second: 1.0,
        burst: 2,
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, limit) = (store.clone(), limit.clone());
        tasks.push(tokio::spawn(async move { store.reserve(&limit).await }));
    }
    let mut immediate = 0;
    for task in tasks {
        let wait = task.await.expect("task").expect("reserve");
        if wait < Duration::from_millis(500) {
            immediate += 1;
        }
    }
    assert_eq!(immediate, 2, "exactly the burst is usable at once");
}

/// Generates one `#[test]` per conformance check for the stores given, each as
/// `kind: expression` (`lock`, `dedup`, `version`, `rate`; any subset, in any order). The
/// expression yields an `Arc<dyn …Store>`; it is evaluated in an async block once per test,
/// so it may `.await`. See [`crate::store::conformance`].
#[macro_export]
macro_rules! store_conformance_tests {
    ($($kind:ident: $store:expr),+ $(,)?) => {
        $( $crate::store_conformance_tests!(@$kind $store); )+
    };
    (@lock $store:expr) => {
        $crate::store_conformance_tests!(@each $store;
            lock_grants_one_holder_at_a_time,
            lock_tokens_increase_across_many_grants,
            lock_lease_expires_and_renewal_extends,
            lock_fence_refuses_older_tokens);
        $crate::store_conformance_tests!(@shared $store; lock_has_one_winner_under_contention);
    };
    (@dedup $store:expr) => {
        $crate::store_conformance_tests!(@each $store;
            dedup_is_two_phase,
            dedup_release_lets_another_owner_retry,
            dedup_reservation_of_a_crashed_holder_expires,
            dedup_completion_expires_after_its_ttl);
    };
    (@version $store:expr) => {
        $crate::store_conformance_tests!(@each $store; version_advances_only_forward);
        $crate::store_conformance_tests!(@shared $store; version_compare_and_set_has_one_winner);
    };
    (@rate $store:expr) => {
        $crate::store_conformance_tests!(@each $store;
            rate_limit_allows_a_burst_then_the_rate,
            rate_limit_refuses_a_rate_that_is_not_positive);
        $crate::store_conformance_tests!(@shared $store; rate_limit_has_burst_winners_under_contention);
    };
    (@each $store:expr; $($check:ident),+) => {
        $(
            #[test]
            fn $check() {
                $crate::store::conformance::block_on(async {
                    $crate::store::conformance::$check(&*$store).await;
                });
            }
        )+
    };
    (@shared $store:expr; $check:ident) => {
        #[test]
        fn $check() {
            $crate::store::conformance::block_on(async {
                $crate::store::conformance::$check($store).await;
            });
        }
    };
}
