//! Errors raised by the embedded server.

use std::io;
use std::path::PathBuf;

/// What can go wrong starting or running the embedded server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
    /// A file or directory of the data directory could not be read or written.
    #[error("storage error at {path}: {source}")]
    Storage {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A metadata file of the data directory is not what the server wrote.
    #[error("invalid metadata in {path}: {reason}")]
    InvalidMetadata {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS could not be set up from the configured PEM files.
    #[error(transparent)]
    Tls(#[from] crate::auth::tls::TlsError),
    /// The users file could not be read.
    #[error(transparent)]
    Users(#[from] crate::auth::users::UsersError),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl ServerError {
    pub(crate) fn storage(path: impl Into<PathBuf>, source: io::Error) -> Self {
        ServerError::Storage {
            path: path.into(),
            source,
        }
    }
}
