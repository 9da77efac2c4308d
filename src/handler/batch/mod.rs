//! Batch handlers: one handler call for several records that are ready to run, with a
//! per-record verdict. Implemented with `#[derive(steadfast::Handler)]` and
//! `#[handler(..., batch)]`, which forwards to an inherent
//! `async fn handle_batch(&self, batch: Batch<M>, cx: &BatchContext) -> Result<(), HandlerError>`.
//!
//! A batch holds at most one record per key (and per message id), so per-key order and the
//! no-overlap guarantee are those of single records. A record the handler fails
//! ([`Item::fail`]) goes through in-place retry, the retry tiers and the dead-letter topic
//! alone (its retries run as batches of one); the others finish. An `Err` returned by the
//! handler fails every record it did not fail itself. A panic, or a batch call that runs over
//! `handler_timeout_ms`, runs each record of the batch again alone (all at once, at the same
//! attempt), so that it fails only the record that causes it.

mod context;
mod service;
mod transaction;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;

pub use self::context::BatchContext;
pub(crate) use self::service::{BatchService, BatchSettings};
pub use self::transaction::BatchTransaction;

use super::{Context, Handler, HandlerError};
use crate::message::Message;

/// A handler that takes records in batches: up to `max_batch` records that are ready to run,
/// at most one per key and per message id, in one call. A record failed with
/// [`Item::fail`] retries, moves through the tiers and is dead-lettered alone (its retries run
/// as batches of one); an `Err` fails every record not failed otherwise; a panic or a call
/// over `handler_timeout_ms` runs each record again alone. See docs/once-only-effects.md.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize, steadfast::Message)]
/// # #[message(topic = "orders", key = order_id)]
/// # struct OrderUpdated { order_id: String, amount_cents: i64 }
/// use steadfast::handler::{Batch, BatchContext};
/// use steadfast::HandlerError;
///
/// #[derive(steadfast::Handler)]
/// #[handler(message = OrderUpdated, group = "billing", batch)]
/// struct Billing;
///
/// impl Billing {
///     async fn handle_batch(&self, batch: Batch<OrderUpdated>, _cx: &BatchContext) -> Result<(), HandlerError> {
///         for item in &batch {
///             if item.message().amount_cents < 0 {
///                 item.fail(HandlerError::permanent("negative amount"));
///             }
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait BatchHandler: Send + Sync + 'static {
    /// The message type this handler consumes.
    type Message: Message;
    /// The consumer group the handler's workers join.
    const GROUP: &'static str;
    /// Handles a batch. `Err` fails every record of it not failed with [`Item::fail`].
    fn handle_message_batch(
        &self,
        batch: Batch<Self::Message>,
        cx: &BatchContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// The records of one batch handler call, in the order they were taken (records of one key
/// never share a batch).
#[derive(Debug)]
pub struct Batch<M> {
    items: Vec<Item<M>>,
}

impl<M> Batch<M> {
    /// The records.
    pub fn iter(&self) -> std::slice::Iter<'_, Item<M>> {
        self.items.iter()
    }
    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether the batch holds no record (never, as handed to a handler).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<M> IntoIterator for Batch<M> {
    type Item = Item<M>;
    type IntoIter = std::vec::IntoIter<Item<M>>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<'a, M> IntoIterator for &'a Batch<M> {
    type Item = &'a Item<M>;
    type IntoIter = std::slice::Iter<'a, Item<M>>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// One record of a batch: its decoded message, its context (key, offset, attempt, version,
/// lock token), and a way to fail it alone.
#[derive(Debug)]
pub struct Item<M> {
    message: M,
    index: usize,
    shared: Arc<Shared>,
}

impl<M> Item<M> {
    /// The decoded message.
    pub fn message(&self) -> &M {
        &self.message
    }
    /// What a single-record handler's context tells about this record.
    pub fn context(&self) -> &Context {
        &self.shared.contexts[self.index]
    }
    /// Fails this record with `error` (the last call wins); the batch's other records are
    /// unaffected. Fail a record before the batch's transaction applies it: failing one the
    /// transaction applies rolls the whole transaction back at its commit.
    pub fn fail(&self, error: HandlerError) {
        *self.shared.failures[self.index].lock() = Some(error);
    }
    /// Whether [`fail`](Self::fail) was called for this record.
    pub fn failed(&self) -> bool {
        self.shared.failures[self.index].lock().is_some()
    }
    /// This record's place in its batch (0-based).
    pub fn index(&self) -> usize {
        self.index
    }
}

/// What the records of one batch share: their contexts and the failures the handler set.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) contexts: Vec<Context>,
    pub(crate) failures: Vec<Mutex<Option<HandlerError>>>,
}

impl Shared {
    /// A batch's shared part for records with `contexts`.
    fn new(contexts: Vec<Context>) -> Arc<Self> {
        let failures = contexts.iter().map(|_| Mutex::new(None)).collect();
        Arc::new(Shared { contexts, failures })
    }
    /// The failure the handler set for record `index`.
    pub(crate) fn failure(&self, index: usize) -> Option<HandlerError> {
        self.failures[index].lock().clone()
    }
}

/// A batch and its context made from decoded messages and their single-record contexts.
pub(crate) fn assemble<M>(records: Vec<(M, Context)>) -> (Batch<M>, BatchContext) {
    let (messages, contexts): (Vec<M>, Vec<Context>) = records.into_iter().unzip();
    let shared = Shared::new(contexts);
    let items = messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| Item {
            message,
            index,
            shared: shared.clone(),
        })
        .collect();
    (Batch { items }, BatchContext::new(shared))
}

/// The boxed future of one batch handler call.
pub(crate) type BatchFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// A batch handler behind a type-erased call, as the runtime holds it; made by the derive's
/// `Handler::batch_runner`.
pub struct BatchRunner<M>(Arc<dyn Fn(Batch<M>, BatchContext) -> BatchFuture + Send + Sync>);

impl<M> Clone for BatchRunner<M> {
    fn clone(&self) -> Self {
        BatchRunner(self.0.clone())
    }
}

impl<M> std::fmt::Debug for BatchRunner<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchRunner")
    }
}

impl<M: Message> BatchRunner<M> {
    /// Runs `handler`'s batches.
    pub fn of<H: BatchHandler<Message = M>>(handler: Arc<H>) -> Self {
        BatchRunner(Arc::new(move |batch, cx| {
            let handler = handler.clone();
            Box::pin(async move { handler.handle_message_batch(batch, &cx).await })
        }))
    }
    /// One call of the handler.
    pub(crate) fn call(&self, batch: Batch<M>, cx: BatchContext) -> BatchFuture {
        (self.0)(batch, cx)
    }
}

/// [`Handler::handle_message`] of a batch handler: the message as a batch of one.
pub async fn handle_one<H: BatchHandler>(
    handler: &H,
    message: H::Message,
    cx: &Context,
) -> Result<(), HandlerError> {
    let (batch, batch_cx) = assemble(vec![(message, cx.clone())]);
    let shared = batch_cx.shared.clone();
    let result = handler.handle_message_batch(batch, &batch_cx).await;
    match shared.failure(0) {
        Some(failure) => Err(failure),
        None => result,
    }
}

/// The runtime's view of a handler: its batch runner when it takes batches.
pub(crate) fn runner_of<H: Handler>(handler: &Arc<H>) -> Option<BatchRunner<H::Message>> {
    H::batch_runner(handler.clone())
}
