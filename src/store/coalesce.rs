//! Requests of concurrent callers run as one operation: a many-entry script run, one
//! `SELECT … = ANY($1)`. A call waits for nothing but a free operation slot: when one is
//! free, whatever requests are queued go out together (up to [`MAX_REQUESTS`]), so an idle
//! worker's request goes out alone at once, and under load the requests of many deliveries
//! (a batch's records, dispatched together) share a round trip.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::StoreError;

/// Requests of one operation at most.
pub(crate) const MAX_REQUESTS: usize = 256;

/// Operations in flight at once.
const IN_FLIGHT: usize = 4;

/// How a store runs many requests as one operation.
pub(crate) trait Combine: Clone + Send + Sync + 'static {
    /// One caller's request.
    type Request: Send + 'static;
    /// Its answer.
    type Answer: Send + 'static;
    /// The store's name, for errors.
    const BACKEND: &'static str;
    /// Runs `requests` as one operation: one answer per request, in order, or one error for
    /// all of them.
    fn run(
        &self,
        requests: Vec<Self::Request>,
    ) -> impl Future<Output = Result<Vec<Self::Answer>, StoreError>> + Send;
}

/// One caller's request and where its answer goes.
type Call<C> = (
    <C as Combine>::Request,
    oneshot::Sender<Result<<C as Combine>::Answer, StoreError>>,
);

/// A store's coalesced requests; see the module docs. Cloning shares the queue; the task
/// sending its operations ends when the last clone is dropped.
pub(crate) struct Coalesced<C: Combine> {
    combine: C,
    /// Started by the first call (it needs the runtime).
    queue: Arc<OnceLock<mpsc::UnboundedSender<Call<C>>>>,
    /// Operations run so far.
    sent: Arc<AtomicU64>,
}

impl<C: Combine> Clone for Coalesced<C> {
    fn clone(&self) -> Self {
        Coalesced {
            combine: self.combine.clone(),
            queue: self.queue.clone(),
            sent: self.sent.clone(),
        }
    }
}

impl<C: Combine> std::fmt::Debug for Coalesced<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesced")
            .field("backend", &C::BACKEND)
            .field("operations", &self.sent.load(Ordering::Relaxed))
            .finish()
    }
}

impl<C: Combine> Coalesced<C> {
    /// Requests run by `combine`.
    pub(crate) fn new(combine: C) -> Self {
        Coalesced {
            combine,
            queue: Arc::new(OnceLock::new()),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Operations run so far (each carries one or more requests).
    #[cfg(test)]
    pub(crate) fn operations(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Runs `request` (with whatever others are queued) and returns its answer.
    pub(crate) async fn call(&self, request: C::Request) -> Result<C::Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.get_or_init(|| self.start());
        queue
            .send((request, reply))
            .map_err(|_| StoreError::failed(C::BACKEND, "the request queue stopped"))?;
        answer
            .await
            .map_err(|_| StoreError::failed(C::BACKEND, "the request was dropped"))?
    }

    /// Starts the task that sends the queued requests; its queue.
    fn start(&self) -> mpsc::UnboundedSender<Call<C>> {
        let (queue, calls) = mpsc::unbounded_channel();
        tokio::spawn(send_calls(self.combine.clone(), self.sent.clone(), calls));
        queue
    }
}

/// Runs `calls` as one operation and answers each.
async fn run<C: Combine>(combine: C, calls: Vec<Call<C>>) {
    let (requests, replies): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
    let n = requests.len();
    match combine.run(requests).await {
        Ok(answers) if answers.len() == n => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(answers) => {
            let e = StoreError::failed(
                C::BACKEND,
                format!("{} answers came for {n} requests", answers.len()),
            );
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Takes the queued requests as operation slots come free, until every handle is dropped.
async fn send_calls<C: Combine>(
    combine: C,
    sent: Arc<AtomicU64>,
    mut calls: mpsc::UnboundedReceiver<Call<C>>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = calls.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_REQUESTS {
            match calls.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        sent.fetch_add(1, Ordering::Relaxed);
        let combine = combine.clone();
        tokio::spawn(async move {
            run(combine, batch).await;
            drop(slot);
        });
    }
}
