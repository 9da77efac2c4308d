//! Traces survive retry hops (the `otel` feature; `scripts/test.sh` builds the suite with
//! it): against the in-process server with the real rdkafka client, a message sent in a span
//! fails in place, moves through a retry tier, is dead-lettered, is replayed by the library's
//! DLQ replay, and succeeds; the spans an in-memory exporter receives are one trace, each
//! hop's span a child of the previous hop's through the `traceparent` header.

use crate::support;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use steadfast::dlq::{Dlq, ReplayOptions, Selection};
use steadfast::observe::otel::opentelemetry::trace::{
    SpanId, TraceContextExt, TraceId, TracerProvider as _,
};
use steadfast::observe::otel::opentelemetry::Value;
use steadfast::observe::otel::opentelemetry_sdk::error::OTelSdkResult;
use steadfast::observe::otel::opentelemetry_sdk::trace::{
    SdkTracerProvider, SpanData, SpanExporter,
};
use steadfast::observe::otel::tracing_opentelemetry::{self, OpenTelemetrySpanExt};
use steadfast::observe::trace::{TraceContext, TRACEPARENT};
use steadfast::{Context, Handler, HandlerError, Producer, Record, Retry, Worker};
use support::*;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer as _;

#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "traces", key = key)]
struct Order {
    key: String,
}

/// Fails every attempt until `succeed` is set; counts calls and successes.
#[derive(Clone, Default)]
struct FailsUntilAllowed {
    succeed: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    successes: Arc<AtomicUsize>,
}

impl Handler for FailsUntilAllowed {
    type Message = Order;
    const GROUP: &'static str = "traces";

    fn handle_message(
        &self,
        _order: Order,
        _cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let this = self.clone();
        async move {
            this.calls.fetch_add(1, Ordering::SeqCst);
            if this.succeed.load(Ordering::SeqCst) {
                this.successes.fetch_add(1, Ordering::SeqCst);
                Ok(())
            } else {
                Err(HandlerError::transient("downstream says no"))
            }
        }
    }
}

/// Keeps every finished span (the SDK's simple processor exports each as it ends).
#[derive(Debug, Clone, Default)]
struct Kept(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Kept {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        self.0.lock().extend(batch);
        std::future::ready(Ok(()))
    }
}

/// The threads whose spans are recorded: this module's runtimes' threads (other tests that
/// share the process, under `cargo test`, record none).
const THREADS: &str = "traces";

/// The process's subscriber: the spans of this module's threads to OpenTelemetry, exported
/// into memory.
fn exported() -> &'static Kept {
    static KEPT: OnceLock<Kept> = OnceLock::new();
    KEPT.get_or_init(|| {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let ours = filter_fn(|_| {
            std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with(THREADS))
        });
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("traces-test"))
                .with_filter(ours),
        );
        tracing::subscriber::set_global_default(subscriber).expect("no subscriber installed yet");
        kept
    })
}

/// A runtime whose threads (blocking ones included) are named for [`exported`]'s filter.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name(format!("{THREADS}-runtime"))
        .enable_all()
        .build()
        .expect("runtime")
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_text(span: &SpanData, key: &str) -> String {
    attr(span, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_default()
}

fn attr_int(span: &SpanData, key: &str) -> Option<i64> {
    match attr(span, key)? {
        Value::I64(n) => Some(*n),
        other => other.as_str().parse().ok(),
    }
}

/// The span id a record's `traceparent` names.
fn header_span(read: &Read) -> SpanId {
    let value = read
        .headers
        .get(TRACEPARENT)
        .expect("the copy has a traceparent");
    let cx = TraceContext::parse(value, None).expect("a valid traceparent");
    SpanId::from_bytes(cx.span_id)
}

#[test]
fn a_message_failing_through_a_tier_the_dlq_and_a_replay_is_one_trace() {
    let kept = exported();
    let runtime = runtime();
    // On the runtime's threads, whose spans are recorded.
    let test = runtime.spawn(failing_through_a_tier_the_dlq_and_a_replay(kept));
    runtime.block_on(test).expect("the test's task");
}

async fn failing_through_a_tier_the_dlq_and_a_replay(kept: &Kept) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "traces", 1).await;
    let tier = format!("{topic}.{group}.retry.1");
    let dlq = format!("{topic}.dlq");

    // The message is sent in a span of the test's: the trace starts there.
    let checkout = tracing::info_span!("checkout");
    let trace_id: TraceId = checkout.context().span().span_context().trace_id();
    let root_id = checkout.context().span().span_context().span_id();
    let record = Record::of(&Order { key: "k1".into() })
        .expect("encodes")
        .topic(topic.clone());
    Producer::connect(&bootstrap)
        .send_record(record)
        .instrument(checkout.clone())
        .await
        .expect("sent");
    drop(checkout);

    let handler = FailsUntilAllowed::default();
    let worker = Worker::builder()
        .handler(handler.clone())
        .brokers(bootstrap.clone())
        .topic(topic.clone())
        .group(group.clone())
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::exponential(
            2,
            Duration::from_millis(10),
            Duration::from_millis(10),
        ))
        .retry_topics([Duration::from_millis(100)])
        .build()
        .expect("valid worker");
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let token = token.clone();
        async move { worker.run(token).await.expect("worker runs") }
    });

    // Two attempts in place, two in the tier, then the dead-letter topic.
    let calls = handler.calls.clone();
    eventually(Duration::from_secs(30), "four failed attempts", || {
        calls.load(Ordering::SeqCst) == 4
    })
    .await;
    let tier_copy = read_topic(&bootstrap, &tier, 1, Duration::from_secs(30)).remove(0);
    let dead = read_topic(&bootstrap, &dlq, 1, Duration::from_secs(30)).remove(0);
    handler.succeed.store(true, Ordering::SeqCst);
    let report = Dlq::new(bootstrap.clone())
        .replay(&Selection::new(&dlq), ReplayOptions::default())
        .await
        .expect("replay");
    assert_eq!(report.replayed.len(), 1);
    let successes = handler.successes.clone();
    eventually(
        Duration::from_secs(30),
        "the replayed record is handled",
        || successes.load(Ordering::SeqCst) == 1,
    )
    .await;
    let ours = || -> Vec<SpanData> {
        kept.0
            .lock()
            .iter()
            .filter(|s| s.span_context.trace_id() == trace_id)
            .cloned()
            .collect()
    };
    let process = format!("process {topic}");
    let processes = |spans: &[SpanData], name: &str| -> Vec<SpanData> {
        spans.iter().filter(|s| s.name == name).cloned().collect()
    };
    eventually(
        Duration::from_secs(30),
        "the three deliveries' spans are exported",
        || processes(&ours(), &process).len() == 2,
    )
    .await;
    token.cancel();
    running.await.expect("worker task");
    let spans = ours();

    // One trace: the test's span, the send, three deliveries with their attempts, the replay.
    let by_name =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    let one = |name: &str| -> &SpanData {
        let found = by_name(name);
        assert_eq!(found.len(), 1, "one `{name}` span in the trace: {spans:#?}");
        found[0]
    };
    let send = one(&format!("send {topic}"));
    assert_eq!(
        send.parent_span_id, root_id,
        "the send is a child of the test's span"
    );

    let mut firsts = processes(&spans, &process);
    firsts.sort_by_key(|s| attr_int(s, "messaging.kafka.message.offset"));
    let (first, replayed) = (&firsts[0], &firsts[1]);
    let in_tier = one(&format!("process {tier}"));
    let replay = one(&format!("replay {topic}"));

    assert_eq!(
        first.parent_span_id,
        send.span_context.span_id(),
        "the first delivery is a child of the send, through the header"
    );
    assert!(first.parent_span_is_remote);
    assert_eq!(
        in_tier.parent_span_id,
        first.span_context.span_id(),
        "the tier delivery is a child of the first delivery"
    );
    assert_eq!(header_span(&tier_copy), first.span_context.span_id());
    assert_eq!(
        replay.parent_span_id,
        in_tier.span_context.span_id(),
        "the replay is a child of the delivery that dead-lettered the message"
    );
    assert_eq!(header_span(&dead), in_tier.span_context.span_id());
    assert_eq!(
        replayed.parent_span_id,
        replay.span_context.span_id(),
        "the replayed delivery is a child of the replay"
    );

    // One span per handler attempt, each a child of its delivery's.
    let attempts_of = |delivery: &SpanData| -> Vec<i64> {
        let mut a: Vec<i64> = spans
            .iter()
            .filter(|s| s.parent_span_id == delivery.span_context.span_id())
            .filter(|s| s.name.starts_with("handle "))
            .filter_map(|s| attr_int(s, "steadfast.attempt"))
            .collect();
        a.sort();
        a
    };
    assert_eq!(attempts_of(first), [1, 2], "two attempts in place");
    assert_eq!(attempts_of(in_tier), [3, 4], "two more in the tier");
    assert_eq!(
        attempts_of(replayed),
        [1],
        "the replay starts afresh and succeeds"
    );

    // OpenTelemetry's messaging attributes.
    assert_eq!(attr_text(first, "messaging.system"), "kafka");
    assert_eq!(attr_text(first, "messaging.destination.name"), topic);
    assert_eq!(attr_text(first, "messaging.kafka.message.key"), "k1");
    assert_eq!(
        attr_int(first, "messaging.kafka.destination.partition"),
        Some(0)
    );
    assert_eq!(attr_int(first, "messaging.kafka.message.offset"), Some(0));
    assert_eq!(attr_text(first, "messaging.consumer.group.name"), group);
    assert_eq!(attr_text(in_tier, "messaging.destination.name"), tier);

    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(ids.len(), spans.len(), "every span once");
    // The test's span, the send, three deliveries, five attempts, the replay.
    assert_eq!(spans.len(), 1 + 1 + 3 + 5 + 1, "{spans:#?}");
    drop(server);
}
