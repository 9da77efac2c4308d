//! Delayed messages: [`crate::Producer::send_at`] and [`crate::Producer::send_after`] write
//! a record to one of its topic's bucket topics (`<topic>.delay.<n>`, see [`buckets`]), and a
//! [`Relay`] — run by a worker with `relay_delayed_messages = true`, or on its own with
//! `steadfast delays relay` — delivers it to the topic once it is due. A record is never
//! delivered before its time ([`crate::message::headers::DELIVER_AT`], which the delivered
//! record keeps); how soon after it depends on the relay being up and on the broker's round
//! trips (docs/delayed-messages.md has the figures and the trade-offs).

pub mod buckets;
mod relay;

pub use self::relay::{Relay, RelayStats, DEFAULT_BUFFER_LIMIT, REFUSED_CLASS};

use rdkafka::config::ClientConfig;

use crate::broker::ensure_topics;
use crate::error::WorkerError;

/// A relay or a delayed send that could not go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DelayError {
    /// The topic the delayed records are for does not exist.
    #[error("topic `{0}` does not exist: create it before sending delayed messages to it")]
    MissingTopic(String),
    /// A client could not be created or the broker refused a request.
    #[error("{0}")]
    Client(String),
}

/// Makes sure `topic` exists and creates its bucket topics where missing, with its partition
/// count (returned).
pub(crate) async fn ensure_bucket_topics(
    client: &ClientConfig,
    topic: &str,
) -> Result<i32, DelayError> {
    ensure_topics(client, topic, &buckets::bucket_topics(topic))
        .await
        .map_err(|e| match e {
            WorkerError::MissingTopic(t) => DelayError::MissingTopic(t),
            other => DelayError::Client(other.to_string()),
        })
}
