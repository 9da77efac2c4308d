//! What every page handler shares.

use std::sync::Arc;

use steadfast::dlq::Dlq;

use super::access::Auth;
use super::history::History;
use super::replays::Replays;
use crate::client::Connection;

/// What every page handler shares.
#[derive(Debug)]
pub(crate) struct Console {
    /// The Kafka connection, as for the other commands.
    pub(crate) connection: Connection,
    /// Dead-letter listing, reading and replay.
    pub(crate) dlq: Dlq,
    /// Probe endpoints of the workers shown on the pods page.
    pub(crate) workers: Vec<String>,
    /// Lag and log-end samples of the last hour.
    pub(crate) history: History,
    /// Replays started from the console.
    pub(crate) replays: Replays,
    /// The token, the session and the form token.
    pub(crate) auth: Auth,
    /// HTTP client for the workers' probes.
    pub(crate) http: reqwest::Client,
}

/// Shared state of the handlers.
pub(crate) type Shared = Arc<Console>;
