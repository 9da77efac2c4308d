//! Errors a worker reports when it cannot start or stops on a fatal condition.

/// A worker that could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration was refused; the message names the key.
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The broker could not be reached or refused a request.
    #[error("broker: {0}")]
    Broker(String),
    /// The source topic does not exist.
    #[error("topic {0} does not exist: create it first")]
    MissingTopic(String),
    /// The worker needs tokio's multi-thread runtime (rebalance drains block their thread).
    #[error("the worker needs a multi-thread tokio runtime (#[tokio::main] or #[tokio::test(flavor = \"multi_thread\")])")]
    CurrentThreadRuntime,
    /// A store could not be used (a refused URL, a failed migration, or unreachable until
    /// shutdown).
    #[error("store: {0}")]
    Store(crate::store::StoreError),
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
    Signal(std::io::Error),
}
