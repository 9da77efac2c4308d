//! The worker's HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (200 when ready, 503 with the reasons otherwise; both JSON), the
//! shapes Kubernetes probes and Prometheus scrapes expect.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use super::health::Readiness;

/// What the endpoint asks the worker.
pub(crate) trait Probe: Send + Sync + 'static {
    /// Whether the worker is ready, and why not.
    fn readiness(&self) -> Readiness;
    /// Brings the gauges up to date before a scrape.
    fn refresh(&self);
}

/// Serves the endpoint on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    probe: Arc<dyn Probe>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probe);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics(State(probe): State<Arc<dyn Probe>>) -> Response {
    match super::metrics::prometheus() {
        Ok(handle) => {
            probe.refresh();
            handle.run_upkeep();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
                .into_response()
        }
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why.to_owned()).into_response(),
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, Json(serde_json::json!({ "live": true }))).into_response()
}

async fn readyz(State(probe): State<Arc<dyn Probe>>) -> Response {
    let readiness = probe.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}
