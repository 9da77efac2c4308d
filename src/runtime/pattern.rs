//! A handler of a topic pattern: the topics are listed every `topic_pattern_refresh_ms`, and
//! each topic whose name the pattern matches, and that is not one steadfast derives (retry
//! tiers, dead-letter, stale and delay topics, Kafka's internal ones), gets a worker of its
//! own in the handler's group, with its own tiers and dead-letter topic named after it, as a
//! handler of that one topic would have; topics created later are picked up at the next
//! listing.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::endpoint::ProbeSet;
use super::handlers::{Outcome, Section, Starting};
use super::stats::WorkerStats;
use super::worker::Worker;
use crate::config::{KafkaClient, WorkerConfig};
use crate::error::WorkerError;
use crate::handler::Handler;
use crate::observe::{Probe, Readiness};

/// How long one listing of the topics may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `template`'s handler over every topic `pattern` matches, as they appear, until
/// `shutdown`; never over a topic of `excluded` (the worker's dead-letter topics).
pub(crate) async fn watch<H: Handler>(
    template: Worker<H>,
    pattern: regex::Regex,
    shutdown: CancellationToken,
    probes: Arc<ProbeSet>,
    excluded: Arc<BTreeSet<String>>,
) -> Result<WorkerStats, WorkerError> {
    let group = template.group_name();
    let search = Arc::new(Search::default());
    probes.add(template.label(), search.clone());
    let lister: Arc<BaseConsumer> = Arc::new(
        template
            .client(KafkaClient::Helper)
            .create()
            .map_err(|e| WorkerError::kafka("creating the topic-pattern lister", e))?,
    );
    let written = template
        .settings()
        .topic_pattern
        .clone()
        .unwrap_or_default();
    let refresh = Duration::from_millis(template.settings().topic_pattern_refresh_ms);
    let stop_all = shutdown.child_token();
    let mut running = JoinSet::new();
    let mut outcome = Outcome::default();
    let mut started = HashSet::new();
    loop {
        let listing = tokio::select! {
            () = stop_all.cancelled() => break,
            listing = list_topics(&lister) => listing,
        };
        match listing {
            Ok(topics) => {
                for topic in topics {
                    if !pattern.is_match(&topic)
                        || is_derived(&topic, &excluded)
                        || !started.insert(topic.clone())
                    {
                        continue;
                    }
                    tracing::info!(%group, %topic, pattern = %written, "a topic matches the pattern: consuming it");
                    // Not ready until this topic's worker serves its own probe.
                    probes.add(format!("{group}/{topic}"), Arc::new(Starting));
                    let run = template
                        .for_topic(&topic)
                        .run_single(stop_all.clone(), Some(probes.clone()));
                    running.spawn(async move { (H::GROUP, run.await) });
                }
                search.listed();
            }
            Err(reason) => {
                tracing::warn!(%group, pattern = %written, %reason, "listing the topics failed; trying again");
                search.failed(reason);
            }
        }
        tokio::select! {
            () = stop_all.cancelled() => break,
            () = tokio::time::sleep(refresh) => {}
            Some(done) = running.join_next() => {
                // A topic's worker ends before the shutdown only on an error or a panic,
                // which stop the others (they drain and commit first).
                outcome.take(done, &stop_all);
            }
        }
    }
    outcome.finish(running, &stop_all).await
}

/// A handler as one of a worker's: a pattern's handler watches for its topics.
impl<H: Handler> Section for Worker<H> {
    fn name(&self) -> &'static str {
        H::GROUP
    }

    fn config(&self) -> &WorkerConfig {
        self.settings()
    }

    fn group(&self) -> String {
        self.group_name()
    }

    fn prepare(&mut self) -> Result<(), WorkerError> {
        self.apply_handler_table()
    }

    fn label(&self) -> String {
        let source = match &self.settings().topic_pattern {
            Some(pattern) => pattern.clone(),
            None => self.topic(),
        };
        format!("{}/{source}", self.group_name())
    }

    fn run_in(
        self: Box<Self>,
        shutdown: CancellationToken,
        probes: Arc<ProbeSet>,
        excluded: Arc<BTreeSet<String>>,
    ) -> BoxFuture<'static, Result<WorkerStats, WorkerError>> {
        Box::pin(async move {
            match self.settings().topic_regex()? {
                Some(pattern) => watch(*self, pattern, shutdown, probes, excluded).await,
                None => self.run_single(shutdown, Some(probes)).await,
            }
        })
    }
}

/// Whether `topic` is one steadfast derives from another (or one of the worker's
/// `dead_letters` topics), or Kafka's own: a pattern never consumes those (a tier's records
/// are read by the worker of their source topic).
fn is_derived(topic: &str, dead_letters: &BTreeSet<String>) -> bool {
    let numbered = |infix: &str| {
        topic
            .rsplit_once(infix)
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    topic.starts_with("__")
        || topic.ends_with(".dlq")
        || topic.ends_with(".stale")
        || numbered(".retry.")
        || numbered(".delay.")
        || dead_letters.contains(topic)
}

/// The names of the cluster's topics, read off the async threads.
async fn list_topics(lister: &Arc<BaseConsumer>) -> Result<Vec<String>, String> {
    let lister = lister.clone();
    tokio::task::spawn_blocking(move || {
        lister
            .fetch_metadata(None, LIST_TIMEOUT)
            .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The pattern's search, as a probe: not ready until the topics were first listed, nor while
/// listing them fails.
#[derive(Default)]
struct Search {
    listed: AtomicBool,
    failed: Mutex<Option<String>>,
}

impl Search {
    fn listed(&self) {
        self.listed.store(true, Ordering::Release);
        *self.failed.lock() = None;
    }

    fn failed(&self, reason: String) {
        *self.failed.lock() = Some(reason);
    }
}

impl Probe for Search {
    fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if let Some(reason) = self.failed.lock().clone() {
            reasons.push(format!("listing the topics failed: {reason}"));
        } else if !self.listed.load(Ordering::Acquire) {
            reasons.push("starting: listing the topics".to_owned());
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
            ..Readiness::default()
        }
    }

    fn refresh(&self) {}
}

#[cfg(test)]
mod tests {
    use super::is_derived;

    #[test]
    fn derived_and_internal_topics_are_never_matched() {
        let dead_letters = ["custom-dead-letters".to_owned()].into_iter().collect();
        for topic in [
            "orders.billing.retry.1",
            "orders.retry.12",
            "orders.dlq",
            "orders.stale",
            "orders.delay.3",
            "__consumer_offsets",
            "custom-dead-letters",
        ] {
            assert!(is_derived(topic, &dead_letters), "{topic}");
        }
        for topic in [
            "orders",
            "orders.retry",
            "orders.retry.x",
            "orders.delay.",
            "orders.dlq.eu",
            "_single_underscore",
        ] {
            assert!(!is_derived(topic, &dead_letters), "{topic}");
        }
    }
}
