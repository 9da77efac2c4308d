//! Run a handler with the full policy stack on given messages, without a broker: users test
//! their handler and retry policy in milliseconds.
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! use steadfast::testing::TestWorker;
//! use steadfast::message::RouteTarget;
//! use steadfast::{Context, HandlerError, Outcome, Retry};
//! use std::time::Duration;
//!
//! #[derive(Debug, Serialize, Deserialize, steadfast::Message)]
//! #[message(topic = "orders", key = order_id)]
//! struct Order { order_id: String, amount_cents: i64 }
//!
//! #[derive(steadfast::Handler)]
//! #[handler(message = Order, group = "billing")]
//! struct Billing;
//!
//! impl Billing {
//!     async fn handle(&self, msg: Order, _cx: &Context) -> Result<(), HandlerError> {
//!         if msg.amount_cents < 0 {
//!             return Err(HandlerError::permanent("negative amount"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let worker = TestWorker::new(Billing).retry(Retry::exponential(3, Duration::ZERO, Duration::ZERO));
//! let ok = worker.handle(&Order { order_id: "o1".into(), amount_cents: 5 }).await;
//! assert_eq!(ok, Outcome::Ack { attempt: 1 });
//! let bad = worker.handle(&Order { order_id: "o2".into(), amount_cents: -5 }).await;
//! assert!(matches!(bad, Outcome::Routed { target: RouteTarget::DeadLetter, .. }));
//! assert_eq!(worker.dead_letters().len(), 1);
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::{millis, WorkerConfig};
use crate::handler::Handler;
use crate::message::{Envelope, Message, Outcome};
use crate::policy::{BoxedStack, MemorySink, OutgoingRecord, Retry, Sink};
use crate::runtime::build_stack_for_tests;

/// A handler with the full policy stack and an in-memory sink for routed copies.
#[derive(Debug)]
pub struct TestWorker<H> {
    handler: Arc<H>,
    config: WorkerConfig,
    sink: MemorySink,
    next_offset: std::sync::atomic::AtomicI64,
}

impl<H: Handler> TestWorker<H> {
    /// A test worker with the default policies (no retry tiers, so failures go to the DLQ).
    pub fn new(handler: H) -> Self {
        TestWorker {
            handler: Arc::new(handler),
            config: WorkerConfig::default(),
            sink: MemorySink::default(),
            next_offset: std::sync::atomic::AtomicI64::new(0),
        }
    }
    /// The in-place retry policy.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.config.retry = retry.into();
        self
    }
    /// Retry tiers (their delays are recorded in the copies' headers, not waited for).
    pub fn retry_topics(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.config.retry_tiers_ms = delays.into_iter().map(millis).collect();
        self
    }
    /// The time limit of one attempt.
    pub fn handler_timeout(mut self, limit: Duration) -> Self {
        self.config.handler_timeout_ms = millis(limit);
        self
    }

    fn stack(&self) -> BoxedStack {
        let tiers = self.config.retry_tiers();
        let sink: Arc<dyn Sink> = Arc::new(self.sink.clone());
        build_stack_for_tests(
            self.handler.clone(),
            &self.config,
            H::GROUP,
            tiers,
            sink,
            CancellationToken::new(),
        )
    }

    /// Runs `envelope` through the stack once (one delivery).
    pub async fn handle_envelope(&self, envelope: Envelope) -> Outcome {
        match self.stack().oneshot(envelope).await {
            Ok(outcome) => outcome,
            Err(never) => match never {},
        }
    }

    /// Encodes `message` as a record of its topic and runs it through the stack once.
    pub async fn handle(&self, message: &H::Message) -> Outcome {
        let payload = match message.encode() {
            Ok(p) => p,
            Err(e) => panic!("the test message does not encode: {e}"),
        };
        let offset = self
            .next_offset
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.handle_envelope(
            Envelope::new(H::Message::TOPIC, message.key(), payload).with_offset(offset),
        )
        .await
    }

    /// Runs `message` and then each retry-tier copy it produces at once (ignoring the
    /// tiers' delays) until it is handled, dropped or dead-lettered; returns every outcome.
    pub async fn handle_through_tiers(&self, message: &H::Message) -> Vec<Outcome> {
        let mut outcomes = vec![self.handle(message).await];
        while let Some(Outcome::Routed {
            target: crate::message::RouteTarget::RetryTier(_),
            ..
        }) = outcomes.last()
        {
            let Some(copy) = self.sink.records().last().cloned() else {
                break;
            };
            let mut envelope = Envelope {
                topic: std::sync::Arc::from(copy.topic),
                partition: copy.partition.unwrap_or(0),
                offset: self
                    .next_offset
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                key: copy.key,
                payload: copy.payload,
                headers: copy.headers,
                timestamp_ms: None,
                attempt: 1,
                guard: crate::message::Guard::default(),
            };
            envelope.attempt = crate::policy::headers::attempts_before(&envelope.headers) + 1;
            outcomes.push(self.handle_envelope(envelope).await);
        }
        outcomes
    }

    /// Every routed copy (retry tiers and dead letters), in order.
    pub fn routed(&self) -> Vec<OutgoingRecord> {
        self.sink.records()
    }

    /// The copies sent to a dead-letter topic.
    pub fn dead_letters(&self) -> Vec<OutgoingRecord> {
        self.sink
            .records()
            .into_iter()
            .filter(|r| r.headers.get(crate::policy::headers::RETRY_TIER).is_none())
            .collect()
    }
}
