//! Durability: acknowledged data survives restarts and a SIGKILL; a torn or corrupt segment
//! tail is truncated on start and everything before it is served.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::Offset;
use steadfast_testkit::*;

use crate::support::ChildServer;

fn payload_of(i: usize) -> Vec<u8> {
    format!("durable message {i:08} {}", "x".repeat(i % 64)).into_bytes()
}

fn index_of(payload: &[u8]) -> usize {
    std::str::from_utf8(&payload[16..24])
        .expect("utf8")
        .parse()
        .expect("index")
}

fn segment_path(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir
        .join("topics")
        .join(topic)
        .join(partition.to_string())
        .join(format!("{:020}.log", 0))
}

/// Checks that every acknowledged message is present at its acknowledged offset, with its
/// payload, and that nothing else is.
fn assert_all_acknowledged_present(
    acknowledged: &HashMap<usize, (i32, i64)>,
    received: &HashMap<i32, Vec<Received>>,
) {
    let mut by_position = HashMap::new();
    for records in received.values() {
        for r in records {
            let index = index_of(r.payload.as_deref().expect("payload"));
            assert_eq!(
                r.payload.as_deref(),
                Some(&payload_of(index)[..]),
                "payload intact"
            );
            assert!(
                by_position.insert((r.partition, r.offset), index).is_none(),
                "offset served twice"
            );
        }
    }
    for (index, at) in acknowledged {
        assert_eq!(
            by_position.get(at),
            Some(index),
            "acknowledged message {index} at {at:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_acks_all_messages_survive_a_restart() {
    const MESSAGES: usize = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server_on(dir.path())
        .default_partitions(3)
        .start()
        .await
        .expect("server");
    let topic = unique_topic("restart");
    let bootstrap = server.bootstrap_servers();
    let t = topic.clone();
    let acknowledged = tokio::task::spawn_blocking(move || {
        let producer = logged_producer(
            &bootstrap,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "2"),
            ],
        );
        for i in 0..MESSAGES {
            let payload = payload_of(i);
            let key = format!("k{}", i % 10);
            send_record(
                &producer,
                BaseRecord::with_opaque_to(&t, Box::new(i))
                    .key(key.as_bytes())
                    .payload(&payload[..]),
            );
        }
        delivered_ok(&producer)
    })
    .await
    .expect("producer thread");
    assert_eq!(acknowledged.len(), MESSAGES);
    server.shutdown().await;

    let server = start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let received = tokio::task::spawn_blocking(move || {
        consume(
            &bootstrap,
            &topic,
            3,
            Offset::Beginning,
            MESSAGES,
            Duration::from_secs(60),
        )
    })
    .await
    .expect("consumer thread");
    assert_eq!(
        received.values().map(Vec::len).sum::<usize>(),
        MESSAGES,
        "no duplicates"
    );
    assert_all_acknowledged_present(&acknowledged, &received);
    server.shutdown().await;
}

#[test]
fn sigkill_while_producing_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = unique_topic("sigkill");
    let server = ChildServer::start(dir.path());
    let producer = Arc::new(logged_producer(
        &server.bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "1"),
            ("message.timeout.ms", "3000"),
            ("topic.metadata.refresh.interval.ms", "1000"),
        ],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (producer, stop, topic) = (producer.clone(), stop.clone(), topic.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let payload = payload_of(i);
                send_record(
                    &producer,
                    BaseRecord::with_opaque_to(&topic, Box::new(i)).payload(&payload[..]),
                );
                i += 1;
                if i.is_multiple_of(100) {
                    producer.poll(Duration::ZERO);
                }
            }
            i
        })
    };
    // Kill once a good number of messages are acknowledged, while more are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        producer.poll(Duration::from_millis(10));
        let acked = producer.context().reports.lock().expect("lock").len();
        if acked >= 20_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "producer made no progress ({acked} acked)"
        );
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender thread");
    // Let every outstanding message resolve (acknowledged before the kill, or failed).
    let _ = producer.flush(Duration::from_secs(15));
    let acknowledged: HashMap<usize, (i32, i64)> = producer
        .context()
        .reports
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|(i, r)| r.as_ref().ok().map(|at| (*i, *at)))
        .collect();
    assert!(acknowledged.len() >= 20_000 && acknowledged.len() <= sent);
    drop(producer);

    let server = ChildServer::start(dir.path());
    let (low, high) = watermarks(&server.bootstrap, &topic, 0);
    assert_eq!(low, 0);
    assert!(
        high as usize >= acknowledged.len(),
        "high watermark {high} below acknowledged count"
    );
    // check.crcs makes the client verify every batch it is served: a partial batch fails.
    let received = consume_with(
        &server.bootstrap,
        &topic,
        1,
        Offset::Beginning,
        high as usize,
        Duration::from_secs(60),
        &[("check.crcs", "true")],
    );
    assert_eq!(
        received.values().map(Vec::len).sum::<usize>(),
        high as usize
    );
    assert_all_acknowledged_present(&acknowledged, &received);

    // Producing continues at the next offset.
    let producer = logged_producer(&server.bootstrap, &[("acks", "all")]);
    let payload = payload_of(999_999);
    send_record(
        &producer,
        BaseRecord::with_opaque_to(&topic, Box::new(0)).payload(&payload[..]),
    );
    let delivered = delivered_ok(&producer);
    assert_eq!(
        delivered[&0],
        (0, high),
        "next produce lands at the old high watermark"
    );
}

/// Produces `count` messages (acks=all) to a fresh single-partition topic, then stops the
/// server; returns the topic.
async fn fill_and_stop(dir: &Path, count: usize) -> String {
    let server = start_server(dir).await;
    let topic = unique_topic("tail");
    let bootstrap = server.bootstrap_servers();
    let t = topic.clone();
    let delivered = tokio::task::spawn_blocking(move || {
        let producer = logged_producer(&bootstrap, &[("acks", "all"), ("linger.ms", "0")]);
        for i in 0..count {
            let payload = payload_of(i);
            send_record(
                &producer,
                BaseRecord::with_opaque_to(&t, Box::new(i)).payload(&payload[..]),
            );
            if i % 50 == 49 {
                producer.flush(Duration::from_secs(10)).expect("flush");
            }
        }
        delivered_ok(&producer)
    })
    .await
    .expect("producer");
    assert_eq!(delivered.len(), count);
    server.shutdown().await;
    topic
}

/// Restarts on `dir` and reads the whole partition back; returns its high watermark too.
async fn read_back(dir: &Path, topic: &str) -> (i64, HashMap<i32, Vec<Received>>) {
    let server = start_server(dir).await;
    let bootstrap = server.bootstrap_servers();
    let t = topic.to_owned();
    let result = tokio::task::spawn_blocking(move || read_partition(&bootstrap, &t))
        .await
        .expect("consumer");
    server.shutdown().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_last_batch_is_truncated_and_the_rest_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = fill_and_stop(dir.path(), 1_000).await;
    let segment = segment_path(dir.path(), &topic, 0);
    let clean_len = std::fs::metadata(&segment).expect("segment").len();
    let garbage: Vec<u8> = (0..5_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open segment")
        .write_all(&garbage)
        .expect("write garbage");

    let (high, received) = read_back(dir.path(), &topic).await;
    assert_eq!(high, 1_000, "log end is after the last whole batch");
    let records = &received[&0];
    assert_eq!(records.len(), 1_000);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.payload.as_deref(), Some(&payload_of(i)[..]));
    }
    assert_eq!(
        std::fs::metadata(&segment).expect("segment").len(),
        clean_len,
        "garbage cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_batch_is_dropped_and_offsets_continue_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = fill_and_stop(dir.path(), 1_000).await;
    let segment = segment_path(dir.path(), &topic, 0);
    let len = std::fs::metadata(&segment).expect("segment").len();
    // Cut the file in the middle of its last batch, as a crash mid-write would.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(len - 10)
        .expect("truncate");

    let server = start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        let (high, received) = read_partition(&bootstrap, &t);
        assert!(
            (950..1_000).contains(&high),
            "the torn batch is gone, the rest kept: {high}"
        );
        let records = &received[&0];
        assert_eq!(records.len(), high as usize, "nothing partial served");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.payload.as_deref(), Some(&payload_of(i)[..]));
        }
        let producer = logged_producer(&bootstrap, &[("acks", "all")]);
        let payload = payload_of(1);
        send_record(
            &producer,
            BaseRecord::with_opaque_to(&t, Box::new(0)).payload(&payload[..]),
        );
        assert_eq!(
            delivered_ok(&producer)[&0],
            (0, high),
            "offsets continue after the cut"
        );
    })
    .await
    .expect("client");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_byte_in_the_last_batch_truncates_from_that_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = fill_and_stop(dir.path(), 1_000).await;
    let segment = segment_path(dir.path(), &topic, 0);
    let mut bytes = std::fs::read(&segment).expect("read");
    let last = bytes.len() - 3;
    bytes[last] ^= 0x5a;
    std::fs::write(&segment, &bytes).expect("write");

    let (high, received) = read_back(dir.path(), &topic).await;
    assert!(
        (950..1_000).contains(&high),
        "only the corrupt batch is dropped: {high}"
    );
    assert_eq!(received[&0].len(), high as usize);
}
