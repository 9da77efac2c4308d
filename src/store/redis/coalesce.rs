//! Calls of one many-entry script made by concurrent callers, sent as one invocation: each
//! caller's keys and arguments are one entry, and the script answers a fixed number of values
//! per entry, in order. A call waits for nothing but a free invocation slot: when one is
//! free, whatever calls are queued go out together (up to [`MAX_ENTRIES`]), so an idle
//! worker's call goes out alone at once, and under load the calls of many deliveries (a
//! batch's records, dispatched together) share a round trip and a script run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::StoreError;

/// Entries of one invocation at most.
pub(super) const MAX_ENTRIES: usize = 256;

/// Invocations of one script in flight at once.
const IN_FLIGHT: usize = 4;

/// One caller's entry and where its answer goes.
struct Call {
    keys: Vec<String>,
    args: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Value>, StoreError>>,
}

/// A many-entry script's coalesced calls; see the module docs. Cloning shares the queue;
/// the task sending its calls ends when the last clone is dropped.
#[derive(Clone)]
pub(super) struct Coalesced {
    invoker: Invoker,
    /// Started by the first call (it needs the runtime).
    queue: Arc<OnceLock<mpsc::UnboundedSender<Call>>>,
}

/// The script and the connection it runs on.
#[derive(Clone)]
struct Invoker {
    script: &'static Script,
    answers: usize,
    conn: ConnectionManager,
    /// Invocations sent so far.
    sent: Arc<AtomicU64>,
}

impl std::fmt::Debug for Coalesced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesced")
            .field("answers", &self.invoker.answers)
            .finish()
    }
}

impl Coalesced {
    /// Calls of `script`, which answers `answers` values per entry, over `conn`.
    pub(super) fn new(script: &'static Script, answers: usize, conn: ConnectionManager) -> Self {
        Coalesced {
            invoker: Invoker {
                script,
                answers,
                conn,
                sent: Arc::new(AtomicU64::new(0)),
            },
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Invocations sent so far (each carries one or more calls).
    #[cfg(test)]
    pub(super) fn invocations(&self) -> u64 {
        self.invoker.sent.load(Ordering::Relaxed)
    }

    /// Runs one entry (`keys`, `args`) and returns its answers.
    pub(super) async fn call(
        &self,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<Value>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.get_or_init(|| self.start());
        queue
            .send(Call { keys, args, reply })
            .map_err(|_| StoreError::failed("redis", "the script's call queue stopped"))?;
        answer
            .await
            .map_err(|_| StoreError::failed("redis", "the script's call was dropped"))?
    }

    /// Starts the task that sends the queued calls; its queue.
    fn start(&self) -> mpsc::UnboundedSender<Call> {
        let (queue, calls) = mpsc::unbounded_channel();
        tokio::spawn(send_calls(self.invoker.clone(), calls));
        queue
    }
}

impl Invoker {
    /// Sends `calls` as one invocation and answers each.
    async fn invoke(&self, calls: Vec<Call>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut invocation = self.script.prepare_invoke();
        for call in &calls {
            for key in &call.keys {
                invocation.key(key);
            }
            for arg in &call.args {
                invocation.arg(arg);
            }
        }
        let answers: Result<Vec<Value>, StoreError> = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from);
        match answers {
            Ok(values) if values.len() == calls.len() * self.answers => {
                let mut values = values.into_iter();
                for call in calls {
                    let mine: Vec<Value> = values.by_ref().take(self.answers).collect();
                    let _ = call.reply.send(Ok(mine));
                }
            }
            Ok(values) => {
                let e = StoreError::failed(
                    "redis",
                    format!(
                        "a script answered {} values for {} entries of {} each",
                        values.len(),
                        calls.len(),
                        self.answers
                    ),
                );
                for call in calls {
                    let _ = call.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for call in calls {
                    let _ = call.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Takes the queued calls as invocation slots come free, until every handle is dropped.
async fn send_calls(invoker: Invoker, mut calls: mpsc::UnboundedReceiver<Call>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = calls.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_ENTRIES {
            match calls.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        let invoker = invoker.clone();
        tokio::spawn(async move {
            invoker.invoke(batch).await;
            drop(slot);
        });
    }
}
