//! Reading back a partition's retry state when a worker takes it over, before any of its
//! records runs:
//!
//! - which of its unfinished records already have a copy in a retry tier or the dead-letter
//!   topic (the worker that made the copy died before committing): they count as finished,
//!   so no record is routed twice;
//! - which records of the source partition wait in a retry tier: their keys are parked
//!   before any later record of them runs, so strict order survives crashes and rebalances.
//!
//! Copies are found by their [`headers::ROUTED_FROM`] header, from a little before the time
//! the partition's last commit point was taken (stamped in the commit metadata): a copy of a
//! record that commit left unfinished was made after it. Waiting tier records are read from
//! the tier partition's committed offset to its end. Blocking: runs on a blocking thread;
//! records of the partitions delivered meanwhile wait for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::dispatch::{PendingTierRecord, Recovered, TopicPartition};
use super::offsets::FinishedAbove;
use super::tiers::{first_delivery_lane, Topology};
use crate::broker::{envelope_of, TopicNames};
use crate::message::headers;
use crate::message::Envelope;

/// How long before a commit point copies are looked for: the routing producer's delivery
/// timeout (a copy's timestamp is taken when it is first sent) plus clock skew between pods.
const SLACK_MS: i64 = 5 * 60_000;

/// How long one read-back may take before it is tried again.
const READ_LIMIT: Duration = Duration::from_secs(60);

/// Why a read-back failed (it is tried again; the partitions stay paused meanwhile).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoveryError {
    /// The broker client failed.
    #[error("reading back retry state: {0}")]
    Kafka(#[from] KafkaError),
    /// The partitions were not read to their end in time.
    #[error(
        "reading back retry state: {0} partition(s) not read to their end within {READ_LIMIT:?}"
    )]
    Incomplete(usize),
}

/// What a read-back needs to know.
#[derive(Debug, Clone)]
pub(crate) struct RecoveryPlan {
    /// The worker's client settings (brokers, security).
    pub(crate) client: ClientConfig,
    /// The source topic and the retry tiers of the group.
    pub(crate) topology: Topology,
    /// The dead-letter topic.
    pub(crate) dead_letter: String,
    /// Whether keys are parked for their retry-tier records (strict ordering).
    pub(crate) strict: bool,
}

/// The consumer a read-back reads with. Dropping it takes a while (closing a consumer that
/// has a group id: about 100 ms), so drop it after the result was handed over.
pub(crate) fn reader(plan: &RecoveryPlan) -> Result<BaseConsumer, RecoveryError> {
    let mut config = plan.client.clone();
    // A group id is needed to assign partitions; this reader only assigns (it never joins
    // the group) and commits nothing.
    config
        .set(
            "group.id",
            format!("{}.steadfast-read-back", plan.topology.group),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    Ok(config.create()?)
}

/// Reads back with `consumer` (see [`reader`]) the retry state of `assigned` (with what each
/// one's last commit said).
pub(crate) fn recover(
    plan: &RecoveryPlan,
    consumer: &BaseConsumer,
    assigned: &[(TopicPartition, FinishedAbove)],
) -> Result<Recovered, RecoveryError> {
    let read_back = ReadBack::new(plan, assigned);
    let starts = read_back.starts(consumer, assigned)?;
    let mut recovered = Recovered::default();
    read_to_end(consumer, &starts, |envelope| {
        read_back.note(&mut recovered, envelope);
    })?;
    // A tier record that was routed on is not waiting: its copy in the next tier (or the
    // dead-letter topic) is what its key waits for, if anything.
    recovered.pending.retain(|p| {
        !recovered
            .routed
            .get(&p.tier)
            .is_some_and(|offsets| offsets.contains(&p.offset))
    });
    Ok(recovered)
}

/// What a read-back knows before it reads: what each assigned partition's last commit said,
/// and the partitions whose copies are searched, each with the earliest time one may date from.
struct ReadBack<'a> {
    plan: &'a RecoveryPlan,
    committed: HashMap<TopicPartition, &'a FinishedAbove>,
    searched: HashMap<TopicPartition, i64>,
}

impl<'a> ReadBack<'a> {
    /// The read-back of `assigned` under `plan`.
    fn new(plan: &'a RecoveryPlan, assigned: &'a [(TopicPartition, FinishedAbove)]) -> Self {
        let committed = assigned.iter().map(|(tp, f)| (tp.clone(), f)).collect();
        // Copies of records these commits left unfinished were made after this time: a little
        // before the stamped commit; from the beginning for a partition the group never
        // committed (every copy of it by this group is of an unfinished record). A partition
        // whose commit carries no stamp (offsets reset by a tool, a commit of an earlier
        // version) is not searched: which copies belong to the records it left unfinished
        // cannot be told, and a replay after a reset must route again what it meets. Its next
        // commit is stamped.
        let searched = assigned
            .iter()
            .filter_map(|(tp, f)| match (f.is_committed(), f.commit_ms()) {
                (false, _) => Some((tp.clone(), i64::MIN)),
                (true, Some(ms)) => Some((tp.clone(), ms - SLACK_MS)),
                (true, None) => None,
            })
            .collect();
        ReadBack {
            plan,
            committed,
            searched,
        }
    }

    /// Where to read: the next tier and the dead-letter topic of every searched partition
    /// (copies, from its time), and every assigned tier partition (waiting records, from its
    /// committed offset).
    fn starts(
        &self,
        consumer: &BaseConsumer,
        assigned: &[(TopicPartition, FinishedAbove)],
    ) -> Result<BTreeMap<(String, i32), Option<i64>>, RecoveryError> {
        let copies_in = self.copies_in(consumer)?;
        let mut starts: BTreeMap<(String, i32), Option<i64>> = BTreeMap::new();
        for (target, start) in starts_at_time(consumer, &copies_in)? {
            starts.insert(target, start);
        }
        if self.plan.strict {
            for ((topic, partition), finished) in assigned {
                if self.plan.topology.tier_of(topic) > 0 {
                    let from = finished.committed();
                    let entry = starts
                        .entry((topic.to_string(), *partition))
                        .or_insert(Some(from));
                    *entry = Some(entry.map_or(from, |s| s.min(from)));
                }
            }
        }
        Ok(starts)
    }

    /// The partitions copies of the searched partitions' records go to (the next tier, the
    /// dead-letter topic), each with the earliest time a copy looked for may date from.
    fn copies_in(
        &self,
        consumer: &BaseConsumer,
    ) -> Result<BTreeMap<(String, i32), i64>, RecoveryError> {
        let plan = self.plan;
        let tiers = plan.topology.tiers.len() as u32;
        let dead_letter_partitions = if self.searched.is_empty() {
            0
        } else {
            partition_count(consumer, &plan.dead_letter)?
        };
        let mut copies_in: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut note = |target: (String, i32), since: i64| {
            let entry = copies_in.entry(target).or_insert(since);
            *entry = (*entry).min(since);
        };
        for ((topic, partition), since) in &self.searched {
            let tier = plan.topology.tier_of(topic);
            if tier < tiers {
                if let Some(next) = plan.topology.tiers.get(tier as usize) {
                    note((next.to_string(), *partition), *since);
                }
            }
            for p in 0..dead_letter_partitions {
                note((plan.dead_letter.clone(), p), *since);
            }
        }
        Ok(copies_in)
    }

    /// Notes what a record read back says: it is the group's copy of an unfinished record of a
    /// searched partition, or (strict ordering) a tier record still waiting.
    fn note(&self, recovered: &mut Recovered, envelope: Envelope) {
        let plan = self.plan;
        if envelope.headers.get_str(headers::GROUP) != Some(&plan.topology.group[..]) {
            return;
        }
        if let Some((topic, partition, offset)) = envelope
            .headers
            .get_str(headers::ROUTED_FROM)
            .and_then(headers::parse_routed_from)
        {
            let from: TopicPartition = (Arc::from(topic), partition);
            if self.searched.contains_key(&from)
                && self
                    .committed
                    .get(&from)
                    .is_some_and(|f| offset >= f.committed())
            {
                recovered.routed.entry(from).or_default().push(offset);
            }
        }
        let here: TopicPartition = (envelope.topic.clone(), envelope.partition);
        let waiting = plan.strict
            && plan.topology.tier_of(&envelope.topic) > 0
            && self
                .committed
                .get(&here)
                .is_some_and(|f| envelope.offset >= f.committed() && !f.contains(envelope.offset));
        if let (true, Some(key)) = (waiting, envelope.key.clone()) {
            recovered.pending.push(PendingTierRecord {
                tier: here,
                offset: envelope.offset,
                origin: first_delivery_lane(&envelope, key),
                origin_offset: headers::original_offset(&envelope),
            });
        }
    }
}

/// The partition count of `topic`; 0 when it does not exist.
fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<i32, RecoveryError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| i32::try_from(t.partitions().len()).unwrap_or(0)))
}

/// A partition by topic name, with where to start reading it (`None`: nothing to read).
type Start = ((String, i32), Option<i64>);

/// The first offset of each target at or after its time (`None`: nothing that recent; a time
/// of `i64::MIN`: from the log start).
///
/// "Nothing that recent" is believed only from a broker that answers a lookup by time: a
/// target so answered is looked up again at time 0, which finds the first record of a
/// partition that has one. One that finds nothing there either is read from its start: it is
/// empty (nothing to read), or its broker ignores the time (librdkafka's mock cluster answers
/// every lookup by time with -1) and would otherwise hide every copy made since the commit.
fn starts_at_time(
    consumer: &BaseConsumer,
    targets: &BTreeMap<(String, i32), i64>,
) -> Result<Vec<Start>, RecoveryError> {
    let mut out: Vec<Start> = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), since) in targets {
        if *since == i64::MIN {
            out.push(((topic.clone(), *partition), Some(0)));
        } else {
            tpl.add_partition_offset(topic, *partition, Offset::Offset((*since).max(0)))?;
        }
    }
    if tpl.count() == 0 {
        return Ok(out);
    }
    let found = consumer.offsets_for_times(tpl, Duration::from_secs(10))?;
    let mut nothing_since = TopicPartitionList::new();
    for ((topic, partition), since) in targets {
        if *since == i64::MIN {
            continue;
        }
        match found.find_partition(topic, *partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => out.push(((topic.clone(), *partition), Some(o))),
            // Nothing that recent, if the broker answers lookups by time: asked below.
            Some(_) => nothing_since.add_partition_offset(topic, *partition, Offset::Offset(0))?,
            None => out.push(((topic.clone(), *partition), Some(0))),
        }
    }
    if nothing_since.count() == 0 {
        return Ok(out);
    }
    let first = consumer.offsets_for_times(nothing_since.clone(), Duration::from_secs(10))?;
    for e in nothing_since.elements() {
        let answers_times = matches!(
            first
                .find_partition(e.topic(), e.partition())
                .map(|f| f.offset()),
            Some(Offset::Offset(_))
        );
        let start = (!answers_times).then_some(0);
        out.push(((e.topic().to_owned(), e.partition()), start));
    }
    Ok(out)
}

/// Hands every record of `starts` (partition → first offset; `None` skips it) up to the end
/// each partition had when the read began to `on_record`.
fn read_to_end(
    consumer: &BaseConsumer,
    starts: &BTreeMap<(String, i32), Option<i64>>,
    mut on_record: impl FnMut(Envelope),
) -> Result<(), RecoveryError> {
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), start) in starts {
        let Some(start) = start else { continue };
        let (low, high) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10))?;
        let start = (*start).max(low);
        if start >= high {
            continue;
        }
        tracing::debug!(%topic, partition, start, end = high, "reading back");
        ends.insert((topic.clone(), *partition), high);
        tpl.add_partition_offset(topic, *partition, Offset::Offset(start))?;
    }
    if ends.is_empty() {
        return Ok(());
    }
    let mut names = TopicNames::default();
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + READ_LIMIT;
    while !ends.is_empty() {
        if Instant::now() >= deadline {
            return Err(RecoveryError::Incomplete(ends.len()));
        }
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = result?;
        let key = (message.topic().to_owned(), message.partition());
        let Some(end) = ends.get(&key).copied() else {
            continue;
        };
        let offset = message.offset();
        if offset < end {
            on_record(envelope_of(&message, &mut names));
        }
        if offset + 1 >= end {
            ends.remove(&key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};

    use super::*;
    use crate::server::Server;

    const TOPIC: &str = "copies";

    /// Produces one record to partition 0 of `TOPIC`.
    fn produce_one(bootstrap: &str) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("a producer");
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(TOPIC)
                    .partition(0)
                    .payload(b"copy"),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
        producer
            .flush(Duration::from_secs(10))
            .expect("acknowledged");
    }

    /// Where a read-back starts reading partition 0 of `TOPIC` for copies made since `since`.
    fn start_since(bootstrap: &str, since: i64) -> Option<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "read-back")
            .create()
            .expect("a consumer");
        let targets = BTreeMap::from([((TOPIC.to_owned(), 0), since)]);
        let starts = starts_at_time(&consumer, &targets).expect("looked up");
        assert_eq!(starts.len(), 1);
        starts[0].1
    }

    fn now_ms() -> i64 {
        crate::policy::now_ms()
    }

    /// librdkafka's mock cluster answers every lookup by time with -1: believed, the copy
    /// made a minute after `since` would be missed and its record routed again.
    #[test]
    fn a_partition_of_a_broker_that_ignores_the_time_is_read_from_its_start() {
        let mock = MockCluster::new(1).expect("a mock cluster");
        mock.create_topic(TOPIC, 1, 1).expect("topic");
        let bootstrap = mock.bootstrap_servers();
        produce_one(&bootstrap);
        assert_eq!(start_since(&bootstrap, now_ms() - 60_000), Some(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_that_answers_times_is_believed_when_nothing_is_that_recent() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let server = Server::builder()
            .listen("127.0.0.1:0")
            .data_dir(dir.path())
            .auto_create_topics(true)
            .default_partitions(1)
            .start()
            .await
            .expect("the server starts");
        let bootstrap = server.local_addr().to_string();
        let (recent, future) = tokio::task::block_in_place(|| {
            produce_one(&bootstrap);
            (
                start_since(&bootstrap, now_ms() - 60_000),
                start_since(&bootstrap, now_ms() + 60_000),
            )
        });
        assert_eq!(recent, Some(0), "the copy made since is read");
        assert_eq!(future, None, "nothing that recent: nothing read");
        server.shutdown().await;
    }
}
