//! Errors a worker reports when it cannot start or stops on a fatal condition.

/// A worker that could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration was refused; the message names the key.
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The broker could not be reached or refused a request.
    #[error("broker: {context}")]
    Broker {
        /// What failed, with the brokers tried and the client's message.
        context: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<rdkafka::error::KafkaError>,
    },
    /// The source topic does not exist.
    #[error("topic {0} does not exist: create it first")]
    MissingTopic(String),
    /// The worker needs tokio's multi-thread runtime (rebalance drains block their thread).
    #[error("the worker needs a multi-thread tokio runtime (#[tokio::main] or #[tokio::test(flavor = \"multi_thread\")])")]
    CurrentThreadRuntime,
    /// A store could not be used (a refused URL, a failed migration, or unreachable until
    /// shutdown).
    #[error("store: {0}")]
    Store(#[source] crate::store::StoreError),
    /// The metrics and health endpoint could not listen on its address.
    #[error("observe endpoint {address}: {source}")]
    Endpoint {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// Listening for signals failed.
    #[error("signal handling: {0}")]
    Signal(#[source] std::io::Error),
}

impl WorkerError {
    /// A broker error: `context`, then the client's message; the client's error as the source.
    pub(crate) fn kafka(
        context: impl std::fmt::Display,
        source: rdkafka::error::KafkaError,
    ) -> Self {
        WorkerError::Broker {
            context: format!("{context}: {source}"),
            source: Some(source),
        }
    }

    /// A broker error without a client error under it.
    pub(crate) fn broker(context: impl Into<String>) -> Self {
        WorkerError::Broker {
            context: context.into(),
            source: None,
        }
    }

    /// The same error with `brokers` named first (for a broker error; others as they are).
    pub(crate) fn at_brokers(self, brokers: &str) -> Self {
        match self {
            WorkerError::Broker { context, source } => WorkerError::Broker {
                context: format!("bootstrap.servers {brokers}: {context}"),
                source,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_error_keeps_the_client_error_as_its_source() {
        let client = rdkafka::error::KafkaError::ClientCreation("no such host".to_owned());
        let err = WorkerError::kafka("creating topics", client).at_brokers("h:9092");
        let text = err.to_string();
        assert!(
            text.starts_with("broker: bootstrap.servers h:9092: creating topics: ")
                && text.contains("no such host"),
            "{text}"
        );
        let source = std::error::Error::source(&err).expect("the client error as the source");
        assert!(source.to_string().contains("no such host"), "{source}");
        assert!(std::error::Error::source(&WorkerError::broker("creating t: 36")).is_none());
    }
}
