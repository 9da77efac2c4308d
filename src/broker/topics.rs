//! Creates the retry-tier and dead-letter topics when they are missing, with the source
//! topic's partition count.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use tokio::task::JoinHandle;

use crate::error::WorkerError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Lowers `reconnect.backoff.ms` (unless set) for a helper client (topic metadata, a
/// read-back, the tiers' log ends, a topic pattern's listing). After its first answer a
/// client leaves its bootstrap connection for one to the broker the answer names, and
/// librdkafka holds a new connection back for half of `reconnect.backoff.ms`: 50 ms by
/// default, which a short-lived helper's second request spent on every worker start.
/// Backoffs after failures still double up to `reconnect.backoff.max.ms`.
pub(crate) fn connect_quickly(config: &mut ClientConfig) {
    if config.get("reconnect.backoff.ms").is_none()
        && config.get("reconnect.backoff.max.ms").is_none()
    {
        config.set("reconnect.backoff.ms", "20");
    }
}

/// Partition count of `topic`, if it exists. Blocking: call from a blocking thread.
fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<Option<i32>, WorkerError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| WorkerError::kafka(format_args!("metadata of {topic}"), e))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0))
}

/// Makes sure `source` exists and creates `derived` topics that are missing with the same
/// partition count. Returns the source's partition count once every client it made is
/// closed.
pub(crate) async fn ensure_topics(
    config: &ClientConfig,
    source: &str,
    derived: &[String],
) -> Result<i32, WorkerError> {
    let ensured = ensure_topics_closing(config, source, derived).await?;
    Ok(ensured.closed().await)
}

/// What [`ensure_topics_closing`] found: the source's partition count, and the closing of
/// the client that created missing topics, still under way.
#[derive(Debug)]
pub(crate) struct Ensured {
    /// The source topic's partition count.
    pub(crate) partitions: i32,
    /// Closes the admin client on a blocking thread (none when nothing was created).
    pub(crate) closing: Option<JoinHandle<()>>,
}

impl Ensured {
    /// Waits until the admin client is closed; the source's partition count.
    pub(crate) async fn closed(self) -> i32 {
        if let Some(task) = self.closing {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "closing the admin client failed");
            }
        }
        self.partitions
    }
}

/// As [`ensure_topics`], but returns before the admin client that created missing topics is
/// closed: its close joins a polling thread that wakes every 100 ms, which would hold up the
/// caller that long. The caller waits for [`Ensured::closing`] before it returns.
pub(crate) async fn ensure_topics_closing(
    config: &ClientConfig,
    source: &str,
    derived: &[String],
) -> Result<Ensured, WorkerError> {
    let mut metadata_config = config.clone();
    connect_quickly(&mut metadata_config);
    let names: Vec<String> = std::iter::once(source.to_owned())
        .chain(derived.iter().cloned())
        .collect();
    let counts = tokio::task::spawn_blocking(move || -> Result<Vec<Option<i32>>, WorkerError> {
        let consumer: BaseConsumer = metadata_config
            .create()
            .map_err(|e| WorkerError::kafka("creating a metadata client", e))?;
        names
            .iter()
            .map(|t| partition_count(&consumer, t))
            .collect()
    })
    .await
    .map_err(|e| WorkerError::broker(format!("reading topic metadata: {e}")))??;
    let partitions = counts[0].ok_or_else(|| WorkerError::MissingTopic(source.to_owned()))?;
    let missing: Vec<&String> = derived
        .iter()
        .zip(&counts[1..])
        .filter(|(_, c)| c.is_none())
        .map(|(t, _)| t)
        .collect();
    if missing.is_empty() {
        return Ok(Ensured {
            partitions,
            closing: None,
        });
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| WorkerError::kafka("creating an admin client", e))?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(TIMEOUT)))
        .await
        .map_err(|e| WorkerError::kafka("creating topics", e))?;
    // Its drop joins a polling thread that wakes every 100 ms: off the async thread.
    let ensured = Ensured {
        partitions,
        closing: Some(tokio::task::spawn_blocking(move || drop(admin))),
    };
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                ensured.closed().await;
                return Err(WorkerError::broker(format!("creating {topic}: {code}")));
            }
        }
    }
    Ok(ensured)
}
