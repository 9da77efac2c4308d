//! Routing of failed messages: through the retry tiers (`<topic>.<group>.retry.<n>`, each with
//! its delay) and then to the dead-letter topic, with provenance headers. A message's outcome
//! is `Routed` only after its copy is acknowledged; a publish that keeps failing is retried
//! with backoff until it succeeds or the worker shuts down (then the message is requeued).
//!
//! Every copy names the delivery it was made from ([`headers::ROUTED_FROM`]): a worker that
//! takes over a partition finds the copies made of its unfinished records before it routes
//! any of them again (see `runtime::recovery`). A worker that lost the partition (or abandoned
//! a still-running handler at a revoke's drain deadline) publishes none of that handler's
//! copies any more: the worker runs each job under a token ([`abandonable`]) that the revoke
//! cancels, and the publish gives up (the message is requeued) when it is cancelled.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::clock::now_ms;
use super::sink::{OutgoingRecord, Sink};
use super::stack::Assembly;
use super::tier_topics::{RetryTiers, TierNames};
use crate::message::headers;
use crate::message::{Envelope, ErrorClass, Failure, Outcome, RouteTarget};
use crate::observe::trace;

tokio::task_local! {
    /// Cancelled when the job this task runs is abandoned (see [`abandonable`]).
    static ABANDONED: Arc<CancellationToken>;
}

/// Runs `job` (a message through the policy stack) so that, once `abandoned` is cancelled, the
/// route layer publishes no copy for it any more and requeues it instead: its partition went
/// to another owner, which may already have read back the tiers without that copy.
pub(crate) async fn abandonable<F: std::future::Future>(
    abandoned: Arc<CancellationToken>,
    job: F,
) -> F::Output {
    ABANDONED.scope(abandoned, job).await
}

/// The abandonment token of the job this task runs (never cancelled outside a job).
pub(crate) fn abandoned() -> Arc<CancellationToken> {
    ABANDONED.try_with(Clone::clone).unwrap_or_default()
}

/// Whether the job this task runs was abandoned (without a copy of its token: asked once per
/// store call before the handler).
pub(crate) fn is_abandoned() -> bool {
    ABANDONED
        .try_with(|token| token.is_cancelled())
        .unwrap_or(false)
}

/// Routes failed messages to a retry tier or the dead-letter topic.
#[derive(Debug)]
struct RouteConfig {
    tiers: RetryTiers,
    dead_letter_topic: Option<String>,
    tier_partitions: Option<i32>,
    names: TierNames,
    sink: Arc<dyn Sink>,
    shutdown: CancellationToken,
}

/// Always on, below the trace span: failed messages go to a retry tier or the dead-letter
/// topic.
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    let r = a.routing.clone();
    Some(wrap(RouteConfig {
        tiers: r.tiers,
        dead_letter_topic: r.dead_letter,
        tier_partitions: r.tier_partitions,
        names: r.names,
        sink: r.sink,
        shutdown: a.shutdown.clone(),
    }))
}

impl Policy for RouteConfig {
    async fn call(self: Arc<Self>, envelope: Envelope, next: Next) -> Outcome {
        let outcome = next.run(envelope.clone()).await;
        let Outcome::Failed(failure) = outcome else {
            return outcome;
        };
        let (target, record) = self.copy_of(&envelope, &failure);
        self.publish(record, target, failure.class).await
    }
}

impl RouteConfig {
    /// Where a failed message goes next, and its copy.
    fn copy_of(&self, envelope: &Envelope, failure: &Failure) -> (RouteTarget, OutgoingRecord) {
        let now = now_ms();
        let tier = headers::retry_tier(&envelope.headers);
        let target = if !failure.permanent && tier < self.tiers.len() {
            RouteTarget::RetryTier(tier + 1)
        } else {
            RouteTarget::DeadLetter
        };
        let mut h = envelope.headers.clone();
        if tier == 0 {
            // A first delivery: provenance is this delivery, whatever headers the record
            // arrived with (a producer cannot steer where its copy is replayed to).
            for name in headers::PROVENANCE {
                h.remove(name);
            }
            h.set(headers::ORIGINAL_TOPIC, envelope.topic.to_string());
            h.set(headers::ORIGINAL_PARTITION, envelope.partition.to_string());
            h.set(headers::ORIGINAL_OFFSET, envelope.offset.to_string());
            if let Some(ts) = envelope.timestamp_ms {
                h.set(headers::ORIGINAL_TIMESTAMP, headers::format_time_ms(ts));
            }
        }
        let original_topic = headers::original_topic_of(&h, envelope).to_owned();
        let original_partition = headers::original_partition_of(&h, envelope);
        h.set(headers::GROUP, self.names.group().to_owned());
        h.set(
            headers::ROUTED_FROM,
            headers::routed_from(&envelope.topic, envelope.partition, envelope.offset),
        );
        h.set(headers::ERROR_CLASS, failure.class.as_str().to_owned());
        h.set(headers::ERROR_MESSAGE, failure.message.clone());
        h.set(headers::ATTEMPTS, failure.attempt.to_string());
        if h.get(headers::FIRST_FAILURE).is_none() {
            h.set(
                headers::FIRST_FAILURE,
                headers::format_time_ms(failure.first_failed_ms),
            );
        }
        h.set(headers::LAST_FAILURE, headers::format_time_ms(now));
        // The next hop is a child of this delivery's span.
        if let Some(cx) = trace::current() {
            cx.write_to(&mut h);
        }
        let (topic, partition) = match &target {
            RouteTarget::RetryTier(n) => {
                let delay = self
                    .tiers
                    .0
                    .get((*n - 1) as usize)
                    .copied()
                    .unwrap_or_default();
                let due = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                h.set(headers::RETRY_TIER, n.to_string());
                h.set(headers::DUE_AT, headers::format_time_ms(due));
                let partition = self
                    .tier_partitions
                    .filter(|count| original_partition < *count)
                    .map(|_| original_partition);
                (self.names.topic(&original_topic, *n), partition)
            }
            RouteTarget::DeadLetter => {
                h.remove(headers::RETRY_TIER);
                h.remove(headers::DUE_AT);
                let topic = self
                    .dead_letter_topic
                    .clone()
                    .unwrap_or_else(|| format!("{original_topic}.dlq"));
                (topic, None)
            }
        };
        let record = OutgoingRecord {
            topic,
            partition,
            key: envelope.key.clone(),
            payload: envelope.payload.clone(),
            headers: h,
        };
        (target, record)
    }

    /// Publishes until acknowledged; requeues on shutdown, and when the job is abandoned
    /// (see [`abandonable`]) before its copy was acknowledged.
    async fn publish(
        &self,
        record: OutgoingRecord,
        target: RouteTarget,
        error_class: ErrorClass,
    ) -> Outcome {
        let abandoned = abandoned();
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times()
            .with_jitter()
            .build();
        loop {
            if abandoned.is_cancelled() {
                tracing::info!(topic = %record.topic, "the message's partition went to another owner: its copy is not published (requeued)");
                return Outcome::Requeue;
            }
            // An abandoned send still queued in the producer is purged by the revoke.
            let sent = tokio::select! {
                biased;
                _ = abandoned.cancelled() => continue,
                sent = self.sink.send(record.clone()) => sent,
            };
            match sent {
                Ok(()) => {
                    return Outcome::Routed {
                        target,
                        error_class,
                    }
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, ?delay, "routing a failed message did not get an acknowledgement; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = abandoned.cancelled() => {}
                        _ = self.shutdown.cancelled() => return Outcome::Requeue,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use futures::future::BoxFuture;

    use super::*;
    use crate::policy::sink::SinkError;

    /// Never acknowledges (the broker is down); counts the sends.
    #[derive(Debug, Default)]
    struct Unanswered {
        sends: AtomicUsize,
    }

    impl Sink for Unanswered {
        fn send(&self, _record: OutgoingRecord) -> BoxFuture<'_, Result<(), SinkError>> {
            self.sends.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn an_abandoned_job_gives_up_its_unacknowledged_copy_and_is_requeued() {
        let sink = Arc::new(Unanswered::default());
        let route = RouteConfig {
            tiers: RetryTiers(vec![Duration::from_millis(100)]),
            dead_letter_topic: None,
            tier_partitions: None,
            names: TierNames::new("g", false),
            sink: sink.clone(),
            shutdown: CancellationToken::new(),
        };
        let failing = tower::service_fn(|e: Envelope| async move {
            Ok::<_, Infallible>(Outcome::Failed(Failure {
                class: ErrorClass::Transient,
                message: "fails".to_owned(),
                permanent: false,
                retry_after: None,
                first_failed_ms: 0,
                attempt: e.attempt,
                unavailable: false,
            }))
        });
        let service = Next::service(crate::policy::adapter::BoxedStack::new(failing)).with(route);
        let abandoned = Arc::new(CancellationToken::new());
        let envelope = Envelope::new("t", b"k".to_vec(), b"v".to_vec());
        let job = tokio::spawn(abandonable(abandoned.clone(), async move {
            service.run(envelope).await
        }));
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.sends.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the copy was never sent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        abandoned.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(5), job)
            .await
            .expect("the abandoned job ends")
            .expect("the job task");
        assert!(matches!(outcome, Outcome::Requeue), "{outcome:?}");
        assert_eq!(sink.sends.load(Ordering::SeqCst), 1, "not sent again");
    }
}
