//! The conformance suite every store backend passes: the same behaviour from memory, Redis
//! and Postgres. Each `tests/store_conformance_<backend>.rs` runs it against one backend with
//! its own key prefix or schema (`conformance_tests!`, in scope there through `#[macro_use]`
//! in `tests/suite.rs`).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use steadfast::store::{DedupStore, LockStore, Reservation, VersionStore};

/// A lease long enough never to expire within a test.
const LONG: Duration = Duration::from_secs(60);
/// A lease short enough to expire within a test.
const SHORT: Duration = Duration::from_millis(300);

/// Waits out a short lease (plus margin for the store's clock granularity).
async fn outlive_short_lease() {
    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
}

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

pub async fn version_compare_and_set_has_one_winner(store: std::sync::Arc<dyn VersionStore>) {
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

pub async fn lock_has_one_winner_under_contention(store: std::sync::Arc<dyn LockStore>) {
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

/// Runs the whole suite against fresh stores (every key used above must start unset).
macro_rules! conformance_tests {
    ($lock:expr, $dedup:expr, $version:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn lock_grants_one_holder_at_a_time() {
            conformance::lock_grants_one_holder_at_a_time(&*$lock).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn lock_tokens_increase_across_many_grants() {
            conformance::lock_tokens_increase_across_many_grants(&*$lock).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn lock_lease_expires_and_renewal_extends() {
            conformance::lock_lease_expires_and_renewal_extends(&*$lock).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn lock_fence_refuses_older_tokens() {
            conformance::lock_fence_refuses_older_tokens(&*$lock).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn lock_has_one_winner_under_contention() {
            conformance::lock_has_one_winner_under_contention($lock).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dedup_is_two_phase() {
            conformance::dedup_is_two_phase(&*$dedup).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dedup_release_lets_another_owner_retry() {
            conformance::dedup_release_lets_another_owner_retry(&*$dedup).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dedup_reservation_of_a_crashed_holder_expires() {
            conformance::dedup_reservation_of_a_crashed_holder_expires(&*$dedup).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dedup_completion_expires_after_its_ttl() {
            conformance::dedup_completion_expires_after_its_ttl(&*$dedup).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn version_advances_only_forward() {
            conformance::version_advances_only_forward(&*$version).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn version_compare_and_set_has_one_winner() {
            conformance::version_compare_and_set_has_one_winner($version).await;
        }
    };
}
