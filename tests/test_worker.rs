//! `TestWorker` runs the whole policy stack, not only retry and routing: with memory stores
//! stale drop, dedup and the key lock; the breaker; the rate limit; a user's own layer; and a
//! handler that calls `cx.transaction()` against a Postgres the test gives (127.0.0.1:5432).

use crate::support;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use steadfast::config::BreakerConfig;
use steadfast::message::{DropReason, RouteTarget};
use steadfast::testing::TestWorker;
use steadfast::{Context, Handler, HandlerError, Outcome, Retry};
use support::{update, Update};

/// Fails (transiently) its first `failures` calls, then succeeds; records each call's lock
/// token.
#[derive(Clone, Default)]
struct Flaky {
    failures: u32,
    calls: Arc<AtomicU32>,
    tokens: Arc<Mutex<Vec<Option<u64>>>>,
}

impl Handler for Flaky {
    type Message = Update;
    const GROUP: &'static str = "test-worker";

    fn handle_message(
        &self,
        _message: Update,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.tokens.lock().push(cx.lock_token());
        std::future::ready(if call < self.failures {
            Err(HandlerError::transient("the dependency fails"))
        } else {
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stores_drop_stale_versions_and_duplicates_under_the_key_lock() {
    let handler = Flaky::default();
    let worker = TestWorker::new(handler.clone()).with_memory_stores();
    assert_eq!(
        worker.handle(&update("a", 1, "a1")).await,
        Outcome::Ack { attempt: 1 }
    );
    assert_eq!(
        worker.handle(&update("a", 3, "a3")).await,
        Outcome::Ack { attempt: 1 }
    );
    assert_eq!(
        worker.handle(&update("a", 2, "a2")).await,
        Outcome::Drop(DropReason::Stale),
        "an older version than the applied one is stale"
    );
    assert_eq!(
        worker.handle(&update("b", 1, "a1")).await,
        Outcome::Drop(DropReason::Duplicate),
        "an id handled before is a duplicate"
    );
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        2,
        "only two reached the handler"
    );
    let tokens = handler.tokens.lock().clone();
    assert!(
        tokens.iter().all(Option::is_some),
        "each call held the key lock: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stores_the_protective_policies_are_off() {
    let handler = Flaky::default();
    let worker = TestWorker::new(handler.clone());
    for _ in 0..2 {
        assert_eq!(
            worker.handle(&update("a", 1, "a1")).await,
            Outcome::Ack { attempt: 1 }
        );
    }
    assert_eq!(handler.tokens.lock().clone(), [None, None], "no lock held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_and_waits_before_probing() {
    let handler = Flaky {
        failures: 2,
        ..Flaky::default()
    };
    let open_for = Duration::from_millis(300);
    let worker = TestWorker::new(handler.clone())
        .retry(Retry::none())
        .breaker(BreakerConfig {
            failure_rate_percent: 50,
            window_ms: 60_000,
            min_calls: 2,
            open_ms: 300,
            half_open_probes: 1,
        });
    let first = worker.handle(&update("a", 1, "a1")).await;
    assert!(
        matches!(
            first,
            Outcome::Routed {
                target: RouteTarget::DeadLetter,
                ..
            }
        ),
        "below min_calls the breaker stays closed: {first:?}"
    );
    let started = Instant::now();
    let second = worker.handle(&update("b", 1, "b1")).await;
    let waited = started.elapsed();
    assert_eq!(
        second,
        Outcome::Ack { attempt: 1 },
        "the probe after the open time succeeds"
    );
    assert!(
        waited >= open_for,
        "the open breaker held the message {waited:?}, less than its {open_for:?}"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spaces_handler_calls() {
    let handler = Flaky::default();
    let worker = TestWorker::new(handler.clone()).rate_limit(20, 1);
    let started = Instant::now();
    for n in 0..5 {
        worker.handle(&update("a", n, &format!("id{n}"))).await;
    }
    let took = started.elapsed();
    // One permit at once, then one per 50 ms: the fifth call is 200 ms after the first.
    assert!(
        took >= Duration::from_millis(190),
        "five calls at 20 a second took {took:?}"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 5);
}

/// Counts the envelopes it sees, around every attempt.
#[derive(Clone)]
struct CountingLayer(Arc<AtomicU32>);

/// See [`CountingLayer`].
#[derive(Clone)]
struct Counting<S> {
    inner: S,
    seen: Arc<AtomicU32>,
}

impl<S> tower::Layer<S> for CountingLayer {
    type Service = Counting<S>;
    fn layer(&self, inner: S) -> Counting<S> {
        Counting {
            inner,
            seen: self.0.clone(),
        }
    }
}

impl<S: tower::Service<steadfast::Envelope>> tower::Service<steadfast::Envelope> for Counting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, envelope: steadfast::Envelope) -> S::Future {
        self.seen.fetch_add(1, Ordering::SeqCst);
        self.inner.call(envelope)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_layer_sees_every_attempt() {
    let handler = Flaky {
        failures: 2,
        ..Flaky::default()
    };
    let seen = Arc::new(AtomicU32::new(0));
    let worker = TestWorker::new(handler.clone())
        .retry(Retry::exponential(3, Duration::ZERO, Duration::ZERO))
        .layer(CountingLayer(seen.clone()));
    assert_eq!(
        worker.handle(&update("a", 1, "a1")).await,
        Outcome::Ack { attempt: 3 }
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "inside retry in place: once per attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_layer_that_needs_poll_ready_gets_it() {
    let handler = Flaky::default();
    let worker =
        TestWorker::new(handler.clone()).layer(tower::limit::ConcurrencyLimitLayer::new(1));
    // Two at once through a limit of one: the second waits for the first's permit (a layer
    // called without `poll_ready` panics).
    let (first, second) = (update("a", 1, "a1"), update("b", 1, "b1"));
    let (a, b) = tokio::join!(worker.handle(&first), worker.handle(&second));
    assert_eq!(
        (a, b),
        (Outcome::Ack { attempt: 1 }, Outcome::Ack { attempt: 1 })
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_changed_after_the_first_message_takes_effect() {
    let handler = Flaky::default();
    let worker = TestWorker::new(handler.clone());
    worker.handle(&update("a", 1, "a1")).await;
    let worker = worker.with_memory_stores();
    worker.handle(&update("a", 2, "a2")).await;
    assert_eq!(
        worker.handle(&update("a", 1, "a1")).await,
        Outcome::Drop(DropReason::Stale),
        "the stores set after the first message are in the stack"
    );
}

/// Writes a row per message through the transaction steadfast hands it.
#[derive(Clone)]
struct Ledger {
    table: String,
}

impl Handler for Ledger {
    type Message = Update;
    const GROUP: &'static str = "test-worker-ledger";

    fn handle_message(
        &self,
        message: Update,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let cx = cx.clone();
        let insert = format!("INSERT INTO {} (id) VALUES ($1)", self.table);
        async move {
            let Some(tx) = cx.transaction().await? else {
                return Ok(());
            };
            tx.execute(&insert, &[&message.id]).await?;
            tx.commit().await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_handler_is_testable_against_a_given_postgres() {
    let schema = support::fresh_schema();
    let stores = support::postgres_stores(&schema).await;
    let table = format!("{schema}.ledger");
    let client = stores.pool().get().await.expect("a connection");
    client
        .batch_execute(&format!("CREATE TABLE {table} (id text)"))
        .await
        .expect("create the handler's table");
    let worker = TestWorker::new(Ledger {
        table: table.clone(),
    })
    .transactions(support::POSTGRES_URL, schema.clone());
    assert_eq!(
        worker.handle(&update("a", 1, "a1")).await,
        Outcome::Ack { attempt: 1 }
    );
    assert_eq!(
        worker.handle(&update("a", 1, "a1")).await,
        Outcome::Drop(DropReason::Duplicate),
        "the transaction finds the id recorded"
    );
    assert_eq!(
        worker.handle(&update("a", 0, "a0")).await,
        Outcome::Drop(DropReason::Stale),
        "the transaction finds a newer version applied"
    );
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1, "one effect applied");
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop the test schema");
}

/// Sends one copy of each update to `copies` through its context's producer.
#[derive(Clone)]
struct Forward;

impl Handler for Forward {
    type Message = Update;
    const GROUP: &'static str = "forward";

    fn handle_message(
        &self,
        u: Update,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let producer = cx.producer().cloned();
        async move {
            let record = steadfast::Record::of(&u)
                .map_err(HandlerError::permanent)?
                .topic("copies");
            producer?
                .send_record(record)
                .await
                .map_err(HandlerError::transient)?;
            Ok(())
        }
    }
}

#[tokio::test]
async fn what_a_handler_sends_is_kept_with_the_record_that_caused_it() {
    let worker = TestWorker::new(Forward);
    assert_eq!(
        worker.handle(&update("k", 1, "a")).await,
        Outcome::Ack { attempt: 1 }
    );
    let produced = worker.produced();
    assert_eq!(produced.len(), 1);
    assert_eq!(produced[0].topic, "copies");
    assert_eq!(produced[0].key.as_deref(), Some(&b"k"[..]));
    let cause = produced[0]
        .headers
        .get_str(steadfast::message::headers::CAUSED_BY);
    assert!(
        cause.is_some_and(|c| c.starts_with("policies/0/")),
        "names the record handled: {cause:?}"
    );
    assert!(worker.routed().is_empty(), "a send is not a routed copy");
}

/// With `wait`, asks for it before its first retry (`HandlerError::retry_after`), then
/// succeeds; without, always succeeds. Records when each call started.
#[derive(Clone)]
struct AsksToWait {
    wait: Option<Duration>,
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl Handler for AsksToWait {
    type Message = Update;
    const GROUP: &'static str = "test-worker";

    fn handle_message(
        &self,
        _message: Update,
        _cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let mut starts = self.starts.lock();
        starts.push(Instant::now());
        std::future::ready(match self.wait {
            Some(wait) if starts.len() == 1 => Err(HandlerError::retry_after(
                wait,
                "the dependency asks to wait",
            )),
            _ => Ok(()),
        })
    }
}

/// `RetryAfter(d)`: the retry in place waits at least `d`, even when the backoff's own delay
/// is far shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_waits_at_least_the_delay_it_names() {
    let wait = Duration::from_millis(400);
    let handler = AsksToWait {
        wait: Some(wait),
        starts: Arc::default(),
    };
    let worker = TestWorker::new(handler.clone()).retry(Retry::exponential(
        3,
        Duration::from_millis(1),
        Duration::from_millis(1),
    ));
    assert_eq!(
        worker.handle(&update("a", 1, "a1")).await,
        Outcome::Ack { attempt: 2 },
        "the second attempt succeeds"
    );
    let starts = handler.starts.lock().clone();
    assert_eq!(starts.len(), 2, "two calls");
    let between = starts[1] - starts[0];
    assert!(
        between >= wait,
        "the retry came {between:?} after the first call, before the {wait:?} asked for"
    );
}

/// A memory lock store that notes when each grant was made.
#[derive(Debug, Default)]
struct NotedLock {
    inner: steadfast::store::memory::MemoryLockStore,
    granted: Mutex<Vec<Instant>>,
}

#[async_trait::async_trait]
impl steadfast::store::LockStore for NotedLock {
    async fn acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, steadfast::store::StoreError> {
        let granted = self.inner.acquire(key, ttl).await?;
        if granted.is_some() {
            self.granted.lock().push(Instant::now());
        }
        Ok(granted)
    }
    async fn renew(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, steadfast::store::StoreError> {
        self.inner.renew(key, token, ttl).await
    }
    async fn release(&self, key: &str, token: u64) -> Result<(), steadfast::store::StoreError> {
        self.inner.release(key, token).await
    }
    async fn fence(&self, key: &str, token: u64) -> Result<bool, steadfast::store::StoreError> {
        self.inner.fence(key, token).await
    }
}

/// The rate limit's wait comes before the key lock: no lock is held while a record waits
/// for a permit (each grant comes just before its handler call, not a permit's wait ahead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_waits_for_its_rate_permit_before_it_takes_the_key_lock() {
    let handler = AsksToWait {
        wait: None,
        starts: Arc::default(),
    };
    let lock = Arc::new(NotedLock::default());
    let worker = TestWorker::new(handler.clone())
        .stores(steadfast::store::StoreHandles {
            lock: Some(lock.clone()),
            ..Default::default()
        })
        .rate_limit(5, 1);
    // Three keys at once: one permit now, then one each 200 ms.
    let (a, b, c) = (
        update("a", 1, "a1"),
        update("b", 1, "b1"),
        update("c", 1, "c1"),
    );
    let (x, y, z) = tokio::join!(worker.handle(&a), worker.handle(&b), worker.handle(&c));
    let outcomes = [x, y, z];
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Ack { .. })),
        "{outcomes:?}"
    );
    let starts = handler.starts.lock().clone();
    let mut granted = lock.granted.lock().clone();
    granted.sort();
    assert_eq!(granted.len(), 3, "one grant a record: {granted:?}");
    let spread = granted[2] - granted[0];
    assert!(
        spread >= Duration::from_millis(350),
        "the grants were spread by the rate limit ({spread:?} from first to last): a record took \
         the lock before its permit"
    );
    assert_eq!(starts.len(), 3, "one call a record");
    // Every call started soon after a grant.
    for start in &starts {
        let after_grant = granted
            .iter()
            .filter(|g| *g <= start)
            .map(|g| *start - *g)
            .min();
        assert!(
            after_grant.is_some_and(|d| d < Duration::from_millis(150)),
            "a call started {after_grant:?} after the last grant before it"
        );
    }
}
