//! The relay: a consumer group (`<topic>.delay-relay`) over a topic's bucket topics that
//! moves each delayed record on when its hop is due — to a shorter bucket, or to its topic
//! once it is due for delivery.
//!
//! Per partition it keeps the records it read and has not yet moved (by offset) and wakes
//! for the earliest hop; a record's offset is committed only once every record before it in
//! the partition was moved and acknowledged, so a relay killed at any moment loses nothing:
//! the next owner of the partition reads the unmoved records again (and may move some of them
//! a second time, see docs/delayed-messages.md). A partition whose waiting records reach the
//! buffer limit pauses until half of them have moved.
//!
//! A move the broker refuses for good (a record too large for the topic, a topic the relay
//! may not write) is not tried forever: the record goes to the dead-letter topic
//! (`<topic>.dlq` unless set) with the refusal in its headers, and the partition moves on.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::buckets::{self, bucket_of, bucket_topic, place, Placement};
use super::DelayError;
use crate::broker::{headers_of, owned_headers, run_within, serve_rebalance, Within};
use crate::message::headers::{self, DELAY_HOP_AT, DELIVER_AT};
use crate::message::Headers;
use crate::observe::metrics;
use crate::policy;

/// Records a partition holds in memory before it pauses.
pub const DEFAULT_BUFFER_LIMIT: usize = 10_000;

/// How long a record waits before its move is tried again after the broker refused it.
const RETRY_MOVE_MS: i64 = 1_000;

/// How long the relay waits before it starts moves again after the producer's queue was full.
const QUEUE_FULL_WAIT_MS: i64 = 100;

/// How long a stopping relay waits for moves in flight.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What a relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Records delivered to the topic.
    pub delivered: u64,
    /// Records moved to a shorter bucket.
    pub hopped: u64,
    /// Records whose move the broker refused for good, sent to the dead-letter topic.
    pub dead_lettered: u64,
}

/// Moves the delayed records of one topic through its buckets and delivers them when due.
#[derive(Debug, Clone)]
pub struct Relay {
    topic: String,
    client: ClientConfig,
    /// The producer's and the admin client's settings (`client` unless set apart).
    producer: Option<ClientConfig>,
    buffer_limit: usize,
    /// Where records whose move is refused for good go (`<topic>.dlq` when `None`).
    dead_letter: Option<String>,
    /// Whether [`Relay::ensure_topics`] made sure of the bucket topics already.
    topics_ready: bool,
}

impl Relay {
    /// A relay for the delayed records of `topic`, its clients made from `client` (brokers
    /// and security properties; group and offset settings are the relay's own).
    pub fn new(topic: impl Into<String>, client: ClientConfig) -> Relay {
        Relay {
            topic: topic.into(),
            client,
            producer: None,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            dead_letter: None,
            topics_ready: false,
        }
    }

    /// Settings of its own for the relay's producer and the client that creates the bucket
    /// topics (a worker's passes its consumer properties to the consumer and its producer
    /// properties here, as it does for its own clients).
    pub fn producer_config(mut self, producer: ClientConfig) -> Relay {
        self.producer = Some(producer);
        self
    }

    /// The producer's settings.
    fn producer_settings(&self) -> &ClientConfig {
        self.producer.as_ref().unwrap_or(&self.client)
    }

    /// Records one partition holds before it pauses (default [`DEFAULT_BUFFER_LIMIT`]).
    pub fn buffer_limit(mut self, limit: usize) -> Relay {
        self.buffer_limit = limit.max(1);
        self
    }

    /// The topic records go to when the broker refuses their move for good (too large for
    /// the topic, not authorized); `<topic>.dlq` by default. It must exist.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Relay {
        self.dead_letter = Some(topic.into());
        self
    }

    /// The dead-letter topic in use.
    pub fn dead_letter(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }

    /// The consumer group of the relays of the topic: `<topic>.delay-relay`.
    pub fn group(&self) -> String {
        format!("{}.delay-relay", self.topic)
    }

    /// Makes sure the topic exists and creates its bucket topics where missing (with its
    /// partition count); returns that count.
    pub async fn ensure_topics(&mut self) -> Result<i32, DelayError> {
        let partitions = super::ensure_bucket_topics(self.producer_settings(), &self.topic).await?;
        self.topics_ready = true;
        Ok(partitions)
    }

    /// Makes sure the bucket topics exist unless [`Relay::ensure_topics`] did, then relays until
    /// `shutdown` is cancelled, waits for the moves in flight, commits and leaves the group.
    /// Each of those last waits is bounded (10 s): with the broker gone, the commit and the
    /// leave go on on a thread of their own after `run` returned, the member still in the
    /// group until then.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<RelayStats, DelayError> {
        // Subscribed to before they exist, librdkafka would see them only at its next
        // metadata refresh (5 minutes by default).
        if !self.topics_ready {
            self.ensure_topics().await?;
        }
        let context = RelayContext::default();
        let revoked = context.revoked.clone();
        let mut config = self.client.clone();
        config
            .set("group.id", self.group())
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A member joining or leaving moves only the partitions that change owner: the
            // others keep their records in memory instead of reading them again.
            .set("partition.assignment.strategy", "cooperative-sticky");
        let consumer: StreamConsumer<RelayContext> = config
            .create_with_context(context)
            .map_err(|e| DelayError::Client(format!("creating the relay's consumer: {e}")))?;
        let names = buckets::bucket_topics(&self.topic);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| DelayError::Client(format!("subscribing to {refs:?}: {e}")))?;
        let mut producer_config = self.producer_settings().clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "60000");
        let mut producer: FutureProducer = producer_config
            .create()
            .map_err(|e| DelayError::Client(format!("creating the relay's producer: {e}")))?;
        let mut state = State {
            topic: self.topic.clone(),
            dead_letter: self.dead_letter(),
            group: self.group(),
            limit: self.buffer_limit,
            revoked,
            partitions: HashMap::new(),
            heap: BinaryHeap::new(),
            epochs: 0,
            touched: Vec::new(),
            waiting: 0,
            meters: RelayMeters::new(&self.topic),
            backoff_until: 0,
            suspects: VecDeque::new(),
            solo: false,
            stats: RelayStats::default(),
        };
        let mut moves = FuturesUnordered::new();
        tracing::info!(topic = %self.topic, group = %self.group(), "delay relay started");
        loop {
            let wake = state.next_due(moves.len()).map(|due| {
                let wait = u64::try_from(due - policy::now_ms()).unwrap_or(0);
                tokio::time::Instant::now() + Duration::from_millis(wait)
            });
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some((id, result)) = moves.next(), if !moves.is_empty() => state.moved(id, result),
                () = sleep_until(wake), if wake.is_some() => {
                    state.release(policy::now_ms(), &producer, &mut moves);
                }
                message = consumer.recv() => match message {
                    Ok(message) => state.receive(&message),
                    Err(e) => {
                        tracing::warn!(error = %e, "delay relay: consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
            state.forget_revoked();
            state.settle(&consumer);
            // A producer that failed for good refuses every send at once (with no move left
            // to report it, when none was in flight): looked at after every turn (an atomic
            // read in librdkafka).
            replace_if_failed(&mut producer, &producer_config);
        }
        let stopping = async {
            while let Some((id, result)) = moves.next().await {
                state.moved(id, result);
            }
        };
        if tokio::time::timeout(STOP_WAIT, stopping).await.is_err() {
            tracing::warn!(
                "delay relay: moves still unacknowledged at stop (their records are read again)"
            );
        }
        state.settle(&consumer);
        state.meters.waiting.set(0.0);
        let stats = state.stats;
        // The final commit and the clients' close wait on the broker: off the async threads,
        // and for at most STOP_WAIT (a broker that is gone would hold the commit for the
        // session timeout); past it the relay's records are read again by the next owner.
        let closing = move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing moved since the last automatic commit.
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) | Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "delay relay: the final commit failed; the next owner reads the records since the last commit again")
                }
            }
            drop(consumer);
            drop(producer);
        };
        let within =
            tokio::task::spawn_blocking(move || run_within(STOP_WAIT, "relay close", closing))
                .await
                .map_err(|e| DelayError::Client(format!("closing the relay's consumer: {e}")))?;
        match within {
            Within::Ended => {}
            Within::Panicked => tracing::error!("delay relay: closing its clients panicked"),
            Within::TimedOut => tracing::warn!("delay relay: its final commit and close did not end in time (the broker does not answer); stopping without them"),
            Within::NotRun => tracing::warn!("delay relay: no thread for its final commit; its clients closed without it"),
        }
        tracing::info!(
            delivered = stats.delivered,
            hopped = stats.hopped,
            dead_lettered = stats.dead_lettered,
            "delay relay stopped"
        );
        Ok(stats)
    }
}

/// Replaces `producer` with a new one of `config` when it failed for good (a fatal error,
/// such as an idempotent producer's sequence lost by the broker): it would refuse every move
/// from then on. The moves it still held fail and are tried again through the new one (at
/// least once, as after any failed move). Whether it did.
fn replace_if_failed(producer: &mut FutureProducer, config: &ClientConfig) -> bool {
    use rdkafka::producer::Producer as _;
    let Some((code, reason)) = producer.client().fatal_error() else {
        return false;
    };
    match config.create::<FutureProducer>() {
        Ok(fresh) => {
            tracing::error!(?code, %reason, "delay relay: its producer failed for good; moving on with a new one");
            let failed = std::mem::replace(producer, fresh);
            // Destroying a client waits for its threads: off the async threads.
            tokio::task::spawn_blocking(move || drop(failed));
            true
        }
        Err(e) => {
            tracing::error!(?code, %reason, error = %e, "delay relay: its producer failed for good and a new one could not be made; trying again at the next move");
            false
        }
    }
}

/// Sleeps until `at` (the branch is off when there is none).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Notes the partitions a rebalance takes away, for the relay loop to forget.
#[derive(Default)]
struct RelayContext {
    revoked: Arc<parking_lot::Mutex<Vec<(String, i32)>>>,
}

impl ClientContext for RelayContext {}

impl ConsumerContext for RelayContext {
    /// See [`serve_rebalance`]; the relay's group is cooperative.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        serve_rebalance(self, consumer, err, tpl, true);
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.revoked.lock();
            revoked.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition())),
            );
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // A partition paused when it was revoked stays paused in librdkafka when it comes
            // back; the relay holds nothing of it any more, so it starts fetching again.
            if let Err(e) = consumer.resume(tpl) {
                tracing::debug!(error = %e, "delay relay: resuming assigned partitions");
            }
            tracing::info!(
                partitions = tpl.count(),
                "delay relay: bucket partitions assigned"
            );
        }
    }
}

/// The relay's metric handles ([`metrics::DELAYED_MOVED`], [`metrics::DELAYED_WAITING`]).
struct RelayMeters {
    delivered: ::metrics::Counter,
    hopped: ::metrics::Counter,
    dead_lettered: ::metrics::Counter,
    waiting: ::metrics::Gauge,
}

impl RelayMeters {
    fn new(topic: &str) -> RelayMeters {
        let topic = topic.to_owned();
        RelayMeters {
            delivered: ::metrics::counter!(metrics::DELAYED_MOVED, "topic" => topic.clone(), "outcome" => "delivered"),
            hopped: ::metrics::counter!(metrics::DELAYED_MOVED, "topic" => topic.clone(), "outcome" => "hopped"),
            dead_lettered: ::metrics::counter!(metrics::DELAYED_MOVED, "topic" => topic.clone(), "outcome" => "dead_lettered"),
            waiting: ::metrics::gauge!(metrics::DELAYED_WAITING, "topic" => topic),
        }
    }
}

/// A bucket topic's partition.
type Tp = (Arc<str>, i32);

/// A record read from a bucket and not yet moved.
struct Waiting {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Headers,
    /// When it is due for delivery (`None`: it carries no delivery time and goes to the
    /// topic at once).
    deliver_at: Option<i64>,
    /// When it next moves.
    due: i64,
    moving: bool,
    /// Why the broker refused its move for good: it goes to the dead-letter topic next.
    refused: Option<String>,
}

/// One assigned bucket partition.
struct Partition {
    epoch: u64,
    records: BTreeMap<i64, Waiting>,
    /// The offset after the last record read.
    next: i64,
    /// The offset last stored for commit.
    stored: i64,
    paused: bool,
}

/// Where a move takes a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoveKind {
    /// To the topic: due for delivery.
    Delivered,
    /// To a shorter bucket.
    Hopped,
    /// To the dead-letter topic: an earlier move was refused for good.
    DeadLettered,
}

/// A move in flight: which record, of which assignment of its partition, and where to.
struct MoveId {
    tp: Tp,
    epoch: u64,
    offset: i64,
    kind: MoveKind,
    /// Sent with no other move in flight: a record the broker refused for good, tried alone.
    alone: bool,
}

/// The moves in flight.
type Moves = FuturesUnordered<futures::future::BoxFuture<'static, (MoveId, MoveResult)>>;

type MoveResult = Result<
    rdkafka::producer::future_producer::OwnedDeliveryResult,
    futures::channel::oneshot::Canceled,
>;

struct State {
    topic: String,
    /// Where records whose move is refused for good go.
    dead_letter: String,
    /// The relay's consumer group, in dead letters' headers.
    group: String,
    limit: usize,
    revoked: Arc<parking_lot::Mutex<Vec<(String, i32)>>>,
    partitions: HashMap<Tp, Partition>,
    /// (due, partition, offset, epoch): entries whose record moved or changed are skipped.
    heap: BinaryHeap<Reverse<(i64, Tp, i64, u64)>>,
    epochs: u64,
    /// Partitions whose records changed since offsets were last stored and flow decided:
    /// only they are looked at again.
    touched: Vec<Tp>,
    /// Records held, every partition together (the waiting gauge).
    waiting: usize,
    meters: RelayMeters,
    /// No moves are started before this (ms since the epoch): the producer's queue was full.
    backoff_until: i64,
    /// Records whose move the broker refused for good, to be tried alone before anything
    /// else moves: (partition, offset, epoch).
    suspects: VecDeque<(Tp, i64, u64)>,
    /// A suspect's move is in flight alone: nothing else starts until it is answered.
    solo: bool,
    stats: RelayStats,
}

impl State {
    /// Forgets the partitions revoked since the last call: their records are read again by
    /// their next owner, from the committed offset.
    fn forget_revoked(&mut self) {
        let revoked: Vec<(String, i32)> = std::mem::take(&mut *self.revoked.lock());
        if revoked.is_empty() {
            return;
        }
        let waiting = &mut self.waiting;
        for (topic, partition) in revoked {
            self.partitions.retain(|(t, p), held| {
                let keep = !(t[..] == topic && *p == partition);
                if !keep {
                    *waiting -= held.records.len();
                }
                keep
            });
        }
        // Their timers too: a bucket-9 record's would wait up to 18 hours.
        let partitions = &self.partitions;
        self.heap.retain(|Reverse((_, tp, _, epoch))| {
            partitions.get(tp).is_some_and(|p| p.epoch == *epoch)
        });
    }

    /// When the relay next has something to move: the earliest due record, but not before
    /// a full producer queue had time to drain. A record to be tried alone waits for the
    /// `in_flight` moves to be answered, then goes at once.
    fn next_due(&self, in_flight: usize) -> Option<i64> {
        if self.solo {
            return None;
        }
        if !self.suspects.is_empty() {
            return (in_flight == 0).then_some(self.backoff_until);
        }
        self.heap
            .peek()
            .map(|Reverse((due, ..))| (*due).max(self.backoff_until))
    }

    /// Takes in a record read from a bucket.
    fn receive(&mut self, message: &BorrowedMessage<'_>) {
        self.forget_revoked();
        if bucket_of(&self.topic, message.topic()).is_none() {
            return;
        }
        let tp: Tp = (Arc::from(message.topic()), message.partition());
        let headers = headers_of(message, std::borrow::Cow::Borrowed);
        let deliver_at = read_time(&headers, DELIVER_AT);
        let hop_at = read_time(&headers, DELAY_HOP_AT);
        let now = policy::now_ms();
        let due = match (deliver_at, hop_at) {
            (Some(d), Some(h)) => d.min(h),
            (Some(d), None) => d,
            (None, _) => {
                tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "a delayed record without a readable `{DELIVER_AT}`: delivered now"
                );
                now
            }
        };
        let offset = message.offset();
        let epochs = &mut self.epochs;
        let partition = self.partitions.entry(tp.clone()).or_insert_with(|| {
            *epochs += 1;
            Partition {
                epoch: *epochs,
                records: BTreeMap::new(),
                next: offset,
                stored: -1,
                paused: false,
            }
        });
        partition.next = partition.next.max(offset + 1);
        let previous = partition.records.insert(
            offset,
            Waiting {
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers,
                deliver_at,
                due,
                moving: false,
                refused: None,
            },
        );
        if previous.is_none() {
            self.waiting += 1;
        }
        self.heap
            .push(Reverse((due, tp.clone(), offset, partition.epoch)));
        self.touched.push(tp);
    }

    /// Moves every record whose hop or delivery is due at `now`, earliest first. A record
    /// the broker refused for good goes alone first: nothing else starts until the moves in
    /// flight are answered, then it is sent by itself, so that a refusal of the batch it
    /// shared (a batch too large for the topic, say) is told apart from its own.
    fn release(&mut self, now: i64, producer: &FutureProducer, moves: &mut Moves) {
        self.forget_revoked();
        if self.solo {
            return;
        }
        while !self.suspects.is_empty() {
            if !moves.is_empty() {
                return;
            }
            let Some((tp, offset, epoch)) = self.suspects.pop_front() else {
                break;
            };
            let valid = self
                .partitions
                .get(&tp)
                .filter(|p| p.epoch == epoch)
                .and_then(|p| p.records.get(&offset))
                .is_some_and(|r| !r.moving);
            if valid {
                let queue_has_room = self.start(tp, offset, epoch, now, producer, moves, true);
                if self.solo || !queue_has_room {
                    return;
                }
            }
        }
        while let Some(Reverse((due, ..))) = self.heap.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, tp, offset, epoch))) = self.heap.pop() else {
                break;
            };
            let current = self
                .partitions
                .get(&tp)
                .filter(|p| p.epoch == epoch)
                .and_then(|p| p.records.get(&offset))
                .is_some_and(|r| !r.moving && r.due == due);
            if current && !self.start(tp, offset, epoch, now, producer, moves, false) {
                break;
            }
        }
    }

    /// Starts the move of one record (`alone`: with nothing else in flight); `false` when the
    /// producer's queue is full and no more moves should start now.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        tp: Tp,
        offset: i64,
        epoch: u64,
        now: i64,
        producer: &FutureProducer,
        moves: &mut Moves,
        alone: bool,
    ) -> bool {
        let Some(record) = self
            .partitions
            .get_mut(&tp)
            .and_then(|p| p.records.get_mut(&offset))
        else {
            return true;
        };
        let placement = match &record.refused {
            Some(_) => None,
            None => Some(record.deliver_at.map(|d| place(d, now))),
        };
        let (destination, kind, headers) = match placement {
            None => (
                self.dead_letter.clone(),
                MoveKind::DeadLettered,
                dead_letter_headers(record, &self.topic, &self.group, &tp, offset, now),
            ),
            Some(None | Some(Placement::Deliver)) => {
                record.headers.remove(DELAY_HOP_AT);
                (
                    self.topic.clone(),
                    MoveKind::Delivered,
                    owned_headers(&record.headers),
                )
            }
            Some(Some(Placement::Hold)) => {
                // Less than the shortest hop left: waits here for its delivery time.
                record.due = record.deliver_at.unwrap_or(now);
                self.heap.push(Reverse((record.due, tp, offset, epoch)));
                return true;
            }
            Some(Some(Placement::Bucket { bucket, hop_at_ms })) => {
                record
                    .headers
                    .set(DELAY_HOP_AT, headers::format_time_ms(hop_at_ms));
                (
                    bucket_topic(&self.topic, bucket),
                    MoveKind::Hopped,
                    owned_headers(&record.headers),
                )
            }
        };
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&destination).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            out = out.payload(payload.as_slice());
        }
        match producer.send_result(out) {
            Ok(delivery) => {
                record.moving = true;
                self.solo = alone;
                let id = MoveId {
                    tp,
                    epoch,
                    offset,
                    kind,
                    alone,
                };
                moves.push(acknowledged(id, delivery));
                true
            }
            Err((e, _)) => {
                // Tried again later: the whole relay waits out a full queue; another
                // refusal keeps this record back a while, unless it is for good (the
                // producer checks each record by itself: too large, say), when it goes to
                // the dead-letter topic now.
                let full = e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull);
                if full {
                    tracing::debug!("delay relay: producer queue full, waiting");
                    self.backoff_until = now + QUEUE_FULL_WAIT_MS;
                    // Keeps the record's time: the relay as a whole waits, so the order of
                    // the moves holds.
                    if alone {
                        self.suspects.push_front((tp, offset, epoch));
                    } else {
                        self.heap.push(Reverse((record.due, tp, offset, epoch)));
                    }
                    return false;
                }
                if kind != MoveKind::DeadLettered && refused_for_good(&e) {
                    tracing::error!(error = %e, topic = %tp.0, partition = tp.1, offset, to = %destination,
                        "delay relay: the producer refused a move for good; dead-lettering the record");
                    record.refused = Some(format!("moving it to {destination}: {e}"));
                    record.due = now;
                } else {
                    tracing::error!(error = %e, topic = %tp.0, partition = tp.1, offset, to = %destination,
                        "delay relay: the producer refused a move; trying again");
                    record.due = now + RETRY_MOVE_MS;
                }
                self.heap.push(Reverse((record.due, tp, offset, epoch)));
                true
            }
        }
    }

    /// A move was acknowledged (the record is done) or failed (it is tried again). A move
    /// the broker refused for good is tried again alone first; refused alone, the record goes
    /// to the dead-letter topic.
    fn moved(&mut self, id: MoveId, result: MoveResult) {
        if id.alone {
            self.solo = false;
        }
        self.forget_revoked();
        let Some(partition) = self
            .partitions
            .get_mut(&id.tp)
            .filter(|p| p.epoch == id.epoch)
        else {
            return;
        };
        match result {
            Ok(Ok(_)) => {
                if partition.records.remove(&id.offset).is_some() {
                    self.waiting -= 1;
                }
                self.touched.push(id.tp.clone());
                match id.kind {
                    MoveKind::Delivered => {
                        self.stats.delivered += 1;
                        self.meters.delivered.increment(1);
                    }
                    MoveKind::Hopped => {
                        self.stats.hopped += 1;
                        self.meters.hopped.increment(1);
                    }
                    MoveKind::DeadLettered => {
                        self.stats.dead_lettered += 1;
                        self.meters.dead_lettered.increment(1);
                    }
                }
            }
            Ok(Err((e, _))) if id.kind != MoveKind::DeadLettered && refused_for_good(&e) => {
                let Some(record) = partition.records.get_mut(&id.offset) else {
                    return;
                };
                record.moving = false;
                if id.alone {
                    tracing::error!(error = %e, topic = %id.tp.0, partition = id.tp.1, offset = id.offset,
                        "delay relay: the broker refused a move of this record alone for good; dead-lettering it");
                    record.refused = Some(format!("moving it on: {e}"));
                    self.retry(id, 0);
                } else {
                    tracing::warn!(error = %e, topic = %id.tp.0, partition = id.tp.1, offset = id.offset,
                        "delay relay: the broker refused a move for good; trying the record alone");
                    self.suspects.push_back((id.tp, id.offset, id.epoch));
                }
            }
            Ok(Err((e, _))) => {
                tracing::warn!(error = %e, topic = %id.tp.0, partition = id.tp.1, offset = id.offset,
                    to = ?id.kind, "delay relay: a move was not acknowledged; trying again");
                self.retry(id, RETRY_MOVE_MS);
            }
            Err(_) => self.retry(id, RETRY_MOVE_MS),
        }
    }

    /// Puts a record whose move failed back, due again in `after_ms`.
    fn retry(&mut self, id: MoveId, after_ms: i64) {
        let Some(partition) = self.partitions.get_mut(&id.tp) else {
            return;
        };
        if let Some(record) = partition.records.get_mut(&id.offset) {
            record.moving = false;
            record.due = policy::now_ms() + after_ms;
            self.heap
                .push(Reverse((record.due, id.tp, id.offset, id.epoch)));
        }
    }

    /// Stores offsets and pauses or resumes for the partitions whose records changed since
    /// the last call, and sets the waiting gauge.
    fn settle(&mut self, consumer: &StreamConsumer<RelayContext>) {
        if self.touched.is_empty() {
            return;
        }
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        self.store_offsets(consumer, &touched);
        self.flow(consumer, &touched);
        self.meters.waiting.set(self.waiting as f64);
        touched.clear();
        self.touched = touched;
    }

    /// Stores, for each partition of `touched`, the offset of its first record not yet moved
    /// (or the one after the last read): what the next owner starts from.
    fn store_offsets(&mut self, consumer: &StreamConsumer<RelayContext>, touched: &[Tp]) {
        let mut tpl = TopicPartitionList::new();
        for tp in touched {
            let Some(partition) = self.partitions.get_mut(tp) else {
                continue;
            };
            let (topic, p) = tp;
            let low = partition
                .records
                .keys()
                .next()
                .copied()
                .unwrap_or(partition.next);
            if low > partition.stored
                && tpl
                    .add_partition_offset(topic, *p, Offset::Offset(low))
                    .is_ok()
            {
                partition.stored = low;
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.store_offsets(&tpl) {
                tracing::debug!(error = %e, "delay relay: storing offsets");
            }
        }
    }

    /// Pauses a partition whose waiting records reached the limit; resumes it at half.
    fn flow(&mut self, consumer: &StreamConsumer<RelayContext>, touched: &[Tp]) {
        for tp in touched {
            let Some(partition) = self.partitions.get_mut(tp) else {
                continue;
            };
            let (topic, p) = tp;
            let held = partition.records.len();
            let change = if !partition.paused && held >= self.limit {
                Some(true)
            } else if partition.paused && held <= self.limit / 2 {
                Some(false)
            } else {
                None
            };
            let Some(pause) = change else { continue };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, *p);
            let result = if pause {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            match result {
                Ok(()) => partition.paused = pause,
                Err(e) => tracing::debug!(error = %e, "delay relay: pause or resume"),
            }
        }
    }
}

/// Whether the broker (or the producer, before sending) refused a record for good: trying it
/// again cannot succeed (too large for the topic, malformed, not authorized).
fn refused_for_good(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    )
}

/// A dead letter's headers: the record's own (without the relay's hop), where it was read
/// (the bucket partition and offset), the topic it was delayed for (where a replay sends
/// it), and why its move was refused (class `refused`).
fn dead_letter_headers(
    record: &Waiting,
    topic: &str,
    group: &str,
    tp: &Tp,
    offset: i64,
    now: i64,
) -> rdkafka::message::OwnedHeaders {
    let mut dead = record.headers.clone();
    dead.remove(DELAY_HOP_AT);
    let at = headers::format_time_ms(now);
    dead.set(headers::ORIGINAL_TOPIC, topic.to_owned());
    dead.set(headers::ORIGINAL_PARTITION, tp.1.to_string());
    dead.set(headers::ORIGINAL_OFFSET, offset.to_string());
    dead.set(headers::GROUP, group.to_owned());
    dead.set(headers::ERROR_CLASS, REFUSED_CLASS);
    dead.set(
        headers::ERROR_MESSAGE,
        format!(
            "read from {} partition {} at offset {offset}; {}",
            tp.0,
            tp.1,
            record.refused.as_deref().unwrap_or("refused")
        ),
    );
    dead.set(headers::FIRST_FAILURE, at.clone());
    dead.set(headers::LAST_FAILURE, at);
    owned_headers(&dead)
}

/// The error class of a delayed record whose move the broker refused for good.
pub const REFUSED_CLASS: &str = "refused";

/// A time header: RFC 3339 text, or milliseconds since the epoch.
fn read_time(headers: &Headers, name: &str) -> Option<i64> {
    let text = headers.get_str(name)?;
    headers::parse_time_ms(text).or_else(|| text.trim().parse().ok())
}

/// Resolves with the move's id once the broker answered.
fn acknowledged(
    id: MoveId,
    delivery: DeliveryFuture,
) -> futures::future::BoxFuture<'static, (MoveId, MoveResult)> {
    delivery.map(move |result| (id, result)).boxed()
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::Producer as _;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::*;

    /// Sends one record to the mock cluster's topic.
    async fn send(
        producer: &FutureProducer,
    ) -> Result<
        rdkafka::producer::future_producer::Delivery,
        (rdkafka::error::KafkaError, rdkafka::message::OwnedMessage),
    > {
        producer
            .send(
                FutureRecord::to("relayed").key("k").payload("v"),
                Duration::from_secs(5),
            )
            .await
    }

    /// A producer that failed for good (the broker answered its idempotent sequence with an
    /// error it cannot recover from, under the gap-less guarantee) is replaced by a working
    /// one of the same settings; a working one is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_that_failed_for_good_is_replaced() {
        let cluster = MockCluster::new(1).expect("librdkafka's mock cluster");
        cluster
            .create_topic("relayed", 1, 1)
            .expect("a topic on the mock cluster");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("enable.idempotence", "true")
            .set("enable.gapless.guarantee", "true")
            .set("message.timeout.ms", "5000");
        let mut producer: FutureProducer = config.create().expect("a producer");
        assert!(
            !replace_if_failed(&mut producer, &config),
            "a working producer stays"
        );
        send(&producer)
            .await
            .expect("the first record acknowledged");
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 3],
        );
        let refused = send(&producer).await;
        assert!(refused.is_err(), "the second record refused");
        assert!(
            producer.client().fatal_error().is_some(),
            "the producer failed for good: {refused:?}"
        );
        assert!(replace_if_failed(&mut producer, &config), "it is replaced");
        assert!(
            producer.client().fatal_error().is_none(),
            "the new producer has not failed"
        );
        cluster.clear_request_errors(RDKafkaApiKey::Produce);
        send(&producer)
            .await
            .expect("the new producer's record acknowledged");
    }
}
