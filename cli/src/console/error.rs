//! What a console request can fail with, and the page each failure answers with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::layout;

/// A console failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    /// The console cannot start as configured.
    #[error("{0}")]
    Config(String),
    /// The request is malformed (a filter that does not parse, a bad form).
    #[error("{0}")]
    BadRequest(String),
    /// The request is not allowed (missing form token, another origin).
    #[error("{0}")]
    Forbidden(String),
    /// Nothing is there.
    #[error("{0}")]
    NotFound(String),
    /// The request no longer fits what is there (a replay whose selection changed since its
    /// preview).
    #[error("{0}")]
    Conflict(String),
    /// Kafka (or a dead-letter operation) failed.
    #[error("{0:#}")]
    Kafka(anyhow::Error),
    /// A dead-letter operation refused or failed.
    #[error(transparent)]
    Dlq(#[from] steadfast::dlq::DlqError),
    /// A blocking lookup could not finish (its task panicked or was cancelled).
    #[error("the lookup did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<anyhow::Error> for ConsoleError {
    fn from(e: anyhow::Error) -> Self {
        ConsoleError::Kafka(e)
    }
}

impl ConsoleError {
    /// The HTTP status it answers with.
    pub(crate) fn status(&self) -> StatusCode {
        use steadfast::dlq::DlqError;
        match self {
            ConsoleError::BadRequest(_) | ConsoleError::Dlq(DlqError::InvalidSelection(_)) => {
                StatusCode::BAD_REQUEST
            }
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_)
            | ConsoleError::Dlq(DlqError::UnknownTopic(_) | DlqError::NoSuchRecord { .. }) => {
                StatusCode::NOT_FOUND
            }
            ConsoleError::Conflict(_)
            | ConsoleError::Dlq(
                DlqError::ForeignOriginalTopic { .. }
                | DlqError::MissingOriginalTopic { .. }
                | DlqError::UnknownOriginalTopic { .. }
                | DlqError::ReplayIdInUse { .. }
                | DlqError::ProgressTooLarge { .. },
            ) => StatusCode::CONFLICT,
            ConsoleError::Config(_)
            | ConsoleError::Kafka(_)
            | ConsoleError::Dlq(_)
            | ConsoleError::Task(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.status();
        let page = layout::page(
            "Error",
            maud::html! {
                h1 { "Error " (status.as_u16()) }
                p.error { (self.to_string()) }
                p { a href="/" { "Back to the overview" } }
            },
        );
        (status, page).into_response()
    }
}
