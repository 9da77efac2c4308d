//! The innermost service of a batch handler's stack: each record, past the policies, waits
//! here for a batch; a collector task forms batches (up to `max_batch` records, or whatever
//! came within `batch_linger_ms`, never two records of one key or id), runs up to
//! `concurrency` of them at once under the handler time limit, and hands each record its
//! own verdict. A batch that panics or runs over the time limit is run again record by
//! record, so that only the record that causes it fails.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{assemble, BatchRunner};
use crate::handler::service::{self, failure, outcome_of, panic_text};
use crate::handler::Context;
use crate::handler::HandlerError;
use crate::message::{Envelope, ErrorClass, Message, Outcome};
use crate::policy::Dependencies;
use crate::producer::Producer;
use crate::store::TransactionalStore;

/// How batches are formed and run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchSettings {
    /// Records per batch at most.
    pub(crate) max_records: usize,
    /// How long a batch waits for more records.
    pub(crate) linger: Duration,
    /// Batch handler calls at once.
    pub(crate) concurrency: usize,
    /// Time limit of one batch handler call.
    pub(crate) timeout: Duration,
}

/// What a record's batch call came to.
enum Verdict {
    /// The handler's result for the record.
    Done(Result<(), HandlerError>),
    /// The handler panicked on the record, alone.
    Panicked(String),
    /// The batch call ran over the time limit.
    TimedOut(Duration),
}

/// How a batch call was cut short.
enum Cut {
    /// It panicked, with this message.
    Panicked(String),
    /// It ran over the time limit.
    TimedOut,
}

/// Whether the record's transaction committed (its id and version are recorded).
fn recorded(cx: &Context) -> bool {
    cx.envelope
        .guard
        .notes
        .as_ref()
        .is_some_and(|n| n.recorded.load(Ordering::SeqCst))
}

/// The hash of a kind of key and its parts.
fn hashed(kind: u8, parts: &[&[u8]]) -> u64 {
    let mut hasher = DefaultHasher::new();
    kind.hash(&mut hasher);
    parts.hash(&mut hasher);
    hasher.finish()
}

/// A record waiting for its batch.
struct Pending<M> {
    message: M,
    cx: Context,
    reply: oneshot::Sender<Verdict>,
    /// The keys no other record of its batch may share ([`exclusive_keys`]).
    exclusive: [Option<u64>; 2],
}

/// The keys no other record of a batch may share with the record of `cx`: its store key
/// (version and lock key) and its id, or its topic and record key when no policy read them.
/// Hashed, on the record's own task, so that the collector (one task for all records)
/// neither copies nor hashes keys: two records whose keys hash alike only go to different
/// batches.
fn exclusive_keys(cx: &Context) -> [Option<u64>; 2] {
    let envelope = &cx.envelope;
    match envelope.guard.facts.as_deref() {
        Some(facts) => [
            Some(hashed(b'k', &[facts.store_key.as_bytes()])),
            facts.id.as_deref().map(|id| hashed(b'i', &[id.as_bytes()])),
        ],
        None => [
            Some(hashed(
                b'r',
                &[
                    envelope.topic.as_bytes(),
                    envelope.key.as_deref().unwrap_or_default(),
                ],
            )),
            None,
        ],
    }
}

impl<M> Pending<M> {
    /// `message` of `cx`, answered through `reply`.
    fn new(message: M, cx: Context, reply: oneshot::Sender<Verdict>) -> Self {
        let exclusive = exclusive_keys(&cx);
        Pending {
            message,
            cx,
            reply,
            exclusive,
        }
    }
    /// A retry runs alone: a record that failed in a batch does not fail a batch again.
    fn alone(&self) -> bool {
        self.cx.attempt > 1
    }
}

/// Runs a batch handler on envelopes, one verdict per envelope.
#[derive(Debug)]
pub(crate) struct BatchService<M> {
    runner: BatchRunner<M>,
    settings: BatchSettings,
    group: Arc<str>,
    shutdown: Arc<CancellationToken>,
    transactions: Option<Arc<dyn TransactionalStore>>,
    producer: Option<Producer>,
    dependencies: Option<Arc<Dependencies>>,
    duration: metrics::Histogram,
    records: metrics::Histogram,
    /// The collector's queue, started by the first record.
    queue: Arc<OnceCell<mpsc::UnboundedSender<Pending<M>>>>,
}

impl<M> Clone for BatchService<M> {
    fn clone(&self) -> Self {
        BatchService {
            runner: self.runner.clone(),
            settings: self.settings,
            group: self.group.clone(),
            shutdown: self.shutdown.clone(),
            transactions: self.transactions.clone(),
            producer: self.producer.clone(),
            dependencies: self.dependencies.clone(),
            duration: self.duration.clone(),
            records: self.records.clone(),
            queue: self.queue.clone(),
        }
    }
}

impl<M: Message> BatchService<M> {
    /// Runs `runner`'s batches for `group`, formed and limited by `settings`.
    pub(crate) fn new(
        runner: BatchRunner<M>,
        settings: BatchSettings,
        group: &str,
        shutdown: CancellationToken,
    ) -> Self {
        BatchService {
            runner,
            settings,
            group: Arc::from(group),
            shutdown: Arc::new(shutdown),
            transactions: None,
            producer: None,
            dependencies: None,
            duration: metrics::Histogram::noop(),
            records: metrics::Histogram::noop(),
            queue: Arc::new(OnceCell::new()),
        }
    }
    /// Records each batch call's duration (seconds) and size (records).
    pub(crate) fn timed(
        mut self,
        duration: metrics::Histogram,
        records: metrics::Histogram,
    ) -> Self {
        self.duration = duration;
        self.records = records;
        self
    }
    /// Hands handlers `producer`.
    pub(crate) fn with_producer(mut self, producer: Producer) -> Self {
        self.producer = Some(producer);
        self
    }
    /// Hands handlers the breakers of their named dependencies.
    pub(crate) fn with_dependencies(mut self, dependencies: Arc<Dependencies>) -> Self {
        self.dependencies = Some(dependencies);
        self
    }
    /// Hands handlers transactions of `stores`.
    pub(crate) fn with_transactions(mut self, stores: Option<Arc<dyn TransactionalStore>>) -> Self {
        self.transactions = stores;
        self
    }

    /// Handles one delivery: decode, wait for its batch's verdict, classify.
    pub(crate) fn handle(
        &self,
        envelope: Envelope,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let this = self.clone();
        async move {
            let attempt = envelope.attempt;
            let payload = envelope.payload.clone().unwrap_or_default();
            let message = match M::decode(&payload) {
                Ok(m) => m,
                Err(e) => return failure(ErrorClass::Decode, e.to_string(), true, attempt),
            };
            let notes = envelope.guard.notes.clone();
            let cx = Context::new(
                envelope,
                attempt,
                this.group.clone(),
                this.shutdown.clone(),
                this.transactions.clone(),
                this.producer.as_ref(),
            )
            .with_dependencies(this.dependencies.clone());
            reset_notes(&cx);
            let (reply, verdict) = oneshot::channel();
            let queue = this.queue.get_or_init(|| async { this.start() }).await;
            if queue.send(Pending::new(message, cx, reply)).is_err() {
                return failure(
                    ErrorClass::Transient,
                    "the batch collector stopped".to_owned(),
                    false,
                    attempt,
                );
            }
            let result = match verdict.await {
                Ok(Verdict::Done(result)) => Ok(result),
                Ok(Verdict::Panicked(text)) => Err(Box::new(text) as Box<dyn std::any::Any + Send>),
                Ok(Verdict::TimedOut(limit)) => {
                    return Outcome::Failed(
                        crate::policy::timed_out(
                            format!("batch ran over {limit:?}"),
                            notes.as_deref(),
                            this.transactions.as_deref(),
                            attempt,
                        )
                        .await,
                    );
                }
                Err(_) => Ok(Err(HandlerError::transient(
                    "the batch collector dropped the record",
                ))),
            };
            outcome_of(
                result,
                notes.as_deref(),
                this.transactions.as_deref(),
                attempt,
            )
            .await
        }
    }

    /// Starts the collector task; its queue. The task's copy of the service holds no queue,
    /// so the task ends once every handle of this one is dropped.
    fn start(&self) -> mpsc::UnboundedSender<Pending<M>> {
        let (queue, incoming) = mpsc::unbounded_channel();
        let runs = BatchService {
            queue: Arc::new(OnceCell::new()),
            ..self.clone()
        };
        tokio::spawn(collect(runs, incoming));
        queue
    }

    /// Runs one batch and answers each of its records.
    async fn run(&self, pending: Vec<Pending<M>>) {
        let pending: Vec<Pending<M>> = pending
            .into_iter()
            .filter(|p| !p.reply.is_closed())
            .collect();
        if pending.is_empty() {
            return;
        }
        let count = pending.len();
        let mut replies = Vec::with_capacity(count);
        let mut records = Vec::with_capacity(count);
        for p in pending {
            replies.push(p.reply);
            records.push((p.message, p.cx));
        }
        let contexts: Vec<Context> = records.iter().map(|(_, cx)| cx.clone()).collect();
        let (batch, cx) = assemble(records);
        let shared = cx.shared.clone();
        self.records.record(count as f64);
        let timer = crate::observe::Timer::start(self.duration.clone());
        let call = AssertUnwindSafe(self.runner.call(batch, cx)).catch_unwind();
        let result = tokio::time::timeout(self.settings.timeout, call).await;
        drop(timer);
        let cut = match result {
            Ok(Ok(result)) => {
                for (index, reply) in replies.into_iter().enumerate() {
                    let verdict = match shared.failure(index) {
                        Some(failure) => Err(failure),
                        None => result.clone(),
                    };
                    let _ = reply.send(Verdict::Done(verdict));
                }
                return;
            }
            Ok(Err(panic)) => Cut::Panicked(panic_text(panic.as_ref())),
            Err(_) => Cut::TimedOut,
        };
        drop(shared);
        // Records whose transaction committed before the cut were applied: they are done.
        let (applied, rest): (Vec<_>, Vec<_>) = contexts
            .into_iter()
            .zip(replies)
            .partition(|(cx, _)| recorded(cx));
        for (_, reply) in applied {
            let _ = reply.send(Verdict::Done(Ok(())));
        }
        match (cut, rest.len()) {
            (_, 0) => {}
            (Cut::Panicked(text), 1) => {
                for (_, reply) in rest {
                    let _ = reply.send(Verdict::Panicked(text.clone()));
                }
            }
            (Cut::TimedOut, 1) => {
                for (_, reply) in rest {
                    let _ = reply.send(Verdict::TimedOut(self.settings.timeout));
                }
            }
            (cut, n) => {
                match cut {
                    Cut::Panicked(text) => tracing::warn!(
                        records = n,
                        panic = %text,
                        "a batch handler panicked: running each record of the batch alone"
                    ),
                    Cut::TimedOut => tracing::warn!(
                        records = n,
                        limit = ?self.settings.timeout,
                        "a batch ran over the handler time limit: running each record of it alone"
                    ),
                }
                self.run_alone(rest).await;
            }
        }
    }

    /// Runs each record of a batch that panicked or ran over the time limit again as a
    /// batch of one, all at once (they are of different keys), at the same attempt: only
    /// the record that causes it fails.
    async fn run_alone(&self, records: Vec<(Context, oneshot::Sender<Verdict>)>) {
        let runs = records.into_iter().map(|(cx, reply)| async move {
            let payload = cx.envelope.payload.clone().unwrap_or_default();
            // It decoded before it joined the batch.
            let Ok(message) = M::decode(&payload) else {
                let _ = reply.send(Verdict::Done(Err(HandlerError::permanent(
                    "the record no longer decodes",
                ))));
                return;
            };
            reset_notes(&cx);
            Box::pin(self.run(vec![Pending::new(message, cx, reply)])).await;
        });
        futures::future::join_all(runs).await;
    }
}

/// Forms batches from the queue and runs them, up to `concurrency` at once.
async fn collect<M: Message>(
    service: BatchService<M>,
    mut incoming: mpsc::UnboundedReceiver<Pending<M>>,
) {
    let settings = service.settings;
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    // Records that could not join the batch being formed (their key or id was in it, or a
    // retry that runs alone): the next batches start with them.
    let mut waiting: std::collections::VecDeque<Pending<M>> = std::collections::VecDeque::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match waiting.pop_front() {
            Some(p) => p,
            None => match incoming.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut batch = vec![first];
        if !batch[0].alone() {
            let mut taken: HashSet<u64> = batch[0].exclusive.iter().flatten().copied().collect();
            let mut offer =
                |p: Pending<M>,
                 batch: &mut Vec<Pending<M>>,
                 waiting: &mut std::collections::VecDeque<Pending<M>>| {
                    if p.alone() || p.exclusive.iter().flatten().any(|k| taken.contains(k)) {
                        waiting.push_back(p);
                    } else {
                        taken.extend(p.exclusive.iter().flatten());
                        batch.push(p);
                    }
                };
            let earlier: Vec<Pending<M>> = waiting.drain(..).collect();
            for p in earlier {
                if batch.len() < settings.max_records {
                    offer(p, &mut batch, &mut waiting);
                } else {
                    waiting.push_back(p);
                }
            }
            // One timer for the batch, not one a record taken.
            let linger = tokio::time::sleep(settings.linger);
            tokio::pin!(linger);
            while batch.len() < settings.max_records {
                tokio::select! {
                    next = incoming.recv() => match next {
                        Some(p) => offer(p, &mut batch, &mut waiting),
                        None => break,
                    },
                    () = &mut linger => break,
                }
            }
        }
        let service = service.clone();
        tokio::spawn(async move {
            service.run(batch).await;
            drop(slot);
        });
    }
}

/// Clears what an earlier attempt of the record did with a transaction.
fn reset_notes(cx: &Context) {
    service::reset_notes(cx.envelope.guard.notes.as_deref());
}
