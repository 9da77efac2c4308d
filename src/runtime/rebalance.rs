//! Rebalance callbacks: a revoked partition is drained (running handlers finish or are
//! abandoned at the drain deadline) and its offsets committed before the revoke completes; a
//! lost partition is abandoned without a commit; an assigned partition reads back its
//! finished offsets and is explicitly resumed, so a pause from an earlier assignment never
//! leaves it stuck.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::dispatch::TopicPartition;
use super::endpoint::take_statistics;
use super::offsets::{self, FinishedAbove};
use super::recovery::{reader, recover, RecoveryPlan};
use super::shared::Shared;
use crate::broker::serve_rebalance;
use crate::policy;

/// The consumer context of a worker.
pub(crate) struct WorkerContext {
    /// The worker's shared state.
    pub(crate) shared: Arc<Shared>,
    /// How long a revoke waits for running handlers.
    pub(crate) drain_timeout: Duration,
    /// How assigned partitions read back their retry state before they run.
    pub(crate) recovery: RecoveryPlan,
    /// `start_from` a time: the source topic, and the time in ms since the epoch. Its
    /// partitions without a committed offset start at the first record at or after it.
    pub(crate) start_at: Option<(String, i64)>,
    /// Where an assigned partition the group never committed starts (from
    /// `auto.offset.reset`; none where it names no position): set on the assignment itself.
    pub(crate) never_committed: Option<Offset>,
    /// The committed offsets read before an assignment, for the callback after it.
    pub(crate) committed: Mutex<Option<TopicPartitionList>>,
    /// The group's assignment strategy is cooperative (`[kafka] partition.assignment.strategy`
    /// names `cooperative-sticky`): partitions are assigned and revoked incrementally.
    pub(crate) cooperative: bool,
}

/// Whether a partition's entry in the committed offsets says the group never committed it. One
/// whose commit could not be read (an error on the entry) is not: librdkafka holds it back.
fn never_committed(e: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>) -> bool {
    e.error().is_ok() && !matches!(e.offset(), Offset::Offset(_))
}

/// The position `auto.offset.reset`'s value names (librdkafka's spellings), if any.
pub(crate) fn never_committed_start(reset: &str) -> Option<Offset> {
    match reset {
        "earliest" | "smallest" | "beginning" => Some(Offset::Beginning),
        "latest" | "largest" | "end" => Some(Offset::End),
        _ => None,
    }
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        take_statistics(&self.shared, &statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.shared.health.broker_down(reason.to_owned());
        }
        tracing::error!(%error, reason, "broker client error");
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

/// Builds a commit list with each partition's offset and finished-offset metadata.
pub(crate) fn commit_list(commits: &[(TopicPartition, i64, String)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset, metadata) in commits {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_ok()
        {
            if let Some(mut elem) = tpl.find_partition(topic, *partition) {
                elem.set_metadata(metadata);
            }
        }
    }
    tpl
}

impl WorkerContext {
    /// Drains and forgets revoked (or lost) partitions, and commits what they finished
    /// before the rebalance goes on (see [`Shared::drain_revoked`] for why this waits).
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let tps = partitions_of(tpl);
        if self.shared.is_closing() {
            // Shutdown drained and committed already; just forget the partitions.
            self.shared.forget_revoked(&tps);
            return;
        }
        // No periodic commit may land after this revoke's (see `Shared::commit_gate`): wait
        // for one under way, and drop those that took their offsets before.
        let mut gate = self.shared.commit_gate.lock();
        *gate += 1;
        let lost = consumer.assignment_lost();
        self.shared
            .meters
            .rebalance(if lost { "lost" } else { "revoke" });
        let deadline = Instant::now() + self.drain_timeout;
        let drained = self.shared.drain_revoked(&tps, lost, deadline);
        if drained.abandoned_jobs > 0 {
            // Copies those handlers already handed to the producer, not yet sent (the broker
            // was down, say), must not land after the next owner's read-back.
            self.shared.sink.purge_queued();
        }
        self.shared.requeued(drained.abandoned);
        for (topic, partition) in &tps {
            // The next owner reports this partition's lag.
            self.shared.meters.lag(topic, *partition, 0);
        }
        if lost {
            tracing::warn!(
                partitions = tps.len(),
                "partitions lost: abandoned without a commit"
            );
            return;
        }
        if !drained.commits.is_empty() {
            if let Err(e) = consumer.commit(&commit_list(&drained.commits), CommitMode::Sync) {
                tracing::warn!(error = %e, "commit on revoke failed; the next owner replays from the last commit");
            }
        }
        tracing::info!(partitions = tps.len(), "partitions revoked");
    }

    /// Tracks assigned partitions with what their last commit said, reads back their retry
    /// state, and resumes them (those that must stay paused are paused again).
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        self.shared.meters.rebalance("assign");
        let committed = self.committed.lock().take();
        let restored = partitions_of(tpl)
            .into_iter()
            .map(|tp| {
                let restored = restored_of(committed.as_ref(), &tp);
                (tp, restored)
            })
            .collect();
        let reading = self.shared.assign_recovering(restored);
        if let Some(done) = self.read_back(reading) {
            // A read-back that ends in time spares the partitions a pause, and the second it
            // can cost (see `READ_BACK_WAIT`). Its sender is dropped when it ends.
            let _ = done.recv_timeout(READ_BACK_WAIT);
        }
        // An explicit resume: a partition paused in an earlier assignment runs again (one
        // whose read-back still runs is paused again below).
        if let Err(e) = consumer.resume(tpl) {
            tracing::warn!(error = %e, "resuming assigned partitions failed");
        }
        let still_paused = self.shared.settle_assigned(&partitions_of(tpl));
        // ...but one that must stay paused (an open breaker, say) is paused again.
        if !still_paused.is_empty() {
            let mut pause = TopicPartitionList::new();
            for (topic, partition) in &still_paused {
                pause.add_partition(topic, *partition);
            }
            if let Err(e) = consumer.pause(&pause) {
                tracing::warn!(error = %e, "pausing assigned partitions failed");
            }
        }
        self.shared.count_assigned(tpl.count() as u64);
        tracing::info!(partitions = tpl.count(), "partitions assigned");
    }

    /// Reads back the retry state of newly assigned partitions on a blocking thread (their
    /// records wait until then), trying again with backoff until it succeeds, the partitions
    /// are revoked or the worker stops. The receiver returned sees its sender dropped when
    /// the read-back ends.
    fn read_back(
        &self,
        reading: Vec<(TopicPartition, u64, FinishedAbove)>,
    ) -> Option<mpsc::Receiver<()>> {
        if reading.is_empty() {
            return None;
        }
        let (done, ended) = mpsc::channel::<()>();
        let shared = self.shared.clone();
        let plan = self.recovery.clone();
        let epochs: Vec<(TopicPartition, u64)> =
            reading.iter().map(|(tp, e, _)| (tp.clone(), *e)).collect();
        let assigned: Vec<(TopicPartition, FinishedAbove)> =
            reading.into_iter().map(|(tp, _, f)| (tp, f)).collect();
        let task = self.shared.runtime.spawn_blocking(move || {
            wait_for_orphans(&shared, &epochs);
            read_back_until_done(&shared, &plan, &epochs, &assigned, done);
        });
        self.shared.helpers.track(task);
        Some(ended)
    }
}

/// Sets the partitions of `topic` in `tpl`, about to be assigned, that the group has no
/// committed offset for to start at the first record at or after `at` (ms since the epoch),
/// found through the broker's time index (ListOffsets by timestamp), or at the log's end
/// where there is none. (A seek after the assignment raced librdkafka's own lookup of the
/// committed offset, which could move the partition back to `auto.offset.reset`'s.) When the
/// committed offsets could not be read, or the lookup fails three times, they start where
/// `auto.offset.reset` says (`earliest`): records before the time are handled, none is
/// skipped.
fn start_at_time(
    consumer: &BaseConsumer<WorkerContext>,
    tpl: &TopicPartitionList,
    committed: Option<&TopicPartitionList>,
    topic: &str,
    at: i64,
) {
    let Some(committed) = committed else {
        tracing::error!(topic, "the committed offsets are unknown: partitions start where auto.offset.reset says, not at start_from's time");
        return;
    };
    let mut lookup = TopicPartitionList::new();
    for (t, partition) in partitions_of(tpl) {
        let uncommitted = committed
            .find_partition(&t, partition)
            .is_none_or(|e| never_committed(&e));
        if &*t == topic && uncommitted {
            if let Err(e) = lookup.add_partition_offset(&t, partition, Offset::Offset(at)) {
                tracing::warn!(topic, partition, error = %e, "cannot look up start_from's offset");
            }
        }
    }
    if lookup.count() == 0 {
        return;
    }
    let Some(found) = look_up_offsets(consumer, &lookup, "start_from's offsets") else {
        tracing::error!(
            topic,
            "the partitions start where auto.offset.reset says, not at start_from's time"
        );
        return;
    };
    for e in found.elements() {
        // No record at or after the time: the log's end.
        let offset = match e.offset() {
            Offset::Offset(o) if o >= 0 => Offset::Offset(o),
            _ => Offset::End,
        };
        let set = tpl
            .find_partition(e.topic(), e.partition())
            .map(|mut assigned| assigned.set_offset(offset));
        match set {
            Some(Ok(())) => tracing::info!(
                topic = e.topic(),
                partition = e.partition(),
                ?offset,
                "no committed offset: starting at start_from's time"
            ),
            _ => {
                tracing::error!(topic = e.topic(), partition = e.partition(), "setting start_from's offset failed: the partition starts where auto.offset.reset says")
            }
        }
    }
}

/// Looks up the offsets of `lookup` by time (ListOffsets; the time -1 answers the log's
/// end), three tries in all: a leader moving fails the whole lookup for a moment.
fn look_up_offsets(
    consumer: &BaseConsumer<WorkerContext>,
    lookup: &TopicPartitionList,
    what: &str,
) -> Option<TopicPartitionList> {
    let mut tries = 0;
    loop {
        tries += 1;
        match consumer.offsets_for_times(lookup.clone(), Duration::from_secs(10)) {
            Ok(found) => return Some(found),
            Err(e) if tries < 3 => {
                tracing::warn!(error = %e, "looking up {what} failed; trying again");
                std::thread::sleep(Duration::from_millis(200 * tries));
            }
            Err(e) => {
                tracing::error!(error = %e, "looking up {what} failed three times");
                return None;
            }
        }
    }
}

/// What the last commit of `tp` said of the offsets above it (nothing when it is unknown).
fn restored_of(committed: Option<&TopicPartitionList>, tp: &TopicPartition) -> FinishedAbove {
    let restored = committed
        .and_then(|c| c.find_partition(&tp.0, tp.1))
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(FinishedAbove::parse(o, e.metadata())),
            _ => None,
        })
        .unwrap_or_default();
    if restored.len() > 0 {
        tracing::info!(topic = %tp.0, partition = tp.1, committed = restored.committed(), finished_above = restored.len(), "skipping offsets finished before the last commit");
    }
    restored
}

/// Waits (up to `ORPHAN_WAIT`) until jobs of earlier assignments of the partitions `epochs`
/// ended: revoked past the drain deadline, or lost, they may still be publishing copies, and
/// a read-back before they ended would miss their copies and route the records again.
fn wait_for_orphans(shared: &Shared, epochs: &[(TopicPartition, u64)]) {
    let orphans_until = Instant::now() + ORPHAN_WAIT;
    loop {
        let orphans = shared.orphans_of(epochs);
        if orphans == 0 || shared.shutdown.is_cancelled() {
            return;
        }
        if Instant::now() >= orphans_until {
            tracing::warn!(orphans, "handlers of an earlier assignment still run; reading back without waiting for their copies (a record may be routed twice)");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads back the retry state of `assigned` (assigned at `epochs`) and hands it over, trying
/// again with backoff while the partitions are still this worker's and it runs; `done` is
/// dropped once it is handed over.
fn read_back_until_done(
    shared: &Arc<Shared>,
    plan: &RecoveryPlan,
    epochs: &[(TopicPartition, u64)],
    assigned: &[(TopicPartition, FinishedAbove)],
    done: mpsc::Sender<()>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        if !shared.any_recovering(epochs) || shared.shutdown.is_cancelled() {
            return;
        }
        let read = reader(plan).and_then(|consumer| {
            let recovered = recover(plan, &consumer, assigned)?;
            Ok((recovered, consumer))
        });
        match read {
            Ok((recovered, consumer)) => {
                shared.recovered(epochs, recovered);
                drop(done);
                // Closing the reader takes a while: after the partitions run.
                drop(consumer);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, ?delay, "assigned partitions stay paused until their retry state is read back; trying again");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How long an assignment waits for its read-back before it pauses the partitions until the
/// read-back ends. Over a reachable broker a read-back takes milliseconds; a pause costs up
/// to a second once it ends: librdkafka does not wake its fetcher when a partition that
/// became fetchable while paused is resumed, so the first fetch waits for the fetcher's next
/// idle wake-up (it sleeps up to 1 s while it has nothing to fetch).
const READ_BACK_WAIT: Duration = Duration::from_millis(500);

/// How long a read-back waits for handlers of an earlier assignment of its partitions.
const ORPHAN_WAIT: Duration = Duration::from_secs(120);

/// Runs `work` (which waits on handlers or the broker) off the async worker thread when the
/// callback runs on one: the other tasks of the runtime, an in-process broker among them,
/// keep running meanwhile.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

impl WorkerContext {
    /// Reads the committed offsets of the partitions about to be assigned (kept for
    /// [`Self::assign`]) and sets where those the group never committed start: a retry tier's
    /// at its first record, whatever `auto.offset.reset` says (its records are retries this
    /// group owes, routed before any of them was committed), the others where
    /// `auto.offset.reset` says. Left unset, librdkafka finds no commit, then waits 100 ms
    /// before it looks the position up, on every fresh partition of every assignment. The
    /// partitions `start_from`'s time applies to are left to it. When the committed offsets
    /// cannot be read, librdkafka reads them itself and resets as `auto.offset.reset` says.
    /// Those set to start at the log's end are pinned there and committed
    /// ([`Self::pin_log_ends`]).
    fn prepare_assignment(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .map_err(|e| tracing::warn!(error = %e, "reading committed offsets failed; nothing above them is skipped"))
            .ok();
        if let Some((topic, at)) = &self.start_at {
            start_at_time(consumer, tpl, committed.as_ref(), topic, *at);
        }
        for e in committed.iter().flat_map(TopicPartitionList::elements) {
            let timed = self.start_at.as_ref().is_some_and(|(t, _)| t == e.topic());
            if !never_committed(&e) || timed {
                continue;
            }
            let start = if self.recovery.topology.tier_of(e.topic()) > 0 {
                Offset::Beginning
            } else {
                match self.never_committed {
                    Some(start) => start,
                    None => continue,
                }
            };
            if let Some(mut assigned) = tpl.find_partition(e.topic(), e.partition()) {
                if let Err(err) = assigned.set_offset(start) {
                    tracing::warn!(topic = e.topic(), partition = e.partition(), error = %err, "cannot set where a partition without a commit starts; librdkafka looks it up");
                }
            }
        }
        self.pin_log_ends(consumer, tpl, committed.as_mut());
        *self.committed.lock() = committed;
    }

    /// Looks up the offset of the log's end now for each source partition of `tpl` set to
    /// start there (`start_from = latest`, or a time no record is at or after), starts it at
    /// that offset and commits it (noting the commit in `committed`). The log's end moves:
    /// without a commit, a worker killed before its first one would have its successor start
    /// at a later end, past records it left unfinished. One lookup and one commit for all of
    /// them, once in the group's life. Without an answer a partition starts at the end as
    /// before; when the commit fails, at the end looked up, uncommitted.
    fn pin_log_ends(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
        mut committed: Option<&mut TopicPartitionList>,
    ) {
        let mut ends = TopicPartitionList::new();
        for e in tpl.elements() {
            if e.offset() == Offset::End && self.recovery.topology.tier_of(e.topic()) == 0 {
                if let Err(err) = ends.add_partition_offset(e.topic(), e.partition(), Offset::End) {
                    tracing::warn!(topic = e.topic(), partition = e.partition(), error = %err, "cannot look up the log's end");
                }
            }
        }
        if ends.count() == 0 {
            return;
        }
        let Some(found) = look_up_offsets(consumer, &ends, "the log's end") else {
            tracing::warn!("partitions without a commit start at the log's end, uncommitted");
            return;
        };
        let stamp = offsets::stamp("", policy::now_ms());
        let mut pins: Vec<(TopicPartition, i64, String)> = Vec::new();
        for e in found.elements() {
            match (e.error(), e.offset()) {
                (Ok(()), Offset::Offset(end)) if end >= 0 => {
                    pins.push(((Arc::from(e.topic()), e.partition()), end, stamp.clone()));
                }
                (error, offset) => tracing::warn!(
                    topic = e.topic(),
                    partition = e.partition(),
                    ?error,
                    ?offset,
                    "no log end found: the partition starts at the end, uncommitted"
                ),
            }
        }
        // Started at the looked-up end whatever the commit does: no later than the end.
        for ((topic, partition), end, _) in &pins {
            let set = tpl
                .find_partition(topic, *partition)
                .map(|mut assigned| assigned.set_offset(Offset::Offset(*end)));
            if let Some(Err(e)) = set {
                tracing::warn!(topic = %topic, partition, error = %e, "cannot set a partition's start at the log's end");
            }
        }
        if pins.is_empty() {
            return;
        }
        if let Err(e) = consumer.commit(&commit_list(&pins), CommitMode::Sync) {
            tracing::warn!(error = %e, "committing where partitions without a commit start failed: a worker killed before its first commit leaves its successor at a later end");
            return;
        }
        for ((topic, partition), end, metadata) in &pins {
            if let Some(mut entry) = committed
                .as_deref_mut()
                .and_then(|c| c.find_partition(topic, *partition))
            {
                if entry.set_offset(Offset::Offset(*end)).is_ok() {
                    entry.set_metadata(metadata);
                }
            }
            tracing::info!(topic = %topic, partition, offset = end, "no committed offset: starting at the log's end, committed");
        }
    }
}

impl ConsumerContext for WorkerContext {
    /// See [`serve_rebalance`]: rdkafka's own callback, without the calls that can wait
    /// forever once the consumer closed.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        serve_rebalance(self, consumer, err, tpl, self.cooperative);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            // An assignment that reaches a stopping worker is taken (librdkafka waits for the
            // call before the group can end) but not prepared: nothing of it will run, and
            // preparing waits on the broker (commits looked up, ends pinned).
            Rebalance::Assign(_) if self.shared.is_closing() => {}
            // Returns once the revoked partitions drained and committed: the rebalance must
            // not go on before (see `Shared::drain_revoked`).
            Rebalance::Revoke(tpl) => blocking(|| self.revoke(consumer, tpl)),
            Rebalance::Assign(tpl) => blocking(|| self.prepare_assignment(consumer, tpl)),
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.shared.is_closing() {
            return;
        }
        if let Rebalance::Assign(tpl) = rebalance {
            blocking(|| self.assign(consumer, tpl));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_never_committed_starts_where_the_reset_policy_names() {
        for reset in ["earliest", "smallest", "beginning"] {
            assert_eq!(
                never_committed_start(reset),
                Some(Offset::Beginning),
                "{reset}"
            );
        }
        for reset in ["latest", "largest", "end"] {
            assert_eq!(never_committed_start(reset), Some(Offset::End), "{reset}");
        }
        // `error` (and anything else) names no position: librdkafka's own reset applies.
        assert_eq!(never_committed_start("error"), None);
    }
}
