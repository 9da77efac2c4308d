//! OpenTelemetry (the `otel` feature): the handler spans' ids are the OpenTelemetry layer's
//! when one records them, so the `traceparent` steadfast writes on its copies names spans
//! that are exported; [`install`] sets up an OTLP exporter and the layer in one call.
//!
//! The crates are re-exported ([`opentelemetry`], [`opentelemetry_sdk`],
//! [`opentelemetry_otlp`], [`tracing_opentelemetry`]), so an application that composes its own
//! subscriber uses the versions steadfast was built with.
//!
//! ```no_run
//! # fn main() -> Result<(), steadfast::observe::otel::OtelError> {
//! // Spans to the collector at localhost:4318 (OTLP over HTTP), logs to stdout.
//! let _flush_on_exit = steadfast::observe::otel::install(Some("http://localhost:4318"), "billing")?;
//! # Ok(()) }
//! ```

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

use super::traceparent::TraceContext;

pub use opentelemetry;
pub use opentelemetry_otlp;
pub use opentelemetry_sdk;
pub use tracing_opentelemetry;

/// Setting up the exporter failed.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// The OTLP exporter could not be built (an endpoint that is not a URL, most often).
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
    /// A global `tracing` subscriber was installed already: add
    /// `tracing_opentelemetry::layer().with_tracer(..)` to it instead (see [`tracer_provider`]).
    #[error("installing the tracing subscriber: {0}")]
    Subscriber(String),
}

/// Flushes and shuts the tracer provider down when dropped: keep it until the worker ended.
#[derive(Debug)]
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl OtelGuard {
    /// The tracer provider [`install`] set up.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("steadfast: shutting the OpenTelemetry tracer provider down: {e}");
        }
    }
}

/// A tracer provider exporting spans in batches over OTLP/HTTP (protobuf) to `endpoint`, a
/// collector's base URL (`http://localhost:4318`; `/v1/traces` is added unless it is there),
/// as the service `service_name`. With `endpoint` `None`, the standard variables decide
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`), else
/// `http://localhost:4318`. For an application that builds its own subscriber:
/// `tracing_opentelemetry::layer().with_tracer(provider.tracer("steadfast"))`.
pub fn tracer_provider(
    endpoint: Option<&str>,
    service_name: &str,
) -> Result<SdkTracerProvider, OtelError> {
    use opentelemetry_otlp::WithExportConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(endpoint) = endpoint {
        let base = endpoint.trim().trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        };
        builder = builder.with_endpoint(url);
    }
    let exporter = builder
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build())
}

/// Installs, for the whole process, a `tracing` subscriber that exports spans to `endpoint`
/// (see [`tracer_provider`]) and prints log lines to stdout (filtered by `RUST_LOG`, `info`
/// by default), and the W3C trace context propagator as OpenTelemetry's global one. Keep the
/// guard until the worker has ended: dropping it flushes the spans still buffered.
pub fn install(endpoint: Option<&str>, service_name: &str) -> Result<OtelGuard, OtelError> {
    let provider = tracer_provider(endpoint, service_name)?;
    let tracer = provider.tracer("steadfast");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer())
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| OtelError::Subscriber(e.to_string()))?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(OtelGuard { provider })
}

/// The OpenTelemetry context of `cx`, as a remote parent.
fn remote_context(cx: &TraceContext) -> opentelemetry::Context {
    let state = cx
        .state
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let span = SpanContext::new(
        TraceId::from_bytes(cx.trace_id),
        SpanId::from_bytes(cx.span_id),
        TraceFlags::new(cx.flags),
        true,
        state,
    );
    opentelemetry::Context::new().with_remote_span_context(span)
}

/// `span`'s context from the OpenTelemetry layer, after giving it `remote` (a record's
/// header) as its parent; `None` when no OpenTelemetry layer records `span` (steadfast makes
/// the ids then). `state` is the trace state to carry when the span has none of its own.
pub(crate) fn adopt(
    span: &tracing::Span,
    remote: Option<&TraceContext>,
    state: Option<String>,
) -> Option<TraceContext> {
    if let Some(p) = remote {
        span.set_parent(remote_context(p)).ok()?;
    }
    let otel = span.context();
    let sc = otel.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let own_state = sc.trace_state().header();
    Some(TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
        state: if own_state.is_empty() {
            state
        } else {
            Some(own_state)
        },
    })
}
