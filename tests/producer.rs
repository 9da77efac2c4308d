//! The typed producer: `Producer::send` lands a message on its type's topic under its key,
//! encoded with its codec, where the returned delivery says; a handler's sends through its
//! context carry a provenance header naming the record being handled, and headers of its own.

use crate::support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use steadfast::message::headers::CAUSED_BY;
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
