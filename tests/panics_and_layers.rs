//! A record's trouble stays the record's: a panic outside the handler (a message's `decode`,
//! `key`, `version` or `id`) dead-letters its record as a handler's panic does, and a user
//! layer that hands a message back (`Outcome::Requeue`) while the worker runs has it tried
//! again, without spending an attempt. Before, the first ended the record's task unseen (its key, its concurrency slot and
//! its partition's commit waited for good) and the second left the record unfinished until
//! the partition was read again. The real embedded server and the real rdkafka client.

use crate::support;

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use steadfast::message::{headers, Codec, DecodeError, Json};
use steadfast::{Context, Envelope, Handler, HandlerError, Message, Outcome, Retry};
use support::*;
use tower::ServiceExt;

/// A message whose `decode` panics when `boom` is `decode` and whose `version` panics when
/// it is `version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fragile {
    key: String,
    version: i64,
    boom: String,
}

impl Message for Fragile {
    const TOPIC: &'static str = "fragile";
    type Codec = Json;
    fn key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
    fn version(&self) -> Option<i64> {
        assert!(self.boom != "version", "version() panicked");
        Some(self.version)
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let message: Fragile = <Json as Codec<Fragile>>::decode(payload)?;
        assert!(message.boom != "decode", "decode() panicked");
        Ok(message)
    }
}

/// Keeps the (key, version) of every record it handles, and the attempt it came at.
#[derive(Clone, Default)]
struct Keeps(Arc<Mutex<Vec<(String, i64, u32)>>>);

impl Handler for Keeps {
    type Message = Fragile;
    const GROUP: &'static str = "panics";

    fn handle_message(
        &self,
        message: Fragile,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self.0
            .lock()
            .push((message.key, message.version, cx.attempt()));
        async { Ok(()) }
    }
}

fn fragile(key: &str, version: i64, boom: &str) -> (Vec<u8>, Vec<u8>) {
    let message = Fragile {
        key: key.to_owned(),
        version,
        boom: boom.to_owned(),
    };
    (
        key.as_bytes().to_vec(),
        serde_json::to_vec(&message).expect("json"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_outside_the_handler_dead_letters_its_record_and_the_rest_go_on() {
    let server = server().await;
    let (topic, group) = topic_and_group(&server.bootstrap, "panics", 1).await;
    let records = vec![
        fragile("k1", 1, ""),
        fragile("k1", 2, "version"),
        fragile("k1", 3, ""),
        fragile("k2", 1, "decode"),
        fragile("k2", 2, ""),
        fragile("k3", 1, ""),
    ];
    produce_raw(&server.bootstrap, &topic, &records).await;
    let keeps = Keeps::default();
    // One record at a time: a slot lost to a panic would stop everything after it; stale
    // drop on, so that every record's version is read before the handler.
    let running = spawn(
        worker(&server.bootstrap, &topic, &group)
            .concurrency(1)
            .stale_drop("memory")
            .handler(keeps.clone()),
    );
    let dlq = format!("{topic}.dlq");
    let dead = read_topic(&server.bootstrap, &dlq, 2, Duration::from_secs(30));
    eventually(Duration::from_secs(30), "the commit at the end", || {
        committed(&server.bootstrap, &group, &topic).0 == Some(6)
    })
    .await;
    let stats = running.stop().await;
    let handled: BTreeSet<(String, i64)> = keeps
        .0
        .lock()
        .iter()
        .map(|(k, v, _)| (k.clone(), *v))
        .collect();
    let expected: BTreeSet<(String, i64)> = [("k1", 1), ("k1", 3), ("k2", 2), ("k3", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(
        handled, expected,
        "every other record handled, the keys too"
    );
    assert_eq!(
        log_end(&server.bootstrap, &dlq),
        2,
        "each dead-lettered once"
    );
    let mut offsets: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                r.headers[headers::ORIGINAL_OFFSET].clone(),
                r.headers[headers::ERROR_CLASS].clone(),
            )
        })
        .collect();
    offsets.sort();
    assert_eq!(
        offsets,
        [
            ("1".to_owned(), "panic".to_owned()),
            ("3".to_owned(), "panic".to_owned())
        ],
        "the two panicking records, as panics"
    );
    assert_eq!((stats.handled, stats.dead_lettered), (4, 2));
    server.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_handing_a_message_back_while_the_worker_runs_has_it_tried_again() {
    let server = server().await;
    let (topic, group) = topic_and_group(&server.bootstrap, "handed-back", 1).await;
    let records: Vec<_> = (1..=5).map(|i| fragile(&format!("k{i}"), 1, "")).collect();
    produce_raw(&server.bootstrap, &topic, &records).await;
    let keeps = Keeps::default();
    // Sheds each record the first two times it comes.
    let seen: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let shedding = tower::layer::layer_fn(move |inner: steadfast::policy::BoxedStack| {
        let seen = seen.clone();
        tower::service_fn(move |envelope: Envelope| {
            let inner = inner.clone();
            let times = {
                let mut seen = seen.lock();
                let times = seen.entry(envelope.offset).or_default();
                *times += 1;
                *times
            };
            async move {
                if times <= 2 {
                    return Ok::<_, Infallible>(Outcome::Requeue);
                }
                inner.oneshot(envelope).await
            }
        })
    });
    let running = spawn(
        worker(&server.bootstrap, &topic, &group)
            .retry(Retry::none())
            .layer(shedding)
            .handler(keeps.clone()),
    );
    eventually(Duration::from_secs(30), "the commit at the end", || {
        committed(&server.bootstrap, &group, &topic).0 == Some(5)
    })
    .await;
    let stats = running.stop().await;
    let mut handled = keeps.0.lock().clone();
    handled.sort();
    // Handed back twice each, with one attempt in place allowed: no attempt was spent.
    let expected: Vec<(String, i64, u32)> = (1..=5).map(|i| (format!("k{i}"), 1, 1)).collect();
    assert_eq!(handled, expected, "each once, at its first attempt");
    assert_eq!(
        log_end(&server.bootstrap, &format!("{topic}.dlq")),
        0,
        "nothing dead-lettered"
    );
    assert_eq!((stats.handled, stats.dead_lettered), (5, 0));
    server.handle.shutdown().await;
}
