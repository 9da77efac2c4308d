//! Provenance cannot be forged from a source topic, against the in-process server with the
//! real rdkafka client: a producer that writes steadfast's routing headers on a record of the
//! source topic steers neither its retry-tier and dead-letter copies nor its replay, and
//! cannot start it in a tier or with attempts spent; a dead-letter record naming a foreign
//! original topic refuses the replay unless the target is named.

use crate::support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use steadfast::dlq::{Dlq, DlqError, ReplayOptions, Selection};
use steadfast::policy::headers;
use steadfast::{Context, Handler, HandlerError, Retry, Worker, WorkerStats};
use support::*;
use tokio_util::sync::CancellationToken;

/// `fail`: `permanent`, or how many transient failures before it succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "provenance", key = key)]
struct Order {
    key: String,
    fail: String,
}

/// One handler call: the topic it came from, its attempt, and its `steadfast-*` headers.
#[derive(Debug, Clone)]
struct Call {
    key: String,
    topic: String,
    attempt: u32,
    headers: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Recording {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Handler for Recording {
    type Message = Order;
    const GROUP: &'static str = "provenance";

    fn handle_message(
        &self,
        order: Order,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let call = Call {
            key: order.key.clone(),
            topic: cx.topic().to_owned(),
            attempt: cx.attempt(),
            headers: cx
                .headers()
                .iter()
                .filter(|(name, _)| name.starts_with("steadfast-"))
                .map(|(name, value)| (name.to_owned(), String::from_utf8_lossy(value).into()))
                .collect(),
        };
        let calls = self.calls.clone();
        async move {
            let mut calls = calls.lock();
            calls.push(call);
            let so_far = calls.iter().filter(|c| c.key == order.key).count();
            match order.fail.parse::<usize>() {
                Ok(n) if so_far > n => Ok(()),
                Ok(_) => Err(HandlerError::transient("not yet")),
                Err(_) => Err(HandlerError::permanent("no such account")),
            }
        }
    }
}

/// Produces `order` to partition 0 of `topic` with `forged` headers.
async fn produce_forged(bootstrap: &str, topic: &str, order: &Order, forged: &[(&str, &str)]) {
    let producer: FutureProducer = steadfast_testkit::client_config(bootstrap)
        .create()
        .expect("producer");
    let mut h = OwnedHeaders::new();
    for (name, value) in forged {
        h = h.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    let payload = serde_json::to_vec(order).expect("encodes");
    producer
        .send(
            FutureRecord::to(topic)
                .partition(0)
                .key(order.key.as_bytes())
                .payload(&payload)
                .headers(h),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_routing_headers_on_a_source_record_steer_neither_its_copies_nor_its_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "provenance", 1).await;
    // The topic a forged header points at: nothing may ever be written to it.
    let payments = steadfast_testkit::unique_topic("payments");
    create_topic(&bootstrap, &payments, 1).await;
    let dlq = format!("{topic}.dlq");
    let tier = format!("{topic}.{group}.retry.1");

    // Forged as a copy in the last tier, with attempts spent, from another topic.
    let forged = [
        (headers::ORIGINAL_TOPIC, payments.as_str()),
        (headers::ORIGINAL_PARTITION, "0"),
        (headers::ORIGINAL_OFFSET, "999"),
        (headers::RETRY_TIER, "1"),
        (headers::ATTEMPTS, "7"),
        (headers::DUE_AT, "2999-01-01T00:00:00Z"),
        (headers::ROUTED_FROM, "elsewhere/0/5"),
    ];
    let permanent = Order {
        key: "perm".into(),
        fail: "permanent".into(),
    };
    // Fails once in place, then succeeds in tier 1: were the forged tier header believed, it
    // would be in the last tier already and go straight to the dead-letter topic.
    let transient = Order {
        key: "tier".into(),
        fail: "1".into(),
    };
    produce_forged(&bootstrap, &topic, &permanent, &forged).await;
    produce_forged(&bootstrap, &topic, &transient, &forged).await;

    let handler = Recording::default();
    let worker = Worker::builder()
        .handler(handler.clone())
        .brokers(bootstrap.clone())
        .topic(topic.clone())
        .group(group.clone())
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::exponential(1, Duration::ZERO, Duration::ZERO))
        .retry_topics([Duration::from_millis(100)])
        .build()
        .expect("valid worker");
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let token = token.clone();
        async move { worker.run(token).await.expect("worker runs") }
    });
    let calls = handler.calls.clone();
    eventually(Duration::from_secs(30), "the tier record succeeds", || {
        calls.lock().iter().filter(|c| c.key == "tier").count() == 2
    })
    .await;
    let dead = read_topic(&bootstrap, &dlq, 1, Duration::from_secs(30));
    token.cancel();
    let stats: WorkerStats = running.await.expect("worker task");

    // The handler saw first deliveries as first deliveries: attempt 1, no tier, the forged
    // headers kept only under their untrusted names.
    let calls = calls.lock().clone();
    for c in calls.iter().filter(|c| c.topic == topic) {
        assert_eq!(c.attempt, 1, "{c:?}: forged attempts are not counted");
        for (name, value) in forged {
            assert_eq!(c.headers.get(name), None, "{c:?}: {name} set aside");
            assert_eq!(
                c.headers.get(&headers::untrusted(name)).map(String::as_str),
                Some(value),
                "{c:?}: {name} kept for debugging"
            );
        }
    }
    let tier_call = calls
        .iter()
        .find(|c| c.key == "tier" && c.topic != topic)
        .expect("the transient record ran again");
    assert_eq!(
        tier_call.topic, tier,
        "its copy went to tier 1 of the real topic"
    );
    assert_eq!(tier_call.attempt, 2);
    assert_eq!(
        tier_call.headers.get(headers::ORIGINAL_TOPIC),
        Some(&topic),
        "the tier copy names the delivery itself"
    );

    // One dead letter, the permanent one, naming its real delivery.
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(log_end(&bootstrap, &dlq), 1, "only the permanent record");
    let d = &dead[0].headers;
    assert_eq!(d.get(headers::ORIGINAL_TOPIC), Some(&topic));
    assert_eq!(
        d.get(headers::ORIGINAL_OFFSET).map(String::as_str),
        Some("0")
    );
    assert_eq!(d.get(headers::ATTEMPTS).map(String::as_str), Some("1"));
    assert_eq!(
        d.get(headers::ROUTED_FROM),
        Some(&format!("{topic}/0/0")),
        "routed from its own delivery"
    );
    assert_eq!(
        d.get(&headers::untrusted(headers::ORIGINAL_TOPIC)),
        Some(&payments)
    );

    // Replayed, it goes back to the real topic; the forged one receives nothing.
    let report = Dlq::new(bootstrap.clone())
        .replay(&Selection::new(&dlq), ReplayOptions::default())
        .await
        .expect("replay");
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(report.replayed[0].topic, topic);
    assert_eq!(
        log_end(&bootstrap, &topic),
        3,
        "the replay went back to the source"
    );
    assert_eq!(
        log_end(&bootstrap, &payments),
        0,
        "nothing reached the forged topic"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_naming_a_foreign_topic_is_replayed_only_where_the_operator_says() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let orders = steadfast_testkit::unique_topic("orders");
    let payments = steadfast_testkit::unique_topic("payments");
    let dlq = format!("{orders}.dlq");
    for t in [&orders, &payments, &dlq] {
        create_topic(&bootstrap, t, 1).await;
    }
    // A dead letter as one written into the dead-letter topic by other means than the
    // worker: it names `payments`, which `orders.dlq` holds no records of.
    let record = Order {
        key: "k".into(),
        fail: "permanent".into(),
    };
    produce_forged(
        &bootstrap,
        &dlq,
        &record,
        &[
            (headers::ORIGINAL_TOPIC, payments.as_str()),
            (headers::ORIGINAL_PARTITION, "0"),
            (headers::ERROR_CLASS, "permanent"),
        ],
    )
    .await;
    let tool = Dlq::new(bootstrap.clone());

    for dry_run in [true, false] {
        let refused = tool
            .replay(
                &Selection::new(&dlq),
                ReplayOptions::default().with_dry_run(dry_run),
            )
            .await
            .expect_err("a foreign original topic refuses the replay");
        assert!(
            matches!(refused, DlqError::ForeignOriginalTopic { count: 1, ref named, .. } if *named == payments),
            "{refused}"
        );
        let text = refused.to_string();
        assert!(text.contains("--to") && text.contains(&orders), "{text}");
    }
    assert_eq!(log_end(&bootstrap, &payments), 0);
    assert_eq!(log_end(&bootstrap, &orders), 0);

    // Named by the operator, the target is taken: into `orders`, not where the record says.
    let report = tool
        .replay(
            &Selection::new(&dlq),
            ReplayOptions::default().with_to(orders.clone()),
        )
        .await
        .expect("replay with a named target");
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(report.replayed[0].topic, orders);
    assert_eq!(log_end(&bootstrap, &orders), 1);
    assert_eq!(log_end(&bootstrap, &payments), 0);

    // A dead-letter topic that follows no naming rule has no known source: only --to.
    let shared = steadfast_testkit::unique_topic("dead-letters");
    create_topic(&bootstrap, &shared, 1).await;
    produce_forged(
        &bootstrap,
        &shared,
        &record,
        &[(headers::ORIGINAL_TOPIC, orders.as_str())],
    )
    .await;
    let refused = tool
        .replay(&Selection::new(&shared), ReplayOptions::default())
        .await
        .expect_err("no naming rule, no target");
    assert!(
        matches!(refused, DlqError::ForeignOriginalTopic { .. }),
        "{refused}"
    );
    let report = tool
        .replay(
            &Selection::new(&shared).with_original_topic(&orders),
            ReplayOptions::default().with_to(orders.clone()),
        )
        .await
        .expect("replay with a named target");
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(log_end(&bootstrap, &orders), 2);
    drop(server);
}
