//! The spans a delivery runs in, with OpenTelemetry's messaging attributes: one `message`
//! span per delivery (kind consumer, child of the `traceparent` the record arrived with, or
//! the root of a new trace), and within it one `attempt` span per handler attempt (in-place
//! retries each get theirs). The delivery span's context is what every copy of the record
//! carries on ([`crate::observe::trace`]): a retry tier's delivery is a child of the delivery
//! it was routed from, a dead letter's replay a child of the last delivery.

use std::sync::Arc;

use tracing::field::Empty;
use tracing::Instrument;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::stack::Assembly;
use crate::message::{Envelope, Outcome};
use crate::observe::trace::{enter_trace, within, Parent, TraceContext};

/// Runs each delivery in a `message` span.
#[derive(Debug)]
pub(crate) struct Trace {
    group: Arc<str>,
}

/// Always on, outermost.
pub(crate) fn build(a: &Assembly<'_>) -> Option<Wrap> {
    Some(wrap(Trace {
        group: Arc::from(a.group),
    }))
}

/// Runs each handler attempt in an `attempt` span, child of the delivery's.
#[derive(Debug)]
pub(crate) struct Attempt {
    group: Arc<str>,
}

/// Always on, just inside retry in place: every attempt gets its span.
pub(crate) fn attempt(a: &Assembly<'_>) -> Option<Wrap> {
    Some(wrap(Attempt {
        group: Arc::from(a.group),
    }))
}

/// A span named `name` with the messaging attributes of `envelope`; a root (its parent is
/// given from the record's header) when `root`.
macro_rules! delivery_span {
    ($name:literal, $otel_name:literal, $kind:literal, $group:expr, $envelope:expr, $($parent:tt)*) => {
        tracing::info_span!(
            $($parent)*
            $name,
            "otel.name" = %format_args!(concat!($otel_name, " {}"), $envelope.topic),
            "otel.kind" = $kind,
            "messaging.system" = "kafka",
            "messaging.operation.type" = "process",
            "messaging.destination.name" = %$envelope.topic,
            "messaging.kafka.message.key" = %$envelope.key_text(),
            "messaging.kafka.destination.partition" = $envelope.partition,
            "messaging.kafka.message.offset" = $envelope.offset,
            "messaging.consumer.group.name" = %$group,
            "steadfast.attempt" = $envelope.attempt,
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty,
        )
    };
}

impl Policy for Trace {
    fn call(
        self: Arc<Self>,
        envelope: Envelope,
        next: Next,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let span = delivery_span!(
            "message",
            "process",
            "consumer",
            self.group,
            envelope,
            parent: None,
        );
        let parent = if span.is_disabled() {
            None
        } else {
            TraceContext::from_headers(&envelope.headers)
        };
        let cx = enter_trace(&span, Parent::Remote(parent.as_ref()));
        within(
            cx,
            async move {
                let outcome = next.run(envelope).await;
                tracing::debug!(?outcome, "finished");
                outcome
            }
            .instrument(span),
        )
    }
}

impl Policy for Attempt {
    fn call(
        self: Arc<Self>,
        envelope: Envelope,
        next: Next,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let span = delivery_span!("attempt", "handle", "internal", self.group, envelope,);
        let cx = enter_trace(&span, Parent::Local);
        within(cx, next.run(envelope).instrument(span))
    }
}
