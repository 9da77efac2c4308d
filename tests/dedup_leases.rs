//! Dedup reservations are leases: renewed while their handler runs (a long handler keeps its
//! reservation), expiring within one lease when their holder is gone (a replacement takes the
//! message over in seconds, saying so in its log and on `/readyz` while it waits). Real Redis,
//! the in-process server, the real rdkafka client.

use crate::support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steadfast::store::{DedupStore, Reservation};
use steadfast::{Context, Handler, HandlerError, Retry, Worker, WorkerBuilder, WorkerStats};
use support::*;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "leases", key = key, id = id)]
struct Job {
    key: String,
    id: String,
    #[serde(default)]
    sleep_ms: u64,
}

/// Sleeps as the job says, counts the jobs it finished.
#[derive(Clone, Default)]
struct Sleeper {
    done: Arc<AtomicUsize>,
}

impl Handler for Sleeper {
    type Message = Job;
    const GROUP: &'static str = "leases";

    fn handle_message(
        &self,
        job: Job,
        _cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let done = self.done.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
}

const LEASE_MS: u64 = 600;

fn worker(bootstrap: &str, topic: &str, group: &str, prefix: &str) -> WorkerBuilder {
    let mut config = steadfast::WorkerConfig {
        brokers: bootstrap.to_owned(),
        topic: Some(topic.to_owned()),
        group: Some(group.to_owned()),
        commit_interval_ms: 100,
        dedup: Some(
            toml::from_str(&format!(
                "store = \"redis://127.0.0.1:6379\"\nlease_ms = {LEASE_MS}\n"
            ))
            .expect("dedup table"),
        ),
        ..Default::default()
    };
    config.stores.key_prefix = prefix.to_owned();
    Worker::builder().config(config).retry(Retry::none())
}

struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<WorkerStats>,
}

fn spawn(builder: WorkerBuilder<Sleeper>) -> Running {
    let token = CancellationToken::new();
    let w = builder.build().expect("valid worker");
    let t = token.clone();
    let handle = tokio::spawn(async move { w.run(t).await.expect("worker runs") });
    Running { token, handle }
}

fn job(id: &str, sleep_ms: u64) -> (Vec<u8>, Vec<u8>) {
    let j = Job {
        key: "k".to_owned(),
        id: id.to_owned(),
        sleep_ms,
    };
    (b"k".to_vec(), serde_json::to_vec(&j).expect("encodes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_handler_keeps_its_reservation_past_the_lease() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "renew", 1).await;
    let prefix = fresh_prefix();
    let stores = redis_stores(&prefix).await;
    let handler = Sleeper::default();
    let done = handler.done.clone();
    // Five leases long.
    produce_raw(&bootstrap, &topic, &[job("long", LEASE_MS * 5)]).await;
    let running = spawn(worker(&bootstrap, &topic, &group, &prefix).handler(handler));
    let id = format!("{group}/long");
    let probe = stores.dedup_store();
    eventually(Duration::from_secs(30), "the reservation taken", || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            rt.block_on(probe.reserve(&id, "probe", Duration::from_millis(1)))
        })
        .is_ok_and(|r| r == Reservation::InProgress)
    })
    .await;
    // While the handler runs, another holder is refused every time, well past one lease.
    let mut refused = 0;
    while done.load(Ordering::SeqCst) == 0 {
        let state = probe
            .reserve(&id, "probe", Duration::from_millis(1))
            .await
            .expect("redis answers");
        if done.load(Ordering::SeqCst) > 0 {
            break;
        }
        assert_eq!(
            state,
            Reservation::InProgress,
            "the reservation stayed held while its handler ran (probe {refused})"
        );
        refused += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused * 50 > LEASE_MS as usize * 2,
        "probed across more than two leases ({refused} probes)"
    );
    eventually(Duration::from_secs(10), "the id completed", || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            rt.block_on(probe.reserve(&id, "probe", Duration::from_millis(1)))
        })
        .is_ok_and(|r| r == Reservation::Completed)
    })
    .await;
    running.token.cancel();
    let stats = running.handle.await.expect("worker task");
    assert_eq!(stats.handled, 1, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_holders_reservation_is_taken_over_within_a_lease_and_the_wait_is_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "takeover", 1).await;
    let prefix = fresh_prefix();
    let stores = redis_stores(&prefix).await;
    // What a crashed worker leaves: its reservation, renewed last just before it died, with
    // four seconds still to run (a lease as long as that is configured there).
    let id = format!("{group}/orphan");
    assert_eq!(
        stores
            .dedup_store()
            .reserve(&id, "crashed-worker", Duration::from_secs(4))
            .await
            .expect("redis answers"),
        Reservation::Reserved
    );
    produce_raw(&bootstrap, &topic, &[job("orphan", 0)]).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let handler = Sleeper::default();
    let done = handler.done.clone();
    let running = spawn(
        worker(&bootstrap, &topic, &group, &prefix)
            .observe_listener(listener)
            .handler(handler),
    );
    eventually(
        Duration::from_secs(20),
        "/readyz naming the wait for the reservation",
        || http_get(port, "/readyz").contains("dedup reservation"),
    )
    .await;
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "not before the reservation expired"
    );
    eventually(Duration::from_secs(20), "the job taken over", || {
        done.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually(Duration::from_secs(10), "/readyz clear of the wait", || {
        !http_get(port, "/readyz").contains("dedup reservation")
    })
    .await;
    running.token.cancel();
    let stats = running.handle.await.expect("worker task");
    assert_eq!(stats.handled, 1, "{stats:?}");
    server.shutdown().await;
}
