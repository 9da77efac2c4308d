//! Store outages mid-run: a private Redis killed and restarted empty (it keeps nothing on
//! disk), and a private Postgres cluster crashed (`pg_ctl stop -m immediate`) and started
//! again, while a worker consumes a steady stream. Nothing is dead-lettered or routed to a
//! retry tier, nothing is lost, an outage spends no attempts, and the worker resumes by
//! itself. The shared services on 6379 and 5432 are never touched: each test starts its own
//! on a free port and removes it at the end.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use steadfast::handler::{Batch, BatchContext};
use steadfast::message::Json;
use steadfast::{Context, Handler, HandlerError, Message, Retry, Worker, WorkerStats};
use support::*;
use tokio_util::sync::CancellationToken;

/// An update of a key: a unique id and a version that grows per key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Update {
    id: String,
    key: String,
    version: i64,
}

impl Message for Update {
    const TOPIC: &'static str = "updates";
    type Codec = Json;
    fn key(&self) -> Vec<u8> {
        self.key.as_bytes().to_vec()
    }
    fn version(&self) -> Option<i64> {
        Some(self.version)
    }
    fn id(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

/// `count` updates over `keys` keys, ids `m0..`, versions 1, 2, ... per key.
fn updates(count: usize, keys: usize) -> Vec<Update> {
    let mut next: HashMap<String, i64> = HashMap::new();
    (0..count)
        .map(|i| {
            let key = format!("k{}", i % keys);
            let version = next.entry(key.clone()).or_default();
            *version += 1;
            Update {
                id: format!("m{i}"),
                key,
                version: *version,
            }
        })
        .collect()
}

/// Produces `updates` to partition 0 of `topic` in order, `per_tick` records every `tick`
/// (a steady stream rather than one burst), each tick's records acknowledged before the next.
fn produce_paced(
    bootstrap: &str,
    topic: &str,
    updates: Vec<Update>,
    per_tick: usize,
    tick: Duration,
) -> tokio::task::JoinHandle<()> {
    let producer: FutureProducer = client(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let topic = topic.to_owned();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(tick);
        for chunk in updates.chunks(per_tick) {
            ticks.tick().await;
            let mut pending = Vec::with_capacity(chunk.len());
            for u in chunk {
                let payload = serde_json::to_vec(u).expect("encodes");
                let record = FutureRecord::to(&topic)
                    .key(u.key.as_bytes())
                    .payload(&payload)
                    .partition(0);
                pending.push(
                    producer
                        .send_result(record)
                        .map_err(|(e, _)| e)
                        .expect("queued"),
                );
            }
            for p in pending {
                p.await.expect("delivery").expect("acknowledged");
            }
        }
    })
}

/// A private Postgres cluster (`initdb` in a temp dir, run as the `postgres` user) on a free
/// port: crashed with `pg_ctl stop -m immediate`, started again on the same port, removed
/// with the guard.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    running: bool,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max_by_key(|bin| {
                bin.parent()
                    .and_then(Path::file_name)
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("no /usr/lib/postgresql/<version>/bin/initdb: install PostgreSQL (apt-get install postgresql)");
        let dir = tempfile::tempdir().expect("temp dir");
        run(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path()));
        let pg = PrivatePostgres {
            dir,
            bin,
            port: free_port(),
            running: false,
        };
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg.bin.join("initdb"))
            .arg("-D")
            .arg(pg.data())
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]));
        let mut pg = pg;
        pg.restart();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data());
        cmd
    }

    /// Starts the cluster on its port (after a crash: with recovery) and waits until it
    /// accepts connections.
    fn restart(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .pg_ctl()
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "start"]));
        self.running = true;
    }

    /// `pg_ctl stop -m immediate`: every backend is killed without a checkpoint, as in a
    /// crash; the next start recovers from the WAL.
    fn crash(&mut self) {
        if self.running {
            run(self.pg_ctl().args(["-m", "immediate", "-w", "stop"]));
            self.running = false;
        }
    }

    async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connects to the private Postgres");
        tokio::spawn(connection);
        client
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .pg_ctl()
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `cmd` to its end; panics with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One handler call.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    attempt: u32,
    started: Instant,
    /// `Ok(())`, or the error the handler returned.
    result: Result<(), HandlerError>,
    /// The transactional path found nothing to do (a duplicate or stale message).
    skipped: bool,
}

#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn all(&self) -> Vec<Call> {
        self.0.lock().clone()
    }
    fn len(&self) -> usize {
        self.0.lock().len()
    }
    fn push(&self, call: Call) {
        self.0.lock().push(call);
    }
    /// Ids with a successful call.
    fn succeeded(&self) -> HashSet<String> {
        self.0
            .lock()
            .iter()
            .filter(|c| c.result.is_ok())
            .map(|c| c.id.clone())
            .collect()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    server: steadfast::server::ServerHandle,
    bootstrap: String,
    topic: String,
    group: String,
    /// The stores' Redis key prefix.
    prefix: String,
}

impl Setup {
    async fn new(prefix: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = steadfast_testkit::start_server(dir.path()).await;
        let bootstrap = server.bootstrap_servers();
        let topic = steadfast_testkit::unique_topic(prefix);
        create_topic(&bootstrap, &topic, 1).await;
        Setup {
            _dir: dir,
            server,
            bootstrap,
            group: format!("{topic}-group"),
            topic,
            prefix: format!("sf-outage-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn worker(&self) -> steadfast::WorkerBuilder {
        Worker::builder()
            .brokers(self.bootstrap.clone())
            .topic(self.topic.clone())
            .group(self.group.clone())
            .concurrency(16)
            .commit_interval(Duration::from_millis(100))
            // Three attempts in place, then a retry tier, then the DLQ: an outage that spent
            // attempts would show attempt numbers above 1, tier copies or dead letters.
            .retry(Retry::exponential(
                3,
                Duration::from_millis(10),
                Duration::from_millis(50),
            ))
            .retry_topics([Duration::from_secs(1)])
            .dead_letter_topic(format!("{}.dlq", self.topic))
            .store_schema(format!("sf_outage_{}", uuid::Uuid::new_v4().simple()))
            .store_key_prefix(self.prefix.clone())
    }

    /// Records in the retry tier and the dead-letter topic.
    fn routed(&self) -> (i64, i64) {
        (
            log_end(
                &self.bootstrap,
                &format!("{}.{}.retry.1", self.topic, self.group),
            ),
            log_end(&self.bootstrap, &format!("{}.dlq", self.topic)),
        )
    }

    async fn commit_reaches(&self, end: i64) {
        eventually(
            Duration::from_secs(15),
            "the committed offset to reach the log end",
            || committed(&self.bootstrap, &self.group, &self.topic).0 == Some(end),
        )
        .await;
    }
}

fn spawn<H: Handler>(
    builder: steadfast::WorkerBuilder<H>,
) -> (CancellationToken, tokio::task::JoinHandle<WorkerStats>) {
    let token = CancellationToken::new();
    let w = builder.build().expect("valid worker");
    let t = token.clone();
    let handle = tokio::spawn(async move { w.run(t).await.expect("worker runs") });
    (token, handle)
}

/// Waits until `done` holds for the calls, or panics after `limit`.
async fn wait_calls(calls: &Calls, limit: Duration, what: &str, done: impl Fn(&Calls) -> bool) {
    let deadline = Instant::now() + limit;
    while !done(calls) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} calls, {} ids handled",
            calls.len(),
            calls.succeeded().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// While the store is down, for `window`: no handler call starts (once those already past
/// the store calls have finished) and nothing is routed.
async fn assert_handling_stops(s: &Setup, calls: &Calls, down_at: Instant, window: Duration) {
    // Calls that got past every store call before the kill may still start and finish.
    let settle = Duration::from_millis(300);
    tokio::time::sleep(settle).await;
    let settled = calls.len();
    let until = down_at + window;
    while Instant::now() < until {
        assert_eq!(s.routed(), (0, 0), "an outage routed a message");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late: Vec<Call> = calls
        .all()
        .into_iter()
        .filter(|c| c.started > down_at + settle)
        .collect();
    assert!(
        late.is_empty(),
        "handler calls started while the store was down: {late:?}"
    );
    assert_eq!(calls.len(), settled, "handling went on during the outage");
}

/// Stops the first call of one update in the middle of its work until the test releases
/// it: the test takes its store down in that moment.
#[derive(Debug, Clone)]
struct Hold {
    id: Arc<str>,
    holding: CancellationToken,
    release: CancellationToken,
}

impl Hold {
    fn new(id: &str) -> Hold {
        Hold {
            id: Arc::from(id),
            holding: CancellationToken::new(),
            release: CancellationToken::new(),
        }
    }
    /// This hold when `id` is the held update's and its first call has not come yet.
    fn of(&self, id: &str) -> Option<Hold> {
        (*self.id == *id && !self.holding.is_cancelled()).then(|| self.clone())
    }
    /// Says the call is held, then waits for the release.
    async fn wait(&self) {
        self.holding.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.release.cancelled()).await;
    }
    /// Waits until the call is held.
    async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.holding.cancelled())
            .await
            .expect("the held update was reached");
    }
}

/// Records every call; each update takes a millisecond of "work", the held one until it is
/// released.
#[derive(Debug, Clone)]
struct RedisGuarded {
    calls: Calls,
    hold: Hold,
}

impl Handler for RedisGuarded {
    type Message = Update;
    const GROUP: &'static str = "outage-redis";

    fn handle_message(
        &self,
        update: Update,
        cx: &Context,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
        let calls = self.calls.clone();
        let attempt = cx.attempt();
        let hold = self.hold.of(&update.id);
        async move {
            let started = Instant::now();
            tokio::time::sleep(Duration::from_millis(1)).await;
            if let Some(hold) = hold {
                hold.wait().await;
            }
            calls.push(Call {
                id: update.id,
                attempt,
                started,
                result: Ok(()),
                skipped: false,
            });
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_mid_run_loses_nothing() {
    init_tracing();
    const N: usize = 2_000;
    let mut redis = tokio::task::block_in_place(PrivateRedis::start);
    let s = Setup::new("redis-outage").await;
    let held = format!("m{}", N / 3);
    let handler = RedisGuarded {
        calls: Calls::default(),
        hold: Hold::new(&held),
    };
    let (calls, hold) = (handler.calls.clone(), handler.hold.clone());
    let (token, worker) = spawn(
        s.worker()
            .key_lock(redis.url(), Duration::from_secs(1))
            .dedup(redis.url())
            .stale_drop(redis.url())
            .handler(handler),
    );
    let produced = updates(N, 100);
    let ids: HashSet<String> = produced.iter().map(|u| u.id.clone()).collect();
    // 2,000 updates over about 8 s.
    let producing = produce_paced(
        &s.bootstrap,
        &s.topic,
        produced,
        25,
        Duration::from_millis(100),
    );

    // About a third in, the handler of update `held` is running under its key's lease.
    hold.reached().await;
    tokio::task::block_in_place(|| redis.kill());
    let down_at = Instant::now();
    let at_kill = calls.len();
    // It finishes during the outage: its lease cannot be renewed (1 s), so it is run again
    // under a new grant once Redis is back.
    hold.release.cancel();
    assert_handling_stops(&s, &calls, down_at, Duration::from_secs(3)).await;
    let during = calls.len();
    tokio::task::block_in_place(|| redis.restart());
    let back_at = Instant::now();

    wait_calls(
        &calls,
        Duration::from_secs(40),
        "every update handled",
        |c| c.succeeded().len() >= N,
    )
    .await;
    let resumed_in = calls
        .all()
        .iter()
        .filter(|c| c.started > back_at)
        .map(|c| c.started - back_at)
        .min()
        .expect("calls after the restart");
    producing.await.expect("producer");
    let end = log_end(&s.bootstrap, &s.topic);
    assert_eq!(end, N as i64);
    s.commit_reaches(end).await;
    token.cancel();
    let stats = worker.await.expect("worker task");

    let all = calls.all();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for c in &all {
        *per_id.entry(c.id.as_str()).or_default() += 1;
    }
    let twice: Vec<(&str, usize)> = per_id
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    println!(
        "handled {at_kill} before the kill, {} during the outage (in flight at the kill), \
         first call {resumed_in:?} after the restart; {stats:?}; handled more than once: {twice:?}",
        during - at_kill
    );
    assert_eq!(
        calls.succeeded(),
        ids,
        "exactly the produced ids were handled"
    );
    // Redis came back empty: dedup, versions and locks forgot everything, so a second call
    // of an id would not be caught. None may happen all the same, and none is allowed: an
    // offset finishes only after its id is completed in the dedup store (the completion
    // waits for Redis to return), finished offsets are not delivered again (no rebalance
    // happens here), and a run repeated after the outage because its lease ran out while
    // Redis was down finds its id completed (after the restart) and reports the earlier
    // success instead of calling the handler again.
    assert!(twice.is_empty(), "ids handled more than once: {twice:?}");
    assert!(
        all.iter().all(|c| c.attempt == 1),
        "an outage spent attempts"
    );
    assert_eq!(
        (stats.routed_to_tier, stats.dead_lettered),
        (0, 0),
        "{stats:?}"
    );
    // Also those repeated runs count as handled, not as dropped duplicates: each update
    // was handled once, and its key's version advanced.
    assert_eq!(
        (stats.handled, stats.dropped),
        (N as u64, 0),
        "every update reported handled once: {stats:?}"
    );
    let versions = steadfast::store::redis::RedisStores::connect(&redis.url(), &s.prefix)
        .await
        .expect("the private redis answers")
        .version_store();
    for key in 0..100 {
        let store_key = format!("{}/{}/k{key}", s.group, s.topic);
        assert_eq!(
            steadfast::store::VersionStore::get(&versions, &store_key)
                .await
                .expect("version"),
            Some(20),
            "the last version of k{key} is recorded after the restart"
        );
    }
    assert_eq!(s.routed(), (0, 0), "the retry tier and the DLQ stay empty");
    s.server.shutdown().await;
}

/// Writes one effect row per update inside the handler's transaction and records the
/// attempt number of every call. The first call of the held update stops inside its
/// transaction, its row written and not committed: the test crashes Postgres in that moment.
#[derive(Debug, Clone)]
struct Transactional {
    calls: Calls,
    insert: Arc<str>,
    hold: Hold,
}

impl Handler for Transactional {
    type Message = Update;
    const GROUP: &'static str = "outage-postgres";

    fn handle_message(
        &self,
        update: Update,
        cx: &Context,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
        let calls = self.calls.clone();
        let insert = self.insert.clone();
        let hold = self.hold.of(&update.id);
        async move {
            let started = Instant::now();
            let attempt = cx.attempt();
            let mut skipped = false;
            let result = async {
                let Some(tx) = cx.transaction().await? else {
                    skipped = true;
                    return Ok(());
                };
                let attempt_column = i32::try_from(attempt).unwrap_or(i32::MAX);
                tx.execute(&*insert, &[&update.id, &attempt_column]).await?;
                if let Some(hold) = &hold {
                    hold.wait().await;
                }
                tx.commit().await
            }
            .await;
            calls.push(Call {
                id: update.id,
                attempt,
                started,
                result: result.clone(),
                skipped,
            });
            result
        }
    }
}

/// The same as [`Transactional`] as a batch handler: one transaction per batch, one effect
/// row per record it applies; the batch holding the held update stops before its commit.
#[derive(Debug, Clone, steadfast::Handler)]
#[handler(message = Update, group = "outage-postgres-batch", batch)]
struct BatchTransactional {
    calls: Calls,
    insert: Arc<str>,
    hold: Hold,
}

impl BatchTransactional {
    async fn handle_batch(
        &self,
        batch: Batch<Update>,
        cx: &BatchContext,
    ) -> Result<(), HandlerError> {
        let started = Instant::now();
        let hold = batch
            .iter()
            .find_map(|item| self.hold.of(&item.message().id));
        let mut applied = HashSet::new();
        let result = async {
            let Some(tx) = cx.transaction().await? else {
                return Ok(());
            };
            for item in batch.iter().filter(|item| tx.applies(item)) {
                let attempt = i32::try_from(item.context().attempt()).unwrap_or(i32::MAX);
                tx.execute(&*self.insert, &[&item.message().id, &attempt])
                    .await?;
                applied.insert(item.index());
            }
            if let Some(hold) = &hold {
                hold.wait().await;
            }
            tx.commit().await
        }
        .await;
        for item in &batch {
            self.calls.push(Call {
                id: item.message().id.clone(),
                attempt: item.context().attempt(),
                started,
                result: result.clone(),
                skipped: result.is_ok() && !applied.contains(&item.index()),
            });
        }
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_inside_the_handlers_transaction_spends_no_attempt() {
    postgres_outage_inside_a_transaction(|calls, insert, hold| Transactional {
        calls,
        insert,
        hold,
    })
    .await;
}

/// The same with a batch handler: the batch whose transaction the crash breaks, and the
/// batches that fail while Postgres is down, are handled again in full without spending an
/// attempt, and every record is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_inside_a_batchs_transaction_spends_no_attempt() {
    postgres_outage_inside_a_transaction(|calls, insert, hold| BatchTransactional {
        calls,
        insert,
        hold,
    })
    .await;
}

/// A private Postgres crashed while the held update's transaction is open (its row written,
/// not committed) and started again 3 s later, with `make(calls, insert, hold)` handling a
/// paced stream: nothing routed, nothing lost or applied twice, no attempt spent.
async fn postgres_outage_inside_a_transaction<H: Handler<Message = Update>>(
    make: impl FnOnce(Calls, Arc<str>, Hold) -> H,
) {
    init_tracing();
    const N: usize = 1_500;
    let mut pg = tokio::task::block_in_place(PrivatePostgres::start);
    let effects = format!("fx_{}", uuid::Uuid::new_v4().simple());
    pg.connect()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {effects}; CREATE TABLE {effects}.effects (id text NOT NULL, attempt int NOT NULL)"
        ))
        .await
        .expect("effects table");
    let s = Setup::new("pg-outage").await;
    let held = format!("m{}", N / 3);
    let hold = Hold::new(&held);
    let calls = Calls::default();
    let handler = make(
        calls.clone(),
        Arc::from(format!(
            "INSERT INTO {effects}.effects (id, attempt) VALUES ($1, $2)"
        )),
        hold.clone(),
    );
    let (token, worker) = spawn(
        s.worker()
            .transactions(pg.url())
            .stale_drop(pg.url())
            .handler(handler),
    );
    let produced = updates(N, 100);
    let ids: HashSet<String> = produced.iter().map(|u| u.id.clone()).collect();
    // 1,500 updates over about 6 s.
    let producing = produce_paced(
        &s.bootstrap,
        &s.topic,
        produced,
        25,
        Duration::from_millis(100),
    );

    // About a third in, update `held` has written its row and waits to commit.
    hold.reached().await;
    tokio::task::block_in_place(|| pg.crash());
    let down_at = Instant::now();
    hold.release.cancel();
    let done_at_crash = calls.succeeded().len();
    // Calls fail while it is down (the held one at its commit, others at the start of their
    // transaction) and are tried again without spending attempts; none may be routed.
    let until = down_at + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(s.routed(), (0, 0), "an outage routed a message");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done_while_down = calls.succeeded().len() - done_at_crash;
    tokio::task::block_in_place(|| pg.restart());

    wait_calls(
        &calls,
        Duration::from_secs(40),
        "every update handled",
        |c| c.succeeded().len() >= N,
    )
    .await;
    producing.await.expect("producer");
    let end = log_end(&s.bootstrap, &s.topic);
    assert_eq!(end, N as i64);
    s.commit_reaches(end).await;
    token.cancel();
    let stats = worker.await.expect("worker task");

    let all = calls.all();
    let failed = all.iter().filter(|c| c.result.is_err()).count();
    let skipped: Vec<&str> = all
        .iter()
        .filter(|c| c.skipped)
        .map(|c| c.id.as_str())
        .collect();
    let classes: HashSet<steadfast::dlq::ErrorClass> = all
        .iter()
        .filter_map(|c| c.result.as_ref().err().map(HandlerError::class))
        .collect();
    println!(
        "{done_at_crash} done at the crash, {done_while_down} while down; {} calls, {failed} \
         failed (classes {classes:?}), skipped as already applied: {skipped:?}; {stats:?}",
        all.len()
    );
    let rows = pg
        .connect()
        .await
        .query(
            &format!("SELECT id, count(*) FROM {effects}.effects GROUP BY id"),
            &[],
        )
        .await
        .expect("effect rows");
    let rows: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let repeated: Vec<(&String, &i64)> = rows.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        repeated.is_empty(),
        "effects applied more than once: {repeated:?}"
    );
    assert_eq!(
        rows.keys().cloned().collect::<HashSet<String>>(),
        ids,
        "one effect row per produced update"
    );
    let spent: Vec<(&str, u32)> = all
        .iter()
        .filter(|c| c.attempt != 1)
        .map(|c| (c.id.as_str(), c.attempt))
        .collect();
    assert!(
        spent.is_empty(),
        "the outage spent attempts (attempt numbers above 1): {spent:?}"
    );
    let held_calls: Vec<&Call> = all.iter().filter(|c| c.id == held).collect();
    assert!(
        matches!(
            held_calls.first().map(|c| &c.result),
            Some(Err(HandlerError::Unavailable(_)))
        ),
        "the held transaction's commit failed as an outage: {held_calls:?}"
    );
    assert_eq!(
        (stats.routed_to_tier, stats.dead_lettered),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(
        stats.handled + stats.dropped,
        N as u64,
        "every update acknowledged once: {stats:?}"
    );
    assert_eq!(s.routed(), (0, 0), "the retry tier and the DLQ stay empty");
    s.server.shutdown().await;
}
