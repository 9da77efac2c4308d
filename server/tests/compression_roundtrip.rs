//! 100,000 messages produced with each compression codec come back byte-identical — keys,
//! payloads and headers — in order, per partition, through the real librdkafka client.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::Offset;
use steadfast_testkit::*;

const MESSAGES: usize = 100_000;
const PARTITIONS: i32 = 4;

fn key_of(i: usize) -> Vec<u8> {
    format!("key-{}", i % 997).into_bytes()
}

/// Payloads of varied sizes: some compressible text plus bytes that are not.
fn payload_of(i: usize) -> Vec<u8> {
    let mut p = format!("message {i} ").repeat(1 + i % 7).into_bytes();
    p.extend((0..(i % 50)).map(|j| (i * 31 + j * 7) as u8));
    p
}

fn headers_of(i: usize, codec: &str) -> Vec<(String, Option<Vec<u8>>)> {
    vec![
        ("index".to_owned(), Some(i.to_string().into_bytes())),
        ("codec".to_owned(), Some(codec.as_bytes().to_vec())),
        ("empty".to_owned(), None),
    ]
}

async fn roundtrip(codec: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server_on(dir.path())
        .default_partitions(PARTITIONS)
        .start()
        .await
        .expect("server");
    let bootstrap = server.bootstrap_servers();
    let topic = unique_topic(&format!("codec-{codec}"));
    let codec_owned = codec.to_owned();
    let (bootstrap_c, topic_c) = (bootstrap.clone(), topic.clone());
    let received = tokio::task::spawn_blocking(move || {
        let producer = logged_producer(
            &bootstrap_c,
            &[
                ("compression.type", codec_owned.as_str()),
                ("linger.ms", "5"),
                ("acks", "1"),
            ],
        );
        for i in 0..MESSAGES {
            let key = key_of(i);
            let payload = payload_of(i);
            let mut headers = OwnedHeaders::new();
            for (k, v) in headers_of(i, &codec_owned) {
                headers = headers.insert(Header {
                    key: &k,
                    value: v.as_deref(),
                });
            }
            send_record(
                &producer,
                BaseRecord::with_opaque_to(&topic_c, Box::new(i))
                    .key(&key[..])
                    .payload(&payload[..])
                    .headers(headers),
            );
        }
        let delivered = delivered_ok(&producer);
        assert_eq!(delivered.len(), MESSAGES, "every message acknowledged");
        let received = consume(
            &bootstrap_c,
            &topic_c,
            PARTITIONS,
            Offset::Beginning,
            MESSAGES,
            Duration::from_secs(120),
        );
        (delivered, received)
    })
    .await
    .expect("client thread");
    let (delivered, received) = received;
    let total: usize = received.values().map(Vec::len).sum();
    assert_eq!(total, MESSAGES, "no message lost or duplicated");
    for (partition, records) in &received {
        let mut last_index = None;
        for (n, r) in records.iter().enumerate() {
            let index: usize =
                std::str::from_utf8(r.headers[0].1.as_deref().expect("index header"))
                    .expect("utf8")
                    .parse()
                    .expect("number");
            assert_eq!(
                delivered[&index],
                (*partition, r.offset),
                "offset of message {index}"
            );
            if n > 0 {
                assert_eq!(
                    r.offset,
                    records[n - 1].offset + 1,
                    "offsets are contiguous"
                );
            }
            assert!(
                last_index < Some(index),
                "partition {partition} is in produce order"
            );
            last_index = Some(index);
            assert_eq!(r.key.as_deref(), Some(&key_of(index)[..]), "key of {index}");
            assert_eq!(
                r.payload.as_deref(),
                Some(&payload_of(index)[..]),
                "payload of {index}"
            );
            assert_eq!(r.headers, headers_of(index, codec), "headers of {index}");
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncompressed_messages_round_trip() {
    roundtrip("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_messages_round_trip() {
    roundtrip("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snappy_messages_round_trip() {
    roundtrip("snappy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_messages_round_trip() {
    roundtrip("lz4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_messages_round_trip() {
    roundtrip("zstd").await;
}
