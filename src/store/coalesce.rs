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

/// Runs `calls` as one operation and answers each. A call whose caller stopped waiting (a
/// call past its time limit, given up and asked again) is left out: run late, a lock would
/// be granted or an id reserved for nobody, and the caller's next try would wait a lease.
async fn run<C: Combine>(combine: C, calls: Vec<Call<C>>) {
    let (requests, replies): (Vec<_>, Vec<_>) = calls
        .into_iter()
        .filter(|(_, reply)| !reply.is_closed())
        .unzip();
    if requests.is_empty() {
        return;
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parking_lot::Mutex;
    use tokio::sync::Notify;

    use super::*;

    /// Records the requests it runs; each operation waits until `open` is notified.
    #[derive(Clone, Default)]
    struct Gated {
        ran: Arc<Mutex<Vec<u32>>>,
        open: Arc<Notify>,
    }

    impl Combine for Gated {
        type Request = u32;
        type Answer = u32;
        const BACKEND: &'static str = "test";
        async fn run(&self, requests: Vec<u32>) -> Result<Vec<u32>, StoreError> {
            self.open.notified().await;
            self.ran.lock().extend(&requests);
            Ok(requests)
        }
    }

    #[tokio::test]
    async fn a_request_whose_caller_stopped_waiting_is_not_run() {
        let gated = Gated::default();
        let coalesced = Coalesced::new(gated.clone());
        // Every operation slot busy, one request each.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut busy = Vec::new();
        for i in 0..IN_FLIGHT as u32 {
            let c = coalesced.clone();
            busy.push(tokio::spawn(async move { c.call(i).await }));
            while coalesced.operations() <= u64::from(i) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slots never filled"
                );
                tokio::task::yield_now().await;
            }
        }
        // A call given up while it is queued.
        let given_up = tokio::time::timeout(Duration::from_millis(20), coalesced.call(99)).await;
        assert!(given_up.is_err(), "it waited for a slot");
        let kept = {
            let c = coalesced.clone();
            tokio::spawn(async move { c.call(7).await })
        };
        // Free the slots, one operation at a time, until the kept call is answered.
        while !kept.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the kept call was never run"
            );
            gated.open.notify_one();
            tokio::task::yield_now().await;
        }
        assert_eq!(kept.await.expect("ran").expect("answered"), 7);
        for call in busy {
            call.await.expect("ran").expect("answered");
        }
        let ran = gated.ran.lock().clone();
        assert!(ran.contains(&7), "{ran:?}");
        assert!(!ran.contains(&99), "the given-up request ran: {ran:?}");
    }
}
