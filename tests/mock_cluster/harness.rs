//! One run of the worker over a [`Workload`]: the cluster (librdkafka's mock cluster of three
//! brokers, or the embedded server), the topics, the effects table in Postgres, the handler,
//! the worker in this process, what a test waits for, and the final checks.

// Items are `pub` for the test module beside, not for export.
#![allow(unreachable_pub)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use steadfast::{Context, Handler, HandlerError, Ordering, Retry, Worker, WorkerStats};
use tokio_util::sync::CancellationToken;

use super::workload::{id_of, Act, Expect, Step, Workload, ATTEMPTS, TIERS};
use crate::support::mock::MockKafka;
use crate::support::{self, POSTGRES_URL};

/// Partitions of every topic of a run (one led by each broker of the mock cluster).
pub const PARTITIONS: i32 = 3;

/// Brokers of the mock cluster.
pub const BROKERS: i32 = 3;

/// Each worker's prefetch per partition (`queued.min.messages`). Small, with small fetches
/// and small produced batches, so the worker fetches the source all along a run: a fault
/// injected mid-run meets fetches of records not yet delivered.
pub const PREFETCH: usize = 10;

/// The worker's in-flight bound.
pub const MAX_IN_FLIGHT: usize = 16;

/// Where the worker runs against.
pub enum Target {
    /// librdkafka's mock cluster of [`BROKERS`] brokers.
    Mock(MockKafka),
    /// The embedded server.
    Embedded {
        server: steadfast::server::ServerHandle,
        _dir: tempfile::TempDir,
    },
}

/// What the handler saw.
#[derive(Debug, Default)]
struct Seen {
    /// Ids the handler was called for.
    called: HashSet<String>,
    /// Ids whose effect committed, in commit order.
    applied: Vec<String>,
    /// Calls that found their record's effect applied already.
    duplicates: usize,
    /// Runs per key right now.
    running: HashMap<String, usize>,
    /// Keys of which a run started while another ran.
    overlaps: Vec<String>,
}

/// A hold group's gate: its records wait at the start of their handler until it opens.
#[derive(Debug, Default)]
pub struct Gate {
    open: CancellationToken,
    reached: AtomicUsize,
}

/// The handler: does what each record says, applies effects once through
/// `cx.transaction()`, and records what it saw.
#[derive(Debug, Clone)]
pub struct Steps {
    seen: Arc<Mutex<Seen>>,
    gates: Arc<HashMap<String, Arc<Gate>>>,
    insert: Arc<str>,
}

/// Ends a run of a key (also when the handler panics or its future is dropped).
struct KeyRun {
    seen: Arc<Mutex<Seen>>,
    key: String,
}

impl Drop for KeyRun {
    fn drop(&mut self) {
        let mut s = self.seen.lock();
        if let Some(n) = s.running.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                s.running.remove(&self.key);
            }
        }
    }
}

impl Steps {
    fn enter(&self, step: &Step) -> KeyRun {
        let mut s = self.seen.lock();
        s.called.insert(step.id.clone());
        let n = s.running.entry(step.key.clone()).or_default();
        *n += 1;
        if *n > 1 {
            s.overlaps.push(step.key.clone());
        }
        KeyRun {
            seen: self.seen.clone(),
            key: step.key.clone(),
        }
    }
}

impl Handler for Steps {
    type Message = Step;
    const GROUP: &'static str = "mock-cluster";

    fn handle_message(
        &self,
        step: Step,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let this = self.clone();
        let attempt = cx.attempt();
        async move {
            let _run = this.enter(&step);
            if let Some(gate) = this.gates.get(&step.id) {
                gate.reached.fetch_add(1, AtomicOrdering::SeqCst);
                gate.open.cancelled().await;
            }
            match step.act {
                Act::Ok { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
                Act::Fail { n } if attempt <= n => {
                    return Err(HandlerError::transient(format!(
                        "{} fails at attempt {attempt} of its first {n}",
                        step.id
                    )))
                }
                Act::Fail { .. } => {}
                Act::Permanent => {
                    return Err(HandlerError::permanent(format!("{} is invalid", step.id)))
                }
                Act::Panic => panic!("{} {PANIC}", step.id),
            }
            let Some(tx) = cx.transaction().await? else {
                this.seen.lock().duplicates += 1;
                return Ok(());
            };
            let (seq, attempt) = (step.seq as i32, attempt as i32);
            tx.execute(&*this.insert, &[&step.id, &step.key, &seq, &attempt])
                .await?;
            tx.commit().await?;
            this.seen.lock().applied.push(step.id);
            Ok(())
        }
    }
}

/// A worker running in this process.
struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<WorkerStats>,
}

/// A client that reads log ends and the group's committed offsets.
struct Probe {
    consumer: BaseConsumer,
}

impl Probe {
    /// `read` again while the cluster answers with an error (a leader that just moved, a
    /// broker down or slow), for up to a minute.
    fn retrying<T>(&self, what: &str, read: impl Fn() -> rdkafka::error::KafkaResult<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match read() {
                Ok(v) => return v,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "{what}: trying again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }

    fn ends(&self, topic: &str) -> Vec<i64> {
        (0..PARTITIONS)
            .map(|p| {
                self.retrying(&format!("watermarks of {topic}[{p}]"), || {
                    self.consumer
                        .fetch_watermarks(topic, p, Duration::from_secs(30))
                })
                .1
            })
            .collect()
    }

    fn committed(&self, topic: &str) -> Vec<Option<i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(topic, p);
        }
        let c = self.retrying(&format!("committed offsets of {topic}"), || {
            self.consumer
                .committed_offsets(tpl.clone(), Duration::from_secs(30))
        });
        (0..PARTITIONS)
            .map(|p| match c.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect()
    }
}

/// One run: the cluster, the topics, the workload produced, the worker.
pub struct Run {
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    /// Tier `n`'s topic at index `n - 1`.
    pub tiers: Vec<String>,
    pub dlq: String,
    pub workload: Workload,
    /// Each record's (partition, offset), in workload order.
    pub delivered: Vec<(i32, i64)>,
    handler: Steps,
    gates: Vec<Arc<Gate>>,
    schema: String,
    db: tokio_postgres::Client,
    probe: Arc<Probe>,
    worker: Option<Running>,
    /// What each stopped worker did.
    pub stats: Vec<WorkerStats>,
    /// librdkafka properties the workers get besides the run's own.
    pub kafka: Vec<(String, String)>,
    pub started: Instant,
    /// Last: the cluster goes after the clients above.
    pub target: Target,
}

/// The workload's seed: `MOCK_CLUSTER_SEED` to replay one, else drawn.
pub fn seed() -> u64 {
    match std::env::var("MOCK_CLUSTER_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("MOCK_CLUSTER_SEED={v:?}: expected a number")),
        Err(_) => rand::random::<u64>() % 1_000_000,
    }
}

/// Prints what the run's events are, with the time since its start.
macro_rules! note {
    ($run:expr, $($arg:tt)*) => {
        println!("[{:>6.2} s] {}", $run.started.elapsed().as_secs_f64(), format!($($arg)*))
    };
}
pub(crate) use note;

impl Run {
    /// A mock cluster (or the embedded server, `mock` false) with the run's topics, the
    /// workload produced, and no worker yet. On the mock cluster partition `p` of every topic
    /// is led by broker `p + 1` and broker 1 coordinates the group.
    pub async fn new(name: &str, mock: bool, workload: Workload) -> Run {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        quiet_handler_panics();
        let started = Instant::now();
        let topic = steadfast_testkit::unique_topic(name);
        let group = format!("{topic}-group");
        let tiers: Vec<String> = (1..=TIERS)
            .map(|n| format!("{topic}.{group}.retry.{n}"))
            .collect();
        let dlq = format!("{topic}.dlq");
        let target = if mock {
            let mock = tokio::task::block_in_place(|| MockKafka::start(BROKERS));
            // The mock has no CreateTopics: every topic the worker would create is made here.
            for t in std::iter::once(&topic).chain(&tiers).chain([&dlq]) {
                mock.create_topic(t, PARTITIONS);
                for p in 0..PARTITIONS {
                    mock.leader(t, p, p % BROKERS + 1);
                }
            }
            mock.coordinator(&group, 1);
            Target::Mock(mock)
        } else {
            let dir = tempfile::tempdir().expect("temp dir");
            // The workers' session timeout (4.5 s) is below the server's default minimum.
            let server = steadfast_testkit::server_on(dir.path())
                .group_min_session_timeout(Duration::from_secs(1))
                .start()
                .await
                .expect("the server starts");
            Target::Embedded { server, _dir: dir }
        };
        let bootstrap = match &target {
            Target::Mock(m) => m.bootstrap(),
            Target::Embedded { server, .. } => server.bootstrap_servers(),
        };
        if let Target::Embedded { .. } = target {
            for t in std::iter::once(&topic).chain(&tiers).chain([&dlq]) {
                support::create_topic(&bootstrap, t, PARTITIONS).await;
            }
        }
        let schema = support::fresh_schema();
        let db = connect().await;
        db.batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.effects (n bigserial PRIMARY KEY, id text NOT NULL,
                 key text NOT NULL, seq int NOT NULL, attempt int NOT NULL)"
        ))
        .await
        .expect("effects table");
        let gates: Vec<Arc<Gate>> = workload
            .holds
            .iter()
            .map(|_| Arc::new(Gate::default()))
            .collect();
        let by_id = workload
            .holds
            .iter()
            .zip(&gates)
            .flat_map(|(ids, gate)| ids.iter().map(|id| (id.clone(), gate.clone())))
            .collect();
        let handler = Steps {
            seen: Arc::default(),
            gates: Arc::new(by_id),
            insert: Arc::from(format!(
                "INSERT INTO {schema}.effects (id, key, seq, attempt) VALUES ($1, $2, $3, $4)"
            )),
        };
        // Held records come last, produced later (`produce_held`).
        let free = workload
            .records
            .iter()
            .take_while(|r| r.held.is_none())
            .count();
        assert!(
            workload.records[free..].iter().all(|r| r.held.is_some()),
            "held records come after every other"
        );
        let delivered =
            support::produce_keyed(&bootstrap, &topic, &workload.produced()[..free], 8).await;
        let probe_bootstrap = bootstrap.clone();
        let probe_group = group.clone();
        let probe = tokio::task::spawn_blocking(move || Probe {
            consumer: support::client(&probe_bootstrap)
                .set("group.id", probe_group)
                .set("enable.auto.commit", "false")
                .create()
                .expect("probe consumer"),
        })
        .await
        .expect("probe");
        let run = Run {
            target,
            bootstrap,
            topic,
            group,
            tiers,
            dlq,
            workload,
            delivered,
            handler,
            gates,
            schema,
            db,
            probe: Arc::new(probe),
            worker: None,
            stats: Vec::new(),
            kafka: Vec::new(),
            started,
        };
        note!(
            run,
            "{} (replay: MOCK_CLUSTER_SEED={}); topic {}",
            run.workload.describe(),
            run.workload.seed,
            run.topic
        );
        run
    }

    /// The mock cluster (panics on the embedded server).
    pub fn mock(&self) -> &MockKafka {
        match &self.target {
            Target::Mock(m) => m,
            Target::Embedded { .. } => panic!("this run has no mock cluster"),
        }
    }

    /// Starts a worker of the run's group.
    pub fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "a worker runs already");
        let mut builder = Worker::builder();
        // librdkafka's debug contexts for the worker's clients (`cgrp,fetch`, say), logged
        // through tracing (`RUST_LOG=librdkafka=debug`).
        if let Ok(contexts) = std::env::var("MOCK_CLUSTER_DEBUG") {
            builder = builder.kafka_property("debug", contexts);
        }
        for (name, value) in &self.kafka {
            builder = builder.kafka_property(name, value);
        }
        let worker = builder
            .brokers(self.bootstrap.clone())
            .topic(self.topic.clone())
            .group(self.group.clone())
            .concurrency(8)
            .max_in_flight(MAX_IN_FLIGHT)
            .max_per_key(4)
            .ordering(Ordering::Strict)
            .retry(Retry::exponential(
                ATTEMPTS,
                Duration::from_millis(5),
                Duration::from_millis(20),
            ))
            .retry_topics([Duration::from_millis(200), Duration::from_millis(400)])
            .commit_interval(Duration::from_millis(100))
            .drain_timeout(Duration::from_secs(15))
            .transactions(POSTGRES_URL)
            .store_schema(format!("{}_store", self.schema))
            .kafka_property("session.timeout.ms", "4500")
            .kafka_property("heartbeat.interval.ms", "500")
            .kafka_property("queued.min.messages", PREFETCH.to_string())
            .kafka_property("max.partition.fetch.bytes", "2048")
            .handler(self.handler.clone())
            .build()
            .expect("a valid worker");
        let token = CancellationToken::new();
        let t = token.clone();
        let handle = tokio::spawn(async move { worker.run(t).await.expect("the worker runs") });
        self.worker = Some(Running { token, handle });
        note!(self, "worker started");
    }

    /// Stops the worker (drain, commit, leave); keeps its stats.
    pub async fn stop_worker(&mut self) -> WorkerStats {
        let running = self.worker.take().expect("a worker runs");
        running.token.cancel();
        let stats = running.handle.await.expect("the worker task");
        note!(self, "worker stopped: {stats:?}");
        self.stats.push(stats);
        stats
    }

    /// Records the handler was called for so far (each counted once).
    pub fn called(&self) -> usize {
        self.handler.seen.lock().called.len()
    }

    /// Waits until the handler was called for `n` records.
    pub async fn until_called(&self, n: usize, limit: Duration) {
        let what = format!("{n} records called");
        support::eventually(limit, &what, || self.called() >= n).await;
        note!(self, "{} records called", self.called());
    }

    /// Opens hold group `g`'s gate (see [`Run::produce_held`]).
    pub fn release(&self, g: usize) {
        self.gates[g].open.cancel();
        note!(self, "hold group {g} released");
    }

    /// Log ends of `topic`'s partitions.
    pub async fn ends(&self, topic: &str) -> Vec<i64> {
        let (probe, topic) = (self.probe.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || probe.ends(&topic))
            .await
            .expect("probe")
    }

    /// The group's committed offsets on `topic`'s partitions.
    pub async fn committed(&self, topic: &str) -> Vec<Option<i64>> {
        let (probe, topic) = (self.probe.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || probe.committed(&topic))
            .await
            .expect("probe")
    }

    /// Records in `topic`, over its partitions.
    pub async fn count(&self, topic: &str) -> i64 {
        self.ends(topic).await.iter().sum()
    }

    /// The tier and DLQ copies made so far, in all.
    pub async fn copies(&self) -> i64 {
        let mut n = self.count(&self.dlq).await;
        for t in &self.tiers {
            n += self.count(t).await;
        }
        n
    }

    /// Produces the held records (after every other record); waits until each waits at its
    /// gate.
    pub async fn produce_held(&mut self) {
        let produced = self.workload.produced();
        let held = &produced[self.delivered.len()..];
        let at = support::produce_keyed(&self.bootstrap, &self.topic, held, 8).await;
        self.delivered.extend(at);
        for (g, ids) in self.workload.holds.iter().enumerate() {
            let gate = &self.gates[g];
            support::eventually(
                FINISH_LIMIT,
                &format!("hold group {g}'s {} records at their gate", ids.len()),
                || gate.reached.load(AtomicOrdering::SeqCst) >= ids.len(),
            )
            .await;
        }
        note!(self, "held records produced; each waits at its gate");
    }

    /// Waits until every record produced so far is finished (each that must apply applied,
    /// each dead letter in the DLQ) and the group's commits on the source and the tiers are
    /// at their log ends.
    pub async fn until_finished(&self, limit: Duration) {
        let expect = self.workload.expectations();
        let produced = &self.workload.records[..self.delivered.len()];
        let to_apply: Vec<&str> = produced
            .iter()
            .filter(|r| matches!(expect[&r.id], Expect::Apply { .. }))
            .map(|r| r.id.as_str())
            .collect();
        let dead = (produced.len() - to_apply.len()) as i64;
        let deadline = Instant::now() + limit;
        loop {
            let missing = {
                let seen = self.handler.seen.lock();
                let applied: HashSet<&str> = seen.applied.iter().map(String::as_str).collect();
                to_apply.iter().filter(|id| !applied.contains(**id)).count()
            };
            let dlq = self.count(&self.dlq).await;
            let mut lagging = Vec::new();
            if missing == 0 && dlq >= dead {
                for t in std::iter::once(&self.topic).chain(&self.tiers) {
                    let (committed, ends) = (self.committed(t).await, self.ends(t).await);
                    if !at_ends(&committed, &ends) {
                        lagging.push(format!("{t} committed {committed:?}, ends {ends:?}"));
                    }
                }
                if lagging.is_empty() {
                    note!(
                        self,
                        "{} records finished; commits at the log ends",
                        produced.len()
                    );
                    return;
                }
            }
            if Instant::now() >= deadline {
                // What is off, by record.
                let violations = self.violations().await;
                panic!(
                    "seed {}: not finished within {limit:?}: {missing} records still to apply, {dlq} of {dead} dead letters{}; so far:\n  {}",
                    self.workload.seed,
                    if lagging.is_empty() { String::new() } else { format!("; commits behind: {}", lagging.join("; ")) },
                    violations.join("\n  ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The final checks, with the worker stopped: effects, order, dead letters, tiers, runs
    /// of a key, commits. Panics with every violation found. Drops the run's schemas.
    pub async fn check(self) {
        assert!(self.worker.is_none(), "stop the worker before the checks");
        let violations = self.violations().await;
        assert!(
            violations.is_empty(),
            "seed {} (replay with MOCK_CLUSTER_SEED={}): {} violation(s):\n  {}",
            self.workload.seed,
            self.workload.seed,
            violations.len(),
            violations.join("\n  ")
        );
        let duplicates = self.handler.seen.lock().duplicates;
        note!(
            self,
            "checks passed; {duplicates} call(s) found their effect applied already; stats {:?}",
            self.stats
        );
        let _ = self
            .db
            .batch_execute(&format!(
                "DROP SCHEMA {0} CASCADE; DROP SCHEMA IF EXISTS {0}_store CASCADE",
                self.schema
            ))
            .await;
        if let Target::Embedded { server, .. } = self.target {
            server.shutdown().await;
        }
    }

    async fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let expect = self.workload.expectations();

        // Once-only effects, at the expected attempt.
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT id, key, attempt FROM {}.effects ORDER BY n",
                    self.schema
                ),
                &[],
            )
            .await
            .expect("effects");
        let mut applied: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in &rows {
            let (id, key, attempt): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
            applied.entry(id.clone()).or_default().push(attempt);
            per_key.entry(key).or_default().push(id);
        }
        for (id, e) in &expect {
            let attempts = applied.get(id).cloned().unwrap_or_default();
            match e {
                Expect::Apply { attempt, tier } => {
                    if attempts.len() != 1 {
                        v.push(format!(
                            "{id} (through tier {tier}) applied {} times (attempts {attempts:?}), expected once",
                            attempts.len()
                        ));
                    } else if attempts[0] != *attempt as i32 {
                        v.push(format!(
                            "{id} applied at attempt {}, expected {attempt}",
                            attempts[0]
                        ));
                    }
                }
                Expect::Dlq { class, .. } if !attempts.is_empty() => v.push(format!(
                    "{id} (a dead letter, class {class}) applied {} times",
                    attempts.len()
                )),
                Expect::Dlq { .. } => {}
            }
        }
        for id in applied.keys() {
            if !expect.contains_key(id) {
                v.push(format!("unknown record {id} applied"));
            }
        }

        // Key order: per key, exactly the records that apply, in production order.
        for (key, want) in self.workload.applied_order() {
            let got = per_key.get(&key).cloned().unwrap_or_default();
            if got != want {
                v.push(format!("{key}: applied {got:?}, production order {want:?}"));
            }
        }

        // No two runs of a key at once.
        let overlaps = self.handler.seen.lock().overlaps.clone();
        if !overlaps.is_empty() {
            v.push(format!("runs of one key overlapped: keys {overlaps:?}"));
        }

        // Dead letters: exactly the expected records, once each, with their provenance.
        let (bootstrap, dlq) = (self.bootstrap.clone(), self.dlq.clone());
        let tiers = self.tiers.clone();
        let (dead, copies) = tokio::task::spawn_blocking(move || {
            let dead = support::read_all(&bootstrap, &dlq, PARTITIONS);
            let copies: Vec<_> = tiers
                .iter()
                .map(|t| support::read_all(&bootstrap, t, PARTITIONS))
                .collect();
            (dead, copies)
        })
        .await
        .expect("read back");
        let header = |r: &steadfast_testkit::Received, name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.as_deref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let first_at: HashMap<&str, (i32, i64)> = self
            .workload
            .records
            .iter()
            .zip(&self.delivered)
            .map(|(r, at)| (r.id.as_str(), *at))
            .collect();
        let mut letters: BTreeMap<String, usize> = BTreeMap::new();
        for r in &dead {
            let id = id_of(r.payload.as_deref().unwrap_or_default());
            *letters.entry(id.clone()).or_default() += 1;
            let Some(Expect::Dlq { class, attempts }) = expect.get(&id) else {
                v.push(format!(
                    "{id} dead-lettered, expected {:?}",
                    expect.get(&id)
                ));
                continue;
            };
            let (partition, offset) = first_at[id.as_str()];
            let want = [
                ("steadfast-original-topic", self.topic.clone()),
                ("steadfast-original-partition", partition.to_string()),
                ("steadfast-original-offset", offset.to_string()),
                ("steadfast-group", self.group.clone()),
                ("steadfast-error-class", (*class).to_owned()),
                ("steadfast-attempts", attempts.to_string()),
            ];
            for (name, value) in want {
                let got = header(r, name);
                if got.as_deref() != Some(value.as_str()) {
                    v.push(format!(
                        "dead letter of {id}: {name} = {got:?}, expected {value:?}"
                    ));
                }
            }
        }
        for (id, e) in &expect {
            let n = letters.get(id).copied().unwrap_or(0);
            if matches!(e, Expect::Dlq { .. }) && n != 1 {
                v.push(format!("{id} dead-lettered {n} times, expected once"));
            }
        }

        // Tiers: exactly the expected copies, once each, with the attempts spent.
        for (i, records) in copies.iter().enumerate() {
            let n = i as u32 + 1;
            let want = self.workload.tier_ids(n);
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for r in records {
                let id = id_of(r.payload.as_deref().unwrap_or_default());
                *seen.entry(id.clone()).or_default() += 1;
                let attempts = header(r, "steadfast-attempts");
                if attempts != Some((n * ATTEMPTS).to_string()) {
                    v.push(format!(
                        "tier {n} copy of {id}: steadfast-attempts {attempts:?}, expected {}",
                        n * ATTEMPTS
                    ));
                }
            }
            for (id, count) in &seen {
                if !want.contains(id) {
                    v.push(format!("{id} in tier {n}, not expected there"));
                } else if *count != 1 {
                    v.push(format!("{id} copied to tier {n} {count} times"));
                }
            }
            for id in &want {
                if !seen.contains_key(id) {
                    v.push(format!("{id} never copied to tier {n}"));
                }
            }
        }

        // Commits at the log ends, the worker stopped.
        for t in std::iter::once(&self.topic).chain(&self.tiers) {
            let (committed, ends) = (self.committed(t).await, self.ends(t).await);
            if !at_ends(&committed, &ends) {
                v.push(format!("{t}: committed {committed:?}, log ends {ends:?}"));
            }
        }
        v
    }
}

/// The message of the handler's planned panics.
const PANIC: &str = "makes the handler panic";

/// Leaves the handler's planned panics (caught by the worker) out of the test's output:
/// their backtraces would bury everything else. Other panics are reported as before.
fn quiet_handler_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planned = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.contains(PANIC));
            if !planned {
                report(info);
            }
        }));
    });
}

/// Whether every partition is committed at its log end (an empty one may have no commit).
fn at_ends(committed: &[Option<i64>], ends: &[i64]) -> bool {
    committed
        .iter()
        .zip(ends)
        .all(|(c, e)| *c == Some(*e) || (*e == 0 && c.is_none()))
}

/// How long a run may wait for records to reach their gates.
const FINISH_LIMIT: Duration = Duration::from_secs(60);

async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("start PostgreSQL on 127.0.0.1:5432 (scripts/services.sh): {e}")
        });
    tokio::spawn(connection);
    client
}
