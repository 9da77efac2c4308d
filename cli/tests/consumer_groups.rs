//! Consumer groups through the real librdkafka `StreamConsumer` against the in-process
//! server: exactly-once consumption by committed offsets with the range and cooperative-sticky
//! assignors, rebalances when members join and leave mid-stream, expulsion of a member that
//! stops heartbeating (a SIGKILLed child process), static membership, committed offsets
//! across a server restart, `steadfast offsets reset --to-time`, and the CLI consumer's
//! final commit on SIGTERM.
//!
//! Every scenario uses a 6-partition topic with 60,000 keyed messages. Members store the
//! offset of each message after processing it (`enable.auto.offset.store=false`) and commit
//! automatically; a shared [`Tracker`] records every assignment, revocation and processed
//! offset, and flags a partition owned by two members at once or processed by a member that
//! does not own it.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use steadfast::server::ServerHandle;
use steadfast_testkit::*;

const PARTITIONS: i32 = 6;
const MESSAGES: usize = 60_000;
/// Session timeout of the test members; the server accepts down to 500 ms.
const SESSION_TIMEOUT_MS: u32 = 3_000;
const STEADFAST: &str = env!("CARGO_BIN_EXE_steadfast");

// ---------------------------------------------------------------------------------------
// Server, topic, producer, probes
// ---------------------------------------------------------------------------------------

/// An in-process server on its own runtime, so test threads may block freely.
struct TestServer {
    rt: tokio::runtime::Runtime,
    server: Option<ServerHandle>,
    dir: tempfile::TempDir,
}

impl TestServer {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = rt.block_on(Self::launch(dir.path()));
        TestServer {
            rt,
            server: Some(server),
            dir,
        }
    }

    async fn launch(dir: &Path) -> ServerHandle {
        server_on(dir)
            .default_partitions(PARTITIONS)
            .group_min_session_timeout(Duration::from_millis(500))
            .start()
            .await
            .expect("server starts")
    }

    fn handle(&self) -> &ServerHandle {
        self.server.as_ref().expect("server running")
    }

    fn bootstrap(&self) -> String {
        self.handle().bootstrap_servers()
    }

    /// Shuts the server down and starts it again on the same data directory (new port).
    fn restart(&mut self) {
        let server = self.server.take().expect("server running");
        self.rt.block_on(server.shutdown());
        self.server = Some(self.rt.block_on(Self::launch(self.dir.path())));
    }

    fn create_topic(&self, topic: &str) {
        self.rt
            .block_on(create_topic(&self.bootstrap(), topic, PARTITIONS, &[]));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
    }
}

/// Produces messages `range` (keyed `key-{i % 1000}`, payload `m{i}`), with timestamps from
/// `timestamp` if given; returns index → (partition, offset).
fn produce(
    bootstrap: &str,
    topic: &str,
    range: std::ops::Range<usize>,
    timestamp: Option<&dyn Fn(usize) -> i64>,
) -> HashMap<usize, (i32, i64)> {
    let producer = logged_producer(bootstrap, &[("acks", "all"), ("linger.ms", "5")]);
    let expected = range.len();
    for i in range {
        let key = format!("key-{}", i % 1000);
        let payload = format!("m{i}");
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(i))
            .key(key.as_bytes())
            .payload(payload.as_bytes());
        if let Some(ts) = timestamp {
            record = record.timestamp(ts(i));
        }
        send_record(&producer, record);
    }
    let delivered = delivered_ok(&producer);
    assert_eq!(delivered.len(), expected, "every message delivered");
    delivered
}

/// A client that reads a group's committed offsets and membership without joining it.
struct GroupProbe {
    consumer: BaseConsumer,
    group: String,
    topic: String,
}

impl GroupProbe {
    fn new(bootstrap: &str, group: &str, topic: &str) -> Self {
        let consumer = client_config(bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("probe consumer");
        GroupProbe {
            consumer,
            group: group.to_owned(),
            topic: topic.to_owned(),
        }
    }

    /// Committed offset per partition (`None`: nothing committed).
    fn try_committed(&self) -> Result<Vec<Option<i64>>, String> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&self.topic, p);
        }
        let result = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        (0..PARTITIONS)
            .map(|p| {
                let e = result
                    .find_partition(&self.topic, p)
                    .ok_or_else(|| format!("partition {p} missing from OffsetFetch"))?;
                e.error().map_err(|err| format!("partition {p}: {err}"))?;
                Ok(match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                })
            })
            .collect()
    }

    fn committed(&self) -> Vec<Option<i64>> {
        self.try_committed()
            .unwrap_or_else(|e| panic!("committed offsets of {}: {e}", self.group))
    }

    /// The log-end offset of every partition.
    fn log_ends(&self) -> Vec<i64> {
        (0..PARTITIONS)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    }

    /// The group's state per the coordinator (DescribeGroups).
    fn try_state(&self) -> Result<String, String> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        Ok(list
            .groups()
            .iter()
            .filter(|g| g.name() == self.group)
            .map(|g| g.state().to_owned())
            .max()
            .unwrap_or_default())
    }

    /// Members of the group per the coordinator (DescribeGroups).
    fn try_members(&self) -> Result<usize, String> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        Ok(list
            .groups()
            .iter()
            .filter(|g| g.name() == self.group)
            .map(|g| g.members().len())
            .max()
            .unwrap_or(0))
    }
}

/// Polls `condition` every 25 ms until it holds; panics with `what` and `context()` once
/// `timeout` has passed.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn unique_group(prefix: &str) -> String {
    unique_topic(prefix)
}

// ---------------------------------------------------------------------------------------
// Tracking members
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum EventKind {
    Assign,
    Revoke,
}

#[derive(Debug, Clone)]
struct Event {
    member: String,
    kind: EventKind,
    partitions: Vec<i32>,
    at: Instant,
}

#[derive(Default)]
struct TrackerState {
    /// Partition → the member owning it now.
    owner: HashMap<i32, String>,
    /// Member → the partitions it owns now.
    owned: HashMap<String, BTreeSet<i32>>,
    events: Vec<Event>,
    /// (partition, offset) → how many times it was processed.
    processed: HashMap<(i32, i64), u32>,
    /// Partition → the first offset processed on it (by any member).
    first: HashMap<i32, i64>,
    /// (member, partition) → the first offset that member processed on it.
    first_by_member: HashMap<(String, i32), i64>,
    /// Member → how many messages it processed.
    count_by_member: HashMap<String, usize>,
    violations: Vec<String>,
    errors: Vec<String>,
}

/// Shared record of what every in-process member of a test did.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn assign(&self, member: &str, partitions: Vec<i32>) {
        let mut s = self.lock();
        for &p in &partitions {
            if let Some(other) = s.owner.get(&p) {
                if other != member {
                    let v = format!("partition {p} assigned to {member} while owned by {other}");
                    s.violations.push(v);
                }
            }
            s.owner.insert(p, member.to_owned());
            s.owned.entry(member.to_owned()).or_default().insert(p);
        }
        s.events.push(Event {
            member: member.to_owned(),
            kind: EventKind::Assign,
            partitions,
            at: Instant::now(),
        });
    }

    fn revoke(&self, member: &str, partitions: Vec<i32>) {
        let mut s = self.lock();
        for &p in &partitions {
            if s.owner.get(&p).map(String::as_str) == Some(member) {
                s.owner.remove(&p);
            }
            if let Some(owned) = s.owned.get_mut(member) {
                owned.remove(&p);
            }
        }
        s.events.push(Event {
            member: member.to_owned(),
            kind: EventKind::Revoke,
            partitions,
            at: Instant::now(),
        });
    }

    /// A closed member owns nothing any more.
    fn closed(&self, member: &str) {
        let mut s = self.lock();
        let owned = s.owned.remove(member).unwrap_or_default();
        for p in owned {
            if s.owner.get(&p).map(String::as_str) == Some(member) {
                s.owner.remove(&p);
            }
        }
    }

    fn process(&self, member: &str, partition: i32, offset: i64) {
        let mut s = self.lock();
        if s.owner.get(&partition).map(String::as_str) != Some(member) {
            let owner = s.owner.get(&partition).cloned();
            s.violations.push(format!(
                "{member} processed {partition}/{offset} while {owner:?} owned the partition"
            ));
        }
        *s.processed.entry((partition, offset)).or_default() += 1;
        s.first.entry(partition).or_insert(offset);
        s.first_by_member
            .entry((member.to_owned(), partition))
            .or_insert(offset);
        *s.count_by_member.entry(member.to_owned()).or_default() += 1;
    }

    fn violation(&self, text: String) {
        self.lock().violations.push(text);
    }

    fn error(&self, text: String) {
        self.lock().errors.push(text);
    }

    fn owned(&self, member: &str) -> BTreeSet<i32> {
        self.lock().owned.get(member).cloned().unwrap_or_default()
    }

    /// Whether each of `members` owns exactly `per_member[i]` partitions and together they
    /// own all of them.
    fn balanced(&self, members: &[&str], per_member: &[usize]) -> bool {
        let s = self.lock();
        let mut union = BTreeSet::new();
        for (m, n) in members.iter().zip(per_member) {
            let owned = s.owned.get(*m).cloned().unwrap_or_default();
            if owned.len() != *n {
                return false;
            }
            union.extend(owned);
        }
        union.len() == PARTITIONS as usize
    }

    /// Whether `members` together own every partition.
    fn covered_by(&self, members: &[&str]) -> bool {
        let s = self.lock();
        let union: BTreeSet<i32> = members
            .iter()
            .flat_map(|m| s.owned.get(*m).cloned().unwrap_or_default())
            .collect();
        union.len() == PARTITIONS as usize
    }

    /// Whether every offset below `ends[p]` was processed at least once.
    fn processed_through(&self, ends: &[i64]) -> bool {
        let s = self.lock();
        ends.iter()
            .enumerate()
            .all(|(p, end)| (0..*end).all(|o| s.processed.contains_key(&(p as i32, o))))
    }

    fn events_since(&self, index: usize) -> Vec<Event> {
        self.lock().events[index..].to_vec()
    }

    fn event_count(&self) -> usize {
        self.lock().events.len()
    }

    fn assert_no_violations(&self) {
        let s = self.lock();
        assert!(
            s.violations.is_empty(),
            "ownership violations:\n{}\nevents:\n{}",
            s.violations.join("\n"),
            describe_events(&s.events)
        );
    }

    fn summary(&self) -> String {
        let s = self.lock();
        format!(
            "processed {} distinct offsets; owned now: {:?}\nviolations: {:?}\nconsumer errors: {:?}\nevents:\n{}",
            s.processed.len(),
            s.owned,
            s.violations,
            s.errors.iter().take(20).collect::<Vec<_>>(),
            describe_events(&s.events)
        )
    }
}

fn describe_events(events: &[Event]) -> String {
    let start = events.first().map(|e| e.at);
    events
        .iter()
        .map(|e| {
            format!(
                "  +{:>6} ms {} {:?} {:?}",
                start.map_or(0, |s| e.at.duration_since(s).as_millis()),
                e.member,
                e.kind,
                e.partitions
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Records a member's rebalances in the shared tracker.
struct TrackingContext {
    member: String,
    topic: String,
    tracker: Arc<Tracker>,
}

impl TrackingContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        let mut ps: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        ps.sort_unstable();
        ps
    }
}

impl rdkafka::ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            // Owned from before the first fetch...
            Rebalance::Assign(tpl) => self.tracker.assign(&self.member, self.partitions(tpl)),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => self
                .tracker
                .error(format!("{}: rebalance error: {e}", self.member)),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // ...until the revocation is complete.
        if let Rebalance::Revoke(tpl) = rebalance {
            self.tracker.revoke(&self.member, self.partitions(tpl))
        }
    }
}

/// How a member is configured.
#[derive(Clone, Default)]
struct MemberSpec {
    /// `partition.assignment.strategy` (librdkafka's default when `None`).
    strategy: Option<&'static str>,
    /// `group.instance.id` (static membership).
    instance_id: Option<String>,
    /// `client.id`.
    client_id: Option<String>,
    /// Session timeout (default [`SESSION_TIMEOUT_MS`]).
    session_timeout_ms: Option<u32>,
    /// Per partition: process (and store) only offsets below this; later ones are ignored.
    limit: Option<Vec<i64>>,
    /// Lets the test hold the member between messages.
    gate: Option<Arc<Gate>>,
}

/// How many more messages a member may process: negative is unlimited; at zero the member
/// parks between messages and stops polling (as a member busy elsewhere would) until the
/// allowance is raised.
struct Gate {
    allowance: AtomicI64,
    parked: AtomicBool,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            allowance: AtomicI64::new(-1),
            parked: AtomicBool::new(false),
        })
    }

    /// Holds the member and waits until it is parked (not inside a poll).
    fn hold(&self) {
        self.allowance.store(0, Ordering::SeqCst);
        wait_for(
            "a member to park",
            Duration::from_secs(10),
            || self.parked.load(Ordering::SeqCst),
            String::new,
        );
    }

    /// Lets the member process `n` more messages (negative: unlimited).
    fn allow(&self, n: i64) {
        self.parked.store(false, Ordering::SeqCst);
        self.allowance.store(n, Ordering::SeqCst);
    }

    /// Whether the allowance is used up.
    fn exhausted(&self) -> bool {
        self.allowance.load(Ordering::SeqCst) == 0
    }
}

/// A group member: a `StreamConsumer` on its own thread and current-thread runtime.
struct Member {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    fn spawn(
        bootstrap: &str,
        group: &str,
        topic: &str,
        name: &str,
        spec: MemberSpec,
        tracker: &Arc<Tracker>,
    ) -> Member {
        let mut config = client_config(bootstrap);
        config
            .set("group.id", group)
            .set("client.id", spec.client_id.as_deref().unwrap_or(name))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "200")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                spec.session_timeout_ms
                    .unwrap_or(SESSION_TIMEOUT_MS)
                    .to_string(),
            )
            .set("heartbeat.interval.ms", "300")
            .set("fetch.wait.max.ms", "100");
        if let Some(strategy) = spec.strategy {
            config.set("partition.assignment.strategy", strategy);
        }
        if let Some(id) = &spec.instance_id {
            config.set("group.instance.id", id);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let context = TrackingContext {
            member: name.to_owned(),
            topic: topic.to_owned(),
            tracker: tracker.clone(),
        };
        let thread = {
            let (stop, tracker, topic, name) = (
                stop.clone(),
                tracker.clone(),
                topic.to_owned(),
                name.to_owned(),
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("member runtime");
                rt.block_on(async {
                    let consumer: StreamConsumer<TrackingContext> = config
                        .create_with_context(context)
                        .expect("member consumer");
                    consumer.subscribe(&[&topic]).expect("subscribe");
                    while !stop.load(Ordering::SeqCst) {
                        if let Some(gate) = &spec.gate {
                            if gate.exhausted() {
                                // Held: no poll (the member neither fetches nor rejoins).
                                gate.parked.store(true, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                continue;
                            }
                        }
                        let m =
                            match tokio::time::timeout(Duration::from_millis(100), consumer.recv())
                                .await
                            {
                                Err(_) => continue,
                                Ok(Err(e)) => {
                                    tracker.error(format!("{name}: {e}"));
                                    continue;
                                }
                                Ok(Ok(m)) => m,
                            };
                        let (p, o) = (m.partition(), m.offset());
                        if let Some(limit) = &spec.limit {
                            if o >= limit[p as usize] {
                                continue;
                            }
                        }
                        tracker.process(&name, p, o);
                        if let Err(e) = consumer.store_offset_from_message(&m) {
                            tracker.violation(format!("{name}: storing {p}/{o}: {e}"));
                        }
                        if let Some(gate) = &spec.gate {
                            let _ = gate.allowance.fetch_update(
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                                |a| (a > 0).then(|| a - 1),
                            );
                        }
                    }
                    // Close: revoke, final commit, leave the group (static members stay).
                    drop(consumer);
                    tracker.closed(&name);
                });
            })
        };
        Member {
            name: name.to_owned(),
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the consumer (final commit; dynamic members leave the group) and waits.
    fn close(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("member thread");
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // On a failed test: let the thread wind down on its own.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits until the group's committed offsets equal the log ends.
fn wait_committed(probe: &GroupProbe, ends: &[i64], tracker: &Tracker, timeout: Duration) {
    let want: Vec<Option<i64>> = ends.iter().map(|e| Some(*e)).collect();
    let last = Mutex::new(None);
    wait_for(
        "committed offsets to reach the log end",
        timeout,
        || {
            let got = probe.try_committed();
            let done = got.as_ref().is_ok_and(|c| *c == want);
            *last.lock().expect("lock") = Some(got);
            done
        },
        || {
            format!(
                "log ends {ends:?}, last committed {:?}\n{}",
                last.lock().expect("lock"),
                tracker.summary()
            )
        },
    );
}

/// Asserts every offset below `ends[p]` was processed: exactly once with `exactly_once`,
/// else at least once; and nothing beyond the log end.
fn assert_processed(tracker: &Tracker, ends: &[i64], exactly_once: bool) {
    let s = tracker.lock();
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    for (p, end) in ends.iter().enumerate() {
        for o in 0..*end {
            match s.processed.get(&(p as i32, o)) {
                None => missing.push((p, o)),
                Some(n) if *n > 1 && exactly_once => duplicated.push((p, o, *n)),
                _ => {}
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} offset(s) never processed, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        duplicated.is_empty(),
        "{} offset(s) processed more than once, first (partition, offset, times) {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)]
    );
    let beyond = s
        .processed
        .keys()
        .filter(|(p, o)| *o >= ends[*p as usize])
        .count();
    assert_eq!(beyond, 0, "offsets processed beyond the log end");
}

// ---------------------------------------------------------------------------------------
// a. exactly once with three members
// ---------------------------------------------------------------------------------------

fn three_members_consume_everything_exactly_once(strategy: &'static str) {
    let server = TestServer::start();
    let bootstrap = server.bootstrap();
    let topic = unique_topic("cg-once");
    let group = unique_group("g-once");
    server.create_topic(&topic);
    let tracker = Arc::new(Tracker::default());
    let names = ["m0", "m1", "m2"];
    let spec = MemberSpec {
        strategy: Some(strategy),
        ..Default::default()
    };
    let members: Vec<Member> = names
        .iter()
        .map(|n| Member::spawn(&bootstrap, &group, &topic, n, spec.clone(), &tracker))
        .collect();
    wait_for(
        "three members with two partitions each",
        Duration::from_secs(30),
        || tracker.balanced(&names, &[2, 2, 2]),
        || tracker.summary(),
    );
    let settled = tracker.event_count();

    produce(&bootstrap, &topic, 0..MESSAGES, None);
    let probe = GroupProbe::new(&bootstrap, &group, &topic);
    let ends = probe.log_ends();
    assert_eq!(ends.iter().sum::<i64>(), MESSAGES as i64);
    wait_for(
        "every message processed",
        Duration::from_secs(60),
        || tracker.processed_through(&ends),
        || tracker.summary(),
    );
    wait_committed(&probe, &ends, &tracker, Duration::from_secs(30));
    let moved: Vec<Event> = tracker
        .events_since(settled)
        .into_iter()
        .filter(|e| !e.partitions.is_empty())
        .collect();
    assert!(
        moved.is_empty(),
        "no partition moved while consuming: {moved:?}"
    );
    for m in members {
        m.close();
    }
    tracker.assert_no_violations();
    assert_processed(&tracker, &ends, true);
    assert_eq!(
        probe.committed(),
        ends.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
        "committed offsets after the members closed"
    );
}

#[test]
fn three_members_range_consume_every_message_exactly_once() {
    three_members_consume_everything_exactly_once("range");
}

#[test]
fn three_members_cooperative_sticky_consume_every_message_exactly_once() {
    three_members_consume_everything_exactly_once("cooperative-sticky");
}

// ---------------------------------------------------------------------------------------
// b. a member joining and one leaving mid-stream
// ---------------------------------------------------------------------------------------

#[test]
fn a_member_joining_and_one_leaving_mid_stream_skip_no_offset() {
    let server = TestServer::start();
    let bootstrap = server.bootstrap();
    let topic = unique_topic("cg-churn");
    let group = unique_group("g-churn");
    server.create_topic(&topic);
    let tracker = Arc::new(Tracker::default());
    let gates: HashMap<&str, Arc<Gate>> = ["m0", "m1", "m2", "m3"].map(|n| (n, Gate::new())).into();
    let spawn = |name: &str| {
        let spec = MemberSpec {
            gate: Some(gates[name].clone()),
            ..Default::default()
        };
        Member::spawn(&bootstrap, &group, &topic, name, spec, &tracker)
    };
    let hold = |names: &[&str]| names.iter().for_each(|n| gates[n].hold());
    let release = |names: &[&str]| names.iter().for_each(|n| gates[n].allow(-1));
    let mut members: Vec<Member> = ["m0", "m1", "m2"].iter().map(|n| spawn(n)).collect();
    wait_for(
        "three members with two partitions each",
        Duration::from_secs(30),
        || tracker.balanced(&["m0", "m1", "m2"], &[2, 2, 2]),
        || tracker.summary(),
    );
    let probe = GroupProbe::new(&bootstrap, &group, &topic);
    let third = MESSAGES / 3;

    produce(&bootstrap, &topic, 0..third, None);
    let ends = probe.log_ends();
    wait_for(
        "the first third processed",
        Duration::from_secs(60),
        || tracker.processed_through(&ends),
        || tracker.summary(),
    );

    // A fourth member joins while the members hold a backlog of the second third: the
    // rebalance starts before any of it is processed.
    hold(&["m0", "m1", "m2"]);
    produce(&bootstrap, &topic, third..2 * third, None);
    let before_join = tracker.event_count();
    members.push(spawn("m3"));
    wait_for(
        "the join to start a rebalance",
        Duration::from_secs(30),
        || probe.try_state().is_ok_and(|s| s == "PreparingRebalance"),
        || format!("state {:?}\n{}", probe.try_state(), tracker.summary()),
    );
    assert_eq!(
        tracker.lock().processed.len(),
        third,
        "nothing of the second third processed before the rebalance"
    );
    release(&["m0", "m1", "m2"]);
    wait_for(
        "the fourth member to get partitions",
        Duration::from_secs(30),
        || !tracker.owned("m3").is_empty() && tracker.covered_by(&["m0", "m1", "m2", "m3"]),
        || tracker.summary(),
    );
    let after_join = tracker.events_since(before_join);
    assert!(
        after_join
            .iter()
            .any(|e| e.member != "m3" && e.kind == EventKind::Revoke),
        "the join revoked partitions from existing members: {after_join:?}"
    );
    let ends = probe.log_ends();
    wait_for(
        "the second third processed",
        Duration::from_secs(60),
        || tracker.processed_through(&ends),
        || tracker.summary(),
    );

    // One member leaves part-way through its share of the last third.
    hold(&["m0", "m1", "m2", "m3"]);
    produce(&bootstrap, &topic, 2 * third..MESSAGES, None);
    let leaver_before = tracker
        .lock()
        .count_by_member
        .get("m0")
        .copied()
        .unwrap_or(0);
    let leaver_partitions = tracker.owned("m0");
    assert!(!leaver_partitions.is_empty(), "m0 owns partitions");
    gates["m0"].allow(1_000);
    wait_for(
        "the leaving member to process 1,000 of the last third",
        Duration::from_secs(30),
        || gates["m0"].exhausted(),
        || tracker.summary(),
    );
    let before_leave = tracker.event_count();
    let leaving = members.remove(0);
    assert_eq!(leaving.name, "m0");
    leaving.close();
    assert_eq!(
        tracker
            .lock()
            .count_by_member
            .get("m0")
            .copied()
            .unwrap_or(0)
            - leaver_before,
        1_000,
        "the leaving member processed exactly its allowance"
    );
    release(&["m1", "m2", "m3"]);
    wait_for(
        "the remaining members to own every partition",
        Duration::from_secs(30),
        || tracker.covered_by(&["m1", "m2", "m3"]),
        || tracker.summary(),
    );
    assert!(
        tracker
            .events_since(before_leave)
            .iter()
            .any(|e| e.member != "m0"
                && e.kind == EventKind::Assign
                && e.partitions.iter().any(|p| leaver_partitions.contains(p))),
        "the leaver's partitions were reassigned:\n{}",
        tracker.summary()
    );
    let ends = probe.log_ends();
    assert_eq!(ends.iter().sum::<i64>(), MESSAGES as i64);
    wait_for(
        "every message processed",
        Duration::from_secs(60),
        || tracker.processed_through(&ends),
        || tracker.summary(),
    );
    wait_committed(&probe, &ends, &tracker, Duration::from_secs(30));
    for m in members {
        m.close();
    }
    tracker.assert_no_violations();
    assert_processed(&tracker, &ends, false);
}

// ---------------------------------------------------------------------------------------
// c. a member that stops heartbeating (SIGKILLed child process) is expelled
// ---------------------------------------------------------------------------------------

/// Collects a child's stderr in the background.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
    out
}

/// Kills the child on drop (a failed test must not leave it running).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Parses a `steadfast consume` line: `partition/offset<TAB>key<TAB>value`.
fn parse_consumed(line: &str) -> (i32, i64) {
    let at = line.split('\t').next().expect("position");
    let (p, o) = at.split_once('/').expect("partition/offset");
    (p.parse().expect("partition"), o.parse().expect("offset"))
}

/// A `steadfast consume --group G --from-beginning` child process whose output is read.
struct CliConsumer {
    process: KillOnDrop,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: Arc<Mutex<String>>,
}

impl CliConsumer {
    fn spawn(bootstrap: &str, topic: &str, group: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(STEADFAST)
            .args(["consume", "--bootstrap", bootstrap, "--topic", topic])
            .args([
                "--group",
                group,
                "--from-beginning",
                "--idle-timeout-ms",
                "0",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn steadfast consume");
        let stderr = collect(child.stderr.take().expect("stderr"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        CliConsumer {
            process: KillOnDrop(child),
            stdout,
            stderr,
        }
    }

    /// Reads `count` printed positions, failing with the child's stderr if it exits or
    /// the deadline passes first.
    fn read_positions(&mut self, count: usize, timeout: Duration) -> Vec<(i32, i64)> {
        let deadline = Instant::now() + timeout;
        let mut positions = Vec::with_capacity(count);
        let mut line = String::new();
        while positions.len() < count {
            assert!(
                Instant::now() < deadline,
                "the child printed only {} lines\nstderr:\n{}",
                positions.len(),
                self.stderr.lock().expect("lock")
            );
            line.clear();
            let n = self.stdout.read_line(&mut line).expect("read child stdout");
            assert!(
                n > 0,
                "the child exited early\nstderr:\n{}",
                self.stderr.lock().expect("lock")
            );
            positions.push(parse_consumed(line.trim_end()));
        }
        positions
    }
}

#[test]
fn a_killed_member_is_expelled_after_its_session_timeout_and_its_partitions_reassigned() {
    let server = TestServer::start();
    let bootstrap = server.bootstrap();
    let topic = unique_topic("cg-kill");
    let group = unique_group("g-kill");
    server.create_topic(&topic);
    produce(&bootstrap, &topic, 0..MESSAGES, None);
    let probe = GroupProbe::new(&bootstrap, &group, &topic);
    let ends = probe.log_ends();

    let mut child = CliConsumer::spawn(
        &bootstrap,
        &topic,
        &group,
        &[
            "--session-timeout-ms",
            &SESSION_TIMEOUT_MS.to_string(),
            "--auto-commit-interval-ms",
            "200",
        ],
    );
    let mut by_child: HashMap<(i32, i64), u32> = HashMap::new();
    // Read some of its output, then stop reading: once the pipe is full it blocks, as a
    // member stuck in processing would.
    for at in child.read_positions(3_000, Duration::from_secs(60)) {
        *by_child.entry(at).or_default() += 1;
    }
    wait_for(
        "the child to commit some offsets",
        Duration::from_secs(30),
        || {
            probe
                .try_committed()
                .is_ok_and(|c| c.iter().any(Option::is_some))
        },
        || format!("stderr:\n{}", child.stderr.lock().expect("lock")),
    );
    child.process.0.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    child.process.0.wait().expect("reap");
    // Whatever it printed before it died counts as processed.
    for line in (&mut child.stdout).lines() {
        let line = line.expect("read child stdout");
        *by_child.entry(parse_consumed(&line)).or_default() += 1;
    }
    let committed_at_kill = probe.committed();
    assert_eq!(
        by_child.len(),
        by_child.values().filter(|n| **n == 1).count(),
        "the child printed no offset twice"
    );
    for (p, c) in committed_at_kill.iter().enumerate() {
        if let Some(c) = c {
            assert!(
                (0..*c).all(|o| by_child.contains_key(&(p as i32, o))),
                "the child committed {p}/{c} beyond what it printed"
            );
        }
    }

    // Two in-process members join; the dead member holds the rebalance until it expires.
    let tracker = Arc::new(Tracker::default());
    let members: Vec<Member> = ["m0", "m1"]
        .iter()
        .map(|n| {
            Member::spawn(
                &bootstrap,
                &group,
                &topic,
                n,
                MemberSpec::default(),
                &tracker,
            )
        })
        .collect();
    wait_for(
        "the killed member's partitions to be reassigned",
        Duration::from_millis(u64::from(SESSION_TIMEOUT_MS)) + Duration::from_secs(15),
        || tracker.covered_by(&["m0", "m1"]),
        || {
            format!(
                "killed {:?} ago\n{}",
                killed_at.elapsed(),
                tracker.summary()
            )
        },
    );
    let reassigned_after = killed_at.elapsed();
    // The child heartbeats every second: its session ran out 2-3 s after the kill, not at
    // the disconnect.
    assert!(
        reassigned_after >= Duration::from_millis(1_500),
        "the killed member was expelled {reassigned_after:?} after SIGKILL, before its \
         {SESSION_TIMEOUT_MS} ms session timeout could run out"
    );
    wait_for(
        "the group to finish the topic",
        Duration::from_secs(60),
        || {
            let s = tracker.lock();
            ends.iter().enumerate().all(|(p, end)| {
                (0..*end).all(|o| {
                    s.processed.contains_key(&(p as i32, o))
                        || by_child.contains_key(&(p as i32, o))
                })
            })
        },
        || tracker.summary(),
    );
    wait_committed(&probe, &ends, &tracker, Duration::from_secs(30));
    for m in members {
        m.close();
    }
    tracker.assert_no_violations();

    // Resumed from the child's commits (at or after what was committed when it died), and
    // nothing skipped between what the child printed and what the members processed.
    let s = tracker.lock();
    for p in 0..PARTITIONS {
        let first = s.first.get(&p).copied();
        let end = ends[p as usize];
        let child_max = by_child
            .keys()
            .filter(|(cp, _)| *cp == p)
            .map(|(_, o)| *o)
            .max();
        if let Some(first) = first {
            if let Some(c) = committed_at_kill[p as usize] {
                assert!(
                    first >= c,
                    "partition {p}: members restarted at {first}, before the commit {c}"
                );
            }
            assert!(
                first <= child_max.map_or(0, |m| m + 1),
                "partition {p}: members started at {first}, the child printed up to {child_max:?}"
            );
        } else {
            assert_eq!(
                child_max.map(|m| m + 1),
                Some(end),
                "partition {p}: nobody processed the rest"
            );
        }
        for o in 0..end {
            assert!(
                s.processed.contains_key(&(p, o)) || by_child.contains_key(&(p, o)),
                "offset {p}/{o} skipped"
            );
        }
    }
    eprintln!(
        "killed member's partitions reassigned {reassigned_after:?} after SIGKILL \
         (session timeout {SESSION_TIMEOUT_MS} ms); child processed {}, members {}",
        by_child.len(),
        s.processed.len()
    );
}

#[test]
fn the_cli_consumer_commits_what_it_printed_and_leaves_on_sigterm() {
    let server = TestServer::start();
    let bootstrap = server.bootstrap();
    let topic = unique_topic("cg-term");
    let group = unique_group("g-term");
    server.create_topic(&topic);
    produce(&bootstrap, &topic, 0..MESSAGES, None);
    let probe = GroupProbe::new(&bootstrap, &group, &topic);

    // Automatic commits far apart: what is committed at the end is the final commit.
    let mut child = CliConsumer::spawn(
        &bootstrap,
        &topic,
        &group,
        &["--auto-commit-interval-ms", "600000"],
    );
    let mut printed = child.read_positions(5_000, Duration::from_secs(60));
    let term = Command::new("kill")
        .args(["-TERM", &child.process.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(term.success(), "kill -TERM failed");
    // Keep reading: a child blocked on a full pipe must get to its stop check.
    for line in (&mut child.stdout).lines() {
        printed.push(parse_consumed(&line.expect("read child stdout")));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.process.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the child did not stop on SIGTERM\nstderr:\n{}",
            child.stderr.lock().expect("lock")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}\nstderr:\n{}",
        child.stderr.lock().expect("lock")
    );
    assert!(
        printed.len() < MESSAGES,
        "stopped before the end of the topic"
    );
    let mut next: Vec<Option<i64>> = vec![None; PARTITIONS as usize];
    for (p, o) in &printed {
        let slot = &mut next[*p as usize];
        assert_eq!(
            slot.unwrap_or(0),
            *o,
            "partition {p} printed in order from 0"
        );
        *slot = Some(o + 1);
    }
    assert_eq!(
        probe.committed(),
        next,
        "the committed offsets are exactly what was printed\nstderr:\n{}",
        child.stderr.lock().expect("lock")
    );
    assert_eq!(probe.try_members(), Ok(0), "the member left the group");
}

// ---------------------------------------------------------------------------------------
// d. a static member restarts without a rebalance
// ---------------------------------------------------------------------------------------

#[test]
fn a_restarted_static_member_gets_its_partitions_back_without_a_rebalance() {
    static_member_restart(None);
}

#[test]
fn a_restarted_static_member_under_cooperative_sticky_causes_no_rebalance() {
    static_member_restart(Some("cooperative-sticky"));
}

fn static_member_restart(strategy: Option<&'static str>) {
    let server = TestServer::start();
    let bootstrap = server.bootstrap();
    let topic = unique_topic("cg-static");
    let group = unique_group("g-static");
    server.create_topic(&topic);
    let tracker = Arc::new(Tracker::default());
    let instance = unique_topic("instance");
    let static_spec = MemberSpec {
        instance_id: Some(instance.clone()),
        session_timeout_ms: Some(10_000),
        strategy,
        ..Default::default()
    };
    let others: Vec<Member> = ["a", "b"]
        .iter()
        .map(|n| {
            Member::spawn(
                &bootstrap,
                &group,
                &topic,
                n,
                MemberSpec {
                    strategy,
                    ..Default::default()
                },
                &tracker,
            )
        })
        .collect();
    let s1 = Member::spawn(
        &bootstrap,
        &group,
        &topic,
        "s1",
        static_spec.clone(),
        &tracker,
    );
    wait_for(
        "three members with two partitions each",
        Duration::from_secs(30),
        || tracker.balanced(&["a", "b", "s1"], &[2, 2, 2]),
        || tracker.summary(),
    );
    let probe = GroupProbe::new(&bootstrap, &group, &topic);
    produce(&bootstrap, &topic, 0..MESSAGES / 2, None);
    let half = probe.log_ends();
    wait_for(
        "the first half processed",
        Duration::from_secs(60),
        || tracker.processed_through(&half),
        || tracker.summary(),
    );
    wait_committed(&probe, &half, &tracker, Duration::from_secs(30));

    let generation = server
        .handle()
        .group_generation(&group)
        .expect("the group has a generation");
    let owned_before = tracker.owned("s1");
    let mark = tracker.event_count();
    s1.close();
    let s2 = Member::spawn(&bootstrap, &group, &topic, "s2", static_spec, &tracker);
    wait_for(
        "the restarted static member to get its partitions back",
        Duration::from_secs(8),
        || tracker.owned("s2") == owned_before,
        || tracker.summary(),
    );
    produce(&bootstrap, &topic, MESSAGES / 2..MESSAGES, None);
    let ends = probe.log_ends();
    wait_for(
        "every message processed",
        Duration::from_secs(60),
        || tracker.processed_through(&ends),
        || tracker.summary(),
    );
    wait_committed(&probe, &ends, &tracker, Duration::from_secs(30));

    let others_events: Vec<Event> = tracker
        .events_since(mark)
        .into_iter()
        .filter(|e| e.member == "a" || e.member == "b")
        .collect();
    assert!(
        others_events.is_empty(),
        "the other members saw a rebalance: {others_events:?}\n{}",
        tracker.summary()
    );
    assert_eq!(
        server.handle().group_generation(&group),
        Some(generation),
        "the generation is unchanged"
    );
    let s2_events: Vec<Event> = tracker
        .events_since(mark)
        .into_iter()
        .filter(|e| e.member == "s2")
        .collect();
    assert_eq!(
        s2_events.len(),
        1,
        "one assignment for the restarted member: {s2_events:?}"
    );
    {
        let s = tracker.lock();
        for p in &owned_before {
            assert_eq!(
                s.first_by_member.get(&("s2".to_owned(), *p)).copied(),
                Some(half[*p as usize]),
                "partition {p}: the restarted member resumes at the committed offset"
            );
        }
    }
    s2.close();
    for m in others {
        m.close();
    }
    tracker.assert_no_violations();
    assert_processed(&tracker, &ends, false);
}

// ---------------------------------------------------------------------------------------
// e. committed offsets survive a server restart
// ---------------------------------------------------------------------------------------

#[test]
fn committed_offsets_survive_a_server_restart() {
    let mut server = TestServer::start();
    let bootstrap = server.bootstrap();
    let topic = unique_topic("cg-restart");
    let group = unique_group("g-restart");
    server.create_topic(&topic);
    produce(&bootstrap, &topic, 0..MESSAGES, None);
    let probe = GroupProbe::new(&bootstrap, &group, &topic);
    let ends = probe.log_ends();
    assert!(ends.iter().all(|e| *e >= 2), "every partition has messages");
    let limits: Vec<i64> = ends.iter().map(|e| e / 2).collect();
    drop(probe);

    // Process (and commit) the first half of every partition, then close.
    let tracker = Arc::new(Tracker::default());
    let first = Member::spawn(
        &bootstrap,
        &group,
        &topic,
        "first",
        MemberSpec {
            limit: Some(limits.clone()),
            ..Default::default()
        },
        &tracker,
    );
    wait_for(
        "the first half of every partition processed",
        Duration::from_secs(60),
        || tracker.processed_through(&limits),
        || tracker.summary(),
    );
    first.close();
    let probe = GroupProbe::new(&bootstrap, &group, &topic);
    let want: Vec<Option<i64>> = limits.iter().map(|l| Some(*l)).collect();
    wait_committed(&probe, &limits, &tracker, Duration::from_secs(30));
    drop(probe);

    server.restart();
    let bootstrap = server.bootstrap();
    let probe = GroupProbe::new(&bootstrap, &group, &topic);
    assert_eq!(
        probe.committed(),
        want,
        "committed offsets after the restart"
    );

    let tracker = Arc::new(Tracker::default());
    let second = Member::spawn(
        &bootstrap,
        &group,
        &topic,
        "second",
        MemberSpec::default(),
        &tracker,
    );
    let rest_done = || {
        let s = tracker.lock();
        (0..PARTITIONS).all(|p| {
            (limits[p as usize]..ends[p as usize]).all(|o| s.processed.contains_key(&(p, o)))
        })
    };
    wait_for(
        "the second half processed after the restart",
        Duration::from_secs(60),
        rest_done,
        || tracker.summary(),
    );
    wait_committed(&probe, &ends, &tracker, Duration::from_secs(30));
    second.close();
    tracker.assert_no_violations();
    let s = tracker.lock();
    for p in 0..PARTITIONS {
        assert_eq!(
            s.first.get(&p).copied(),
            Some(limits[p as usize]),
            "partition {p}: the first message after the restart is at the committed offset"
        );
    }
    assert_eq!(
        s.processed.len() as i64,
        ends.iter().zip(&limits).map(|(e, l)| e - l).sum::<i64>(),
        "nothing before the committed offsets was read again"
    );
}

// ---------------------------------------------------------------------------------------
// f. steadfast offsets reset --to-time
// ---------------------------------------------------------------------------------------

/// Output of a finished CLI run.
struct CliRun {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs the `steadfast` binary with `args`, with a deadline.
fn run_cli(args: &[&str]) -> CliRun {
    let mut child = Command::new(STEADFAST)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn steadfast");
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "steadfast {args:?} did not finish\nstderr:\n{}",
            stderr.lock().expect("lock")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The pipes close with the process; wait for the readers to drain them.
    let drained = |out: &Arc<Mutex<String>>| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(out) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        out.lock().expect("lock").clone()
    };
    CliRun {
        success: status.success(),
        stdout: drained(&stdout),
        stderr: drained(&stderr),
    }
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
fn rfc3339(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

#[test]
fn offsets_reset_to_time_rereads_from_that_time_and_is_refused_while_members_are_active() {
    let server = TestServer::start();
    let bootstrap = server.bootstrap();
    let topic = unique_topic("cg-reset");
    let group = unique_group("g-reset");
    server.create_topic(&topic);
    // Message i has timestamp base + i ms; the reset goes to message CUT's time.
    const CUT: usize = 36_000;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let base = now_ms - 3_600_000;
    let delivered = produce(&bootstrap, &topic, 0..MESSAGES, Some(&|i| base + i as i64));
    let probe = GroupProbe::new(&bootstrap, &group, &topic);
    let ends = probe.log_ends();
    // Per partition: the first offset of a message at or after the cut (else the log end).
    let mut expected = ends.clone();
    for (i, (p, o)) in &delivered {
        if *i >= CUT && *o < expected[*p as usize] {
            expected[*p as usize] = *o;
        }
    }

    let tracker = Arc::new(Tracker::default());
    let blocker_id = unique_topic("reset-blocker");
    let blocker = Member::spawn(
        &bootstrap,
        &group,
        &topic,
        "blocker",
        MemberSpec {
            client_id: Some(blocker_id.clone()),
            ..Default::default()
        },
        &tracker,
    );
    wait_for(
        "everything processed by the first member",
        Duration::from_secs(60),
        || tracker.processed_through(&ends),
        || tracker.summary(),
    );
    wait_committed(&probe, &ends, &tracker, Duration::from_secs(30));

    // The group tools see the active member.
    let listed = run_cli(&["groups", "list", "--bootstrap", &bootstrap]);
    assert!(listed.success, "groups list failed: {}", listed.stderr);
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{group}\t"))),
        "groups list shows the group:\n{}",
        listed.stdout
    );
    let described = run_cli(&["groups", "describe", &group, "--bootstrap", &bootstrap]);
    assert!(
        described.success,
        "groups describe failed: {}",
        described.stderr
    );
    assert!(
        described.stdout.contains(&blocker_id)
            && described.stdout.contains("state: Stable")
            && described.stdout.contains(&format!("{topic}[0,1,2,3,4,5]")),
        "groups describe shows the member and its assignment:\n{}",
        described.stdout
    );
    for (p, end) in ends.iter().enumerate() {
        let row = format!("{topic}\t{p}\t{end}\t{end}\t0\t{blocker_id}");
        assert!(
            described.stdout.lines().any(|l| l == row),
            "groups describe shows `{row}`:\n{}",
            described.stdout
        );
    }

    let cut_time = rfc3339(base + CUT as i64);
    let reset_args = [
        "offsets",
        "reset",
        "--bootstrap",
        &bootstrap,
        "--group",
        &group,
        "--topic",
        &topic,
        "--to-time",
        &cut_time,
    ];
    let refused = run_cli(&reset_args);
    assert!(
        !refused.success,
        "reset with an active member must fail:\n{}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("1 active member") && refused.stderr.contains(&blocker_id),
        "the refusal names the active member: {}",
        refused.stderr
    );
    assert_eq!(
        probe.committed(),
        ends.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
        "a refused reset commits nothing"
    );

    blocker.close();
    wait_for(
        "the group to have no members",
        Duration::from_secs(30),
        || probe.try_members() == Ok(0),
        || format!("members: {:?}", probe.try_members()),
    );
    let mut dry_args = reset_args.to_vec();
    dry_args.push("--dry-run");
    let dry = run_cli(&dry_args);
    assert!(dry.success, "dry run failed: {}", dry.stderr);
    for p in 0..PARTITIONS as usize {
        let row = format!("{topic}\t{p}\t{} -> {}", ends[p], expected[p]);
        assert!(
            dry.stdout.lines().any(|l| l == row),
            "the plan shows `{row}`:\n{}",
            dry.stdout
        );
    }
    assert_eq!(
        probe.committed(),
        ends.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
        "a dry run commits nothing"
    );

    let reset = run_cli(&reset_args);
    assert!(
        reset.success,
        "reset failed: {}\n{}",
        reset.stderr, reset.stdout
    );
    assert_eq!(
        probe.committed(),
        expected.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
        "committed offsets moved to the first message at or after {cut_time}"
    );

    // A new member re-reads from there.
    let tracker = Arc::new(Tracker::default());
    let reader = Member::spawn(
        &bootstrap,
        &group,
        &topic,
        "reader",
        MemberSpec::default(),
        &tracker,
    );
    let reread = |s: &TrackerState| {
        (0..PARTITIONS).all(|p| {
            (expected[p as usize]..ends[p as usize]).all(|o| s.processed.contains_key(&(p, o)))
        })
    };
    wait_for(
        "the group to re-read from the reset offsets",
        Duration::from_secs(60),
        || reread(&tracker.lock()),
        || tracker.summary(),
    );
    wait_committed(&probe, &ends, &tracker, Duration::from_secs(30));
    reader.close();
    tracker.assert_no_violations();
    let s = tracker.lock();
    for p in 0..PARTITIONS {
        if expected[p as usize] < ends[p as usize] {
            assert_eq!(
                s.first.get(&p).copied(),
                Some(expected[p as usize]),
                "partition {p}: the first message re-read is the first at or after the time"
            );
        }
    }
    assert_eq!(
        s.processed.len(),
        MESSAGES - CUT,
        "exactly the messages at or after the time were re-read"
    );
}

#[test]
fn rfc3339_formatting_helper_is_correct() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(1_714_564_800_250), "2024-05-01T12:00:00.250Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
}
