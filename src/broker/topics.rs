//! Creates the retry-tier and dead-letter topics when they are missing, with the source
//! topic's partition count.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::error::WorkerError;

const TIMEOUT: Duration = Duration::from_secs(10);

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
/// partition count. Returns the source's partition count.
pub(crate) async fn ensure_topics(
    config: &ClientConfig,
    source: &str,
    derived: &[String],
) -> Result<i32, WorkerError> {
    let metadata_config = config.clone();
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
        return Ok(partitions);
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
    // Its drop joins a polling thread that wakes every 100 ms: off the async thread, and
    // waited for, so that the client is gone before the worker goes on.
    if let Err(e) = tokio::task::spawn_blocking(move || drop(admin)).await {
        tracing::warn!(error = %e, "closing the admin client failed");
    }
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(WorkerError::broker(format!("creating {topic}: {code}")))
            }
        }
    }
    Ok(partitions)
}
