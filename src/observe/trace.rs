//! W3C trace context across a message's hops: the `traceparent` (and `tracestate`) header
//! read from a delivery, the span its handling runs in, and the header written onto every
//! record steadfast produces from it (retry-tier, dead-letter and stale copies, replayed
//! records, the typed producer's sends), so a message that fails, waits in a tier, is
//! dead-lettered and replayed is one trace.
//!
//! The header format is read and written without OpenTelemetry ([`TraceContext`]). A span's ids come from
//! the OpenTelemetry layer when the `otel` feature is on and that layer records the span;
//! otherwise steadfast makes them (random, as the W3C format asks) and records them on the
//! span as `trace_id`, `span_id` and `parent_span_id`, so logs carry them. A span no
//! subscriber records costs nothing more: no ids are made, and the copies keep the header the
//! record arrived with.

use std::future::Future;

pub use super::traceparent::{TraceContext, TraceParentError, TRACEPARENT, TRACESTATE};

tokio::task_local! {
    /// The context of the span the current handling runs in (a delivery or a handler attempt).
    static CURRENT: TraceContext;
}

/// The context of the delivery or handler attempt this task handles, when its span is recorded.
pub(crate) fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `cx` as [`current`] (unchanged when `cx` is `None`).
pub(crate) async fn within<F: Future>(cx: Option<TraceContext>, fut: F) -> F::Output {
    match cx {
        Some(cx) => CURRENT.scope(cx, fut).await,
        None => fut.await,
    }
}

/// Where a span's parent comes from.
#[derive(Debug)]
pub(crate) enum Parent<'a> {
    /// A record's header (a span made with `parent: None`): the span is a child of it, or
    /// the root of a new trace when there is none.
    Remote(Option<&'a TraceContext>),
    /// The span the code runs in: the OpenTelemetry layer's current span, or [`current`].
    Local,
}

/// Gives `span` its place in the trace and returns its context, the parent of what is made
/// within it; `None` when no subscriber records `span` (nothing is made then, and copies
/// keep the header their record arrived with). The span must declare the fields
/// `trace_id`, `span_id` and `parent_span_id` (recorded when steadfast makes the ids).
pub(crate) fn enter_trace(span: &tracing::Span, parent: Parent<'_>) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    if let Some(cx) = exported(span, &parent) {
        return Some(cx);
    }
    let parent = parent.context();
    let cx = match &parent {
        Some(p) => p.child(),
        None => TraceContext::root(),
    };
    span.record("trace_id", cx.trace_id_hex());
    span.record("span_id", cx.span_id_hex());
    if let Some(p) = &parent {
        span.record("parent_span_id", p.span_id_hex());
    }
    Some(cx)
}

impl Parent<'_> {
    /// The parent's context: the header's, or [`current`].
    fn context(&self) -> Option<TraceContext> {
        match self {
            Parent::Remote(p) => p.cloned(),
            Parent::Local => current(),
        }
    }
}

/// `span`'s context from the OpenTelemetry layer, `span` given `parent`; `None` when no
/// OpenTelemetry layer records it (or without the `otel` feature).
#[cfg(feature = "otel")]
fn exported(span: &tracing::Span, parent: &Parent<'_>) -> Option<TraceContext> {
    let (remote, state) = match parent {
        Parent::Remote(p) => (*p, p.and_then(|p| p.state.clone())),
        Parent::Local => (None, current().and_then(|c| c.state)),
    };
    super::otel::adopt(span, remote, state)
}

/// Without the `otel` feature no span is exported.
#[cfg(not(feature = "otel"))]
fn exported(_: &tracing::Span, _: &Parent<'_>) -> Option<TraceContext> {
    None
}

/// A span for a record steadfast sends (kind producer), child of `parent`, and the context
/// to write on the record: the span's when an OpenTelemetry layer exports it, else `parent`'s
/// unchanged (a send span whose ids were made up and exported nowhere would cut the chain of
/// the hops that do export theirs: `steadfast dlq replay` logs, it does not export).
pub(crate) fn send_span(
    operation: &'static str,
    topic: &str,
    parent: Parent<'_>,
) -> (tracing::Span, Option<TraceContext>) {
    let span = match parent {
        Parent::Remote(_) => tracing::info_span!(
            parent: None,
            "send",
            "otel.name" = %format_args!("{operation} {topic}"),
            "otel.kind" = "producer",
            "messaging.system" = "kafka",
            "messaging.operation.name" = operation,
            "messaging.destination.name" = %topic,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        ),
        Parent::Local => tracing::info_span!(
            "send",
            "otel.name" = %format_args!("{operation} {topic}"),
            "otel.kind" = "producer",
            "messaging.system" = "kafka",
            "messaging.operation.name" = operation,
            "messaging.destination.name" = %topic,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        ),
    };
    let parent_cx = parent.context();
    if span.is_disabled() {
        return (span, parent_cx);
    }
    if let Some(cx) = exported(&span, &parent) {
        return (span, Some(cx));
    }
    if let Some(p) = &parent_cx {
        span.record("trace_id", p.trace_id_hex());
        span.record("parent_span_id", p.span_id_hex());
    }
    (span, parent_cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn an_unrecorded_span_makes_no_ids_and_a_recorded_one_is_a_child() {
        let parent = TraceContext::parse(EXAMPLE, None).expect("parses");
        let span = tracing::info_span!(
            "t",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty
        );
        assert_eq!(enter_trace(&span, Parent::Remote(Some(&parent))), None);
        let recorded = tracing::subscriber::with_default(Recorded, || {
            let span = tracing::info_span!(
                "t",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                parent_span_id = tracing::field::Empty
            );
            enter_trace(&span, Parent::Remote(Some(&parent)))
        })
        .expect("a recorded span has a context");
        assert_eq!(recorded.trace_id, parent.trace_id);
        assert_ne!(recorded.span_id, parent.span_id);
    }

    /// A subscriber that records every span (and forgets it).
    struct Recorded;

    impl tracing::Subscriber for Recorded {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
}
