//! The typed producer: `Producer::send` lands a message on its type's topic under its key,
//! encoded with its codec, where the returned delivery says; a handler's sends through its
//! context carry a provenance header naming the record being handled, and headers of its own;
//! a handler's delayed sends reach the handler of a worker that relays them once due.

use crate::observe::Scrape;
use crate::support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use steadfast::message::headers::{self, CAUSED_BY, DELIVER_AT};
use steadfast::producer::Delivery;
use steadfast::{Context, Handler, HandlerError, Message as _, Producer, Record, Worker};
use support::*;

const PARTITIONS: i32 = 3;

/// What the handler sends for each update it handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "receipts", key = account)]
struct Receipt {
    account: String,
    of: String,
}

/// Sends a receipt for every update to `topic`, with a header of its own; notes where each
/// landed.
#[derive(Clone)]
struct Acknowledge {
    topic: String,
    sent: Arc<Mutex<HashMap<String, Delivery>>>,
}

impl Handler for Acknowledge {
    type Message = Update;
    const GROUP: &'static str = "receipts";

    fn handle_message(
        &self,
        u: Update,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let this = self.clone();
        let producer = cx.producer().cloned();
        async move {
            let receipt = Receipt {
                account: u.key.clone(),
                of: u.id.clone(),
            };
            let record = Record::of(&receipt)
                .map_err(HandlerError::permanent)?
                .topic(this.topic.clone())
                .header("x-sent-by", "test");
            let delivery = producer?
                .send_record(record)
                .await
                .map_err(HandlerError::transient)?;
            this.sent.lock().insert(u.id, delivery);
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_land_where_their_delivery_says_and_a_handlers_name_their_cause() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "produce", PARTITIONS).await;
    let receipts = format!("{topic}.receipts");
    create_topic(&bootstrap, &receipts, PARTITIONS).await;

    // Straight from the application: the type's key and codec, to the topic given.
    let producer = Producer::connect(&bootstrap);
    let direct = Receipt {
        account: "acct-direct".into(),
        of: "none".into(),
    };
    let landed = producer
        .send_record(
            Record::of(&direct)
                .expect("encodes")
                .topic(receipts.clone()),
        )
        .await
        .expect("acknowledged");

    // From a handler: one receipt per update, 40 updates over 8 keys.
    let updates: Vec<Update> = (0..40)
        .map(|i| update(&format!("acct-{}", i % 8), i, &format!("u{i}")))
        .collect();
    let produced = produce_keyed(
        &bootstrap,
        &topic,
        &updates.iter().map(record).collect::<Vec<_>>(),
        10,
    )
    .await;
    let sources: HashMap<String, (i32, i64)> =
        updates.iter().map(|u| u.id.clone()).zip(produced).collect();
    let handler = Acknowledge {
        topic: receipts.clone(),
        sent: Arc::default(),
    };
    let running = spawn(
        Worker::builder()
            .brokers(&bootstrap)
            .topic(&topic)
            .group(&group)
            .handler(handler.clone()),
    );
    eventually(
        Duration::from_secs(60),
        "a receipt for every update",
        || handler.sent.lock().len() == updates.len(),
    )
    .await;
    running.stop().await;

    let read = tokio::task::spawn_blocking({
        let (bootstrap, receipts) = (bootstrap.clone(), receipts.clone());
        move || read_all(&bootstrap, &receipts, PARTITIONS)
    })
    .await
    .expect("reading receipts");
    assert_eq!(
        read.len(),
        updates.len() + 1,
        "one receipt each, and the direct one"
    );
    let at = |d: Delivery| {
        read.iter()
            .find(|r| r.partition == d.partition && r.offset == d.offset)
            .unwrap_or_else(|| panic!("nothing at {d:?}"))
    };
    let header = |r: &steadfast_testkit::Received, name: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
            .map(|v| String::from_utf8(v).expect("text"))
    };

    let direct_read = at(landed);
    assert_eq!(direct_read.key.as_deref(), Some(direct.key().as_slice()));
    let decoded =
        Receipt::decode(direct_read.payload.as_deref().expect("payload")).expect("decodes");
    assert_eq!(decoded, direct);
    assert_eq!(
        header(direct_read, CAUSED_BY),
        None,
        "sent outside a handler"
    );

    for (id, delivery) in handler.sent.lock().iter() {
        let r = at(*delivery);
        let receipt = Receipt::decode(r.payload.as_deref().expect("payload")).expect("decodes");
        assert_eq!(&receipt.of, id, "the receipt at {delivery:?}");
        assert_eq!(
            r.key.as_deref(),
            Some(receipt.account.as_bytes()),
            "keyed by account"
        );
        let (partition, offset) = sources[id];
        assert_eq!(
            header(r, CAUSED_BY),
            Some(format!("{topic}/{partition}/{offset}")),
            "the receipt of {id} names the update it was sent for"
        );
        assert_eq!(header(r, "x-sent-by").as_deref(), Some("test"));
    }
    server.shutdown().await;
}

/// Handles updates: a `first-<n>` update sends `later-<n>` through its context, due
/// `delay_ms(n)` after it is sent; a `later-<n>` update notes when it ran, when it was due and
/// what caused it.
#[derive(Clone)]
struct Remind {
    topic: String,
    sent_at: Arc<Mutex<HashMap<String, i64>>>,
    handled: Arc<Mutex<HashMap<String, Reminded>>>,
}

/// A handled reminder: when it ran, when it was due (`steadfast-deliver-at`), what caused it
/// (`steadfast-caused-by`).
type Reminded = (i64, Option<i64>, Option<String>);

/// The delay of reminder `n`: 1 to 3 s.
fn delay_ms(n: i64) -> u64 {
    1_000 + (n as u64 * 337) % 2_000
}

impl Handler for Remind {
    type Message = Update;
    const GROUP: &'static str = "reminders";

    fn handle_message(
        &self,
        u: Update,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let this = self.clone();
        let producer = cx.producer().cloned();
        let header = |name: &str| cx.headers().get_str(name).map(str::to_owned);
        let (due, cause) = (header(DELIVER_AT), header(CAUSED_BY));
        async move {
            if let Some(n) = u.id.strip_prefix("first-") {
                let later = update(&u.key, u.version + 1, &format!("later-{n}"));
                let record = Record::of(&later)
                    .map_err(HandlerError::permanent)?
                    .topic(this.topic.clone());
                let delay = Duration::from_millis(delay_ms(u.version));
                let when = std::time::SystemTime::now() + delay;
                this.sent_at
                    .lock()
                    .insert(later.id.clone(), wall_ms() + delay.as_millis() as i64);
                producer?
                    .send_record_at(record, when)
                    .await
                    .map_err(HandlerError::transient)?;
            } else {
                let due = due.as_deref().and_then(headers::parse_time_ms);
                this.handled.lock().insert(u.id, (wall_ms(), due, cause));
            }
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_relays_delayed_messages_hands_them_to_its_handler_once_due() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "remind", PARTITIONS).await;
    let firsts: Vec<Update> = (0..30)
        .map(|i| update(&format!("acct-{}", i % 6), i, &format!("first-{i}")))
        .collect();
    let produced = produce_keyed(
        &bootstrap,
        &topic,
        &firsts.iter().map(record).collect::<Vec<_>>(),
        10,
    )
    .await;
    let handler = Remind {
        topic: topic.clone(),
        sent_at: Arc::default(),
        handled: Arc::default(),
    };
    let endpoint = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for /metrics");
    let address = endpoint.local_addr().expect("its address");
    let running = spawn(
        Worker::builder()
            .brokers(&bootstrap)
            .topic(&topic)
            .group(&group)
            .relay_delayed_messages(true)
            .observe_listener(endpoint)
            .handler(handler.clone()),
    );
    eventually(Duration::from_secs(60), "every reminder handled", || {
        handler.handled.lock().len() == firsts.len()
    })
    .await;
    // The relay counts what it delivered (once each: nothing failed) and, once it has taken
    // the last acknowledgement, holds nothing.
    let counts = || async {
        let scrape = Scrape::take(address).await;
        let delayed = |name: &str, outcome: Option<&str>| {
            let mut labels = vec![("topic", topic.as_str())];
            labels.extend(outcome.map(|o| ("outcome", o)));
            scrape.value(name, &labels)
        };
        (
            delayed("steadfast_delayed_moved_total", Some("delivered")),
            delayed("steadfast_delayed_waiting_messages", None),
        )
    };
    eventually_async(
        Duration::from_secs(10),
        "the relay's metrics to count every reminder delivered and none waiting",
        || async { counts().await == (firsts.len() as f64, 0.0) },
    )
    .await;
    running.stop().await;
    let sent_at = handler.sent_at.lock().clone();
    let by_id: HashMap<String, (i32, i64)> =
        firsts.iter().map(|u| u.id.clone()).zip(produced).collect();
    for (id, (ran, due, cause)) in handler.handled.lock().iter() {
        let n = id.strip_prefix("later-").expect("a reminder");
        let due = due.unwrap_or_else(|| panic!("{id} carries no `{DELIVER_AT}`"));
        // Sent with `now + delay` just before the handler noted it: within a few ms.
        assert!(
            (due - sent_at[id]).abs() < 50,
            "{id}: due {due}, expected about {}",
            sent_at[id]
        );
        assert!(*ran >= due, "{id} ran {} ms before it was due", due - ran);
        let (partition, offset) = by_id[&format!("first-{n}")];
        assert_eq!(
            cause.as_deref(),
            Some(format!("{topic}/{partition}/{offset}").as_str()),
            "{id} names the update that sent it"
        );
    }
    server.shutdown().await;
}

/// A delayed record too large for its topic (`max.message.bytes` 3,000 there, 8 MiB in the
/// bucket topics) among smaller records of its key, all due at once: the relay's move of it
/// is refused for good, so it goes to `<topic>.dlq` with the refusal in its headers, exactly
/// once, while every other record is delivered exactly once and the bucket's offset is
/// committed to its end (nothing held back behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delayed_record_its_topic_refuses_for_good_is_dead_lettered_and_the_others_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let topic = steadfast_testkit::unique_topic("refused");
    create_topic_with(&bootstrap, &topic, 1, &[("max.message.bytes", "3000")]).await;
    let dead_letters = format!("{topic}.dlq");
    create_topic(&bootstrap, &dead_letters, 1).await;

    const RECORDS: i64 = 20;
    const TOO_LARGE: i64 = 7;
    let producer = Producer::connect(&bootstrap);
    let due = std::time::SystemTime::now() + Duration::from_millis(300);
    let mut payloads = HashMap::new();
    for i in 0..RECORDS {
        let id = if i == TOO_LARGE {
            "x".repeat(4_000)
        } else {
            format!("small-{i}")
        };
        let u = update("acct", i, &id);
        payloads.insert(i, record(&u).1);
        let delayed = Record::of(&u).expect("encodes").topic(topic.clone());
        producer
            .send_record_at(delayed, due)
            .await
            .expect("the delayed record is taken");
    }

    let relay = steadfast::delay::Relay::new(&topic, client(&bootstrap));
    assert_eq!(
        relay.dead_letter(),
        dead_letters,
        "the default dead-letter topic"
    );
    let group = relay.group();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));

    let bucket = steadfast::delay::buckets::bucket_topic(&topic, 1);
    let bucket_end = log_end(&bootstrap, &bucket);
    assert_eq!(bucket_end, RECORDS, "every record waits in bucket 1");
    eventually(
        Duration::from_secs(30),
        "the relay's commit of bucket 1 to reach its end",
        || committed(&bootstrap, &group, &bucket).0 == Some(bucket_end),
    )
    .await;
    stop.cancel();
    let stats = running
        .await
        .expect("the relay's task")
        .expect("the relay stops cleanly");
    assert_eq!(
        stats,
        steadfast::delay::RelayStats {
            delivered: RECORDS as u64 - 1,
            hopped: 0,
            dead_lettered: 1,
        }
    );

    let delivered = read_topic(
        &bootstrap,
        &topic,
        RECORDS as usize - 1,
        Duration::from_secs(10),
    );
    let mut versions: Vec<i64> = delivered
        .iter()
        .map(|r| {
            let u: Update =
                serde_json::from_slice(r.payload.as_deref().expect("a payload")).expect("JSON");
            u.version
        })
        .collect();
    versions.sort_unstable();
    let expected: Vec<i64> = (0..RECORDS).filter(|i| *i != TOO_LARGE).collect();
    assert_eq!(versions, expected, "every other record delivered once");
    assert_eq!(
        log_end(&bootstrap, &topic),
        RECORDS - 1,
        "nothing delivered twice"
    );

    let dead = read_topic(&bootstrap, &dead_letters, 1, Duration::from_secs(10));
    assert_eq!(log_end(&bootstrap, &dead_letters), 1, "one dead letter");
    assert_eq!(dead[0].key.as_deref(), Some(&b"acct"[..]));
    assert_eq!(
        dead[0].payload.as_ref(),
        payloads.get(&TOO_LARGE),
        "the record as it was"
    );
    let header = |name: &str| dead[0].headers.get(name).cloned().unwrap_or_default();
    assert_eq!(
        header(headers::ERROR_CLASS),
        steadfast::delay::REFUSED_CLASS
    );
    assert_eq!(
        header(headers::ORIGINAL_TOPIC),
        topic,
        "a replay goes to the topic"
    );
    assert_eq!(header(headers::GROUP), group);
    assert!(
        header(headers::ERROR_MESSAGE).contains(&bucket),
        "the message says where it was read: {}",
        header(headers::ERROR_MESSAGE)
    );
    assert!(
        dead[0].headers.contains_key(DELIVER_AT)
            && !dead[0].headers.contains_key(headers::DELAY_HOP_AT),
        "its delivery time is kept, the relay's hop dropped: {:?}",
        dead[0].headers
    );
}
