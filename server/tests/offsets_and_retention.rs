//! ListOffsets by timestamp, and retention by time and by size.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use steadfast_testkit::*;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Produces `count` messages with timestamps `first_ts + 10 * i`, flushing every `per_batch`
/// messages so the partition holds many batches (and index entries).
fn produce_timed(
    bootstrap: &str,
    topic: &str,
    count: usize,
    first_ts: i64,
    per_batch: usize,
    codec: &str,
) {
    let producer = logged_producer(
        bootstrap,
        &[
            ("acks", "all"),
            ("linger.ms", "5"),
            ("compression.type", codec),
        ],
    );
    for i in 0..count {
        let payload = format!("timed message {i:06} {}", "p".repeat(100));
        send_record(
            &producer,
            BaseRecord::with_opaque_to(topic, Box::new(i))
                .payload(payload.as_bytes())
                .timestamp(first_ts + 10 * i as i64),
        );
        if (i + 1).is_multiple_of(per_batch) {
            producer.flush(Duration::from_secs(10)).expect("flush");
        }
    }
    let delivered = delivered_ok(&producer);
    for i in 0..count {
        assert_eq!(delivered[&i], (0, i as i64));
    }
}

fn offset_for_time(bootstrap: &str, topic: &str, ts: i64) -> Offset {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", unique_topic("times"))
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(ts))
        .expect("tpl");
    let result = consumer
        .offsets_for_times(tpl, Duration::from_secs(10))
        .expect("offsets for times");
    let elem = result
        .find_partition(topic, 0)
        .expect("partition in result");
    assert!(
        elem.error().is_ok(),
        "ListOffsets error: {:?}",
        elem.error()
    );
    elem.offset()
}

async fn list_offsets_by_timestamp(codec: &'static str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let topic = unique_topic("times");
    tokio::task::spawn_blocking(move || {
        let base = now_ms() - 3_600_000;
        produce_timed(&bootstrap, &topic, 2_000, base, 37, codec);
        // Exact timestamps, timestamps between records, the first and the last.
        for i in [0usize, 1, 36, 37, 38, 500, 1_234, 1_999] {
            let exact = base + 10 * i as i64;
            assert_eq!(
                offset_for_time(&bootstrap, &topic, exact),
                Offset::Offset(i as i64),
                "exact ts of {i}"
            );
            if i > 0 {
                assert_eq!(
                    offset_for_time(&bootstrap, &topic, exact - 5),
                    Offset::Offset(i as i64),
                    "ts just before {i}"
                );
            }
        }
        assert_eq!(
            offset_for_time(&bootstrap, &topic, 0),
            Offset::Offset(0),
            "before everything"
        );
        assert_eq!(
            offset_for_time(&bootstrap, &topic, base + 10 * 2_000),
            Offset::End,
            "after everything: no such offset"
        );
    })
    .await
    .expect("client");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_timestamp_returns_first_offset_at_or_after() {
    list_offsets_by_timestamp("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_timestamp_looks_inside_compressed_batches() {
    list_offsets_by_timestamp("lz4").await;
}

fn log_files(dir: &std::path::Path, topic: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("topics").join(topic).join("0"))
        .expect("partition dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_retention_deletes_whole_old_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let topic = unique_topic("retention-time");
    create_topic(
        &bootstrap,
        &topic,
        1,
        &[("segment.bytes", "8192"), ("retention.ms", "600000")],
    )
    .await;
    let (b, t) = (bootstrap.clone(), topic.clone());
    // Old records (two hours ago) fill several segments.
    tokio::task::spawn_blocking(move || {
        produce_timed(&b, &t, 600, now_ms() - 7_200_000, 20, "none")
    })
    .await
    .expect("producer");
    let before = server.segment_base_offsets(&topic, 0).expect("partition");
    assert!(before.len() >= 4, "several segments: {before:?}");
    assert_eq!(log_files(dir.path(), &topic).len(), before.len());

    let deleted = server.enforce_retention_now().expect("retention");
    let after = server.segment_base_offsets(&topic, 0).expect("partition");
    assert_eq!(
        deleted,
        before.len() - 1,
        "every old segment but the active one"
    );
    assert_eq!(
        after,
        vec![*before.last().expect("active")],
        "the active segment stays"
    );
    assert_eq!(
        log_files(dir.path(), &topic),
        vec![format!("{:020}.log", after[0])]
    );

    let (b, t, start) = (bootstrap.clone(), topic.clone(), after[0]);
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            watermarks(&b, &t, 0),
            (start, 600),
            "log start moved to the active segment"
        );
        let received = consume(
            &b,
            &t,
            1,
            Offset::Beginning,
            (600 - start) as usize,
            Duration::from_secs(30),
        );
        let offsets: Vec<i64> = received[&0].iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (start..600).collect::<Vec<_>>(),
            "whole segments kept, nothing partial"
        );
    })
    .await
    .expect("consumer");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_retention_keeps_the_partition_under_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let topic = unique_topic("retention-size");
    create_topic(
        &bootstrap,
        &topic,
        1,
        &[
            ("segment.bytes", "8192"),
            ("retention.bytes", "20000"),
            ("retention.ms", "-1"),
        ],
    )
    .await;
    let (b, t) = (bootstrap.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce_timed(&b, &t, 600, now_ms(), 20, "none"))
        .await
        .expect("producer");
    let before = server.segment_base_offsets(&topic, 0).expect("partition");
    let deleted = server.enforce_retention_now().expect("retention");
    let after = server.segment_base_offsets(&topic, 0).expect("partition");
    assert!(deleted > 0, "something was over the limit");
    assert_eq!(after.len() + deleted, before.len());
    assert_eq!(
        after[..],
        before[deleted..],
        "the oldest segments went first"
    );
    let sizes: HashMap<String, u64> =
        std::fs::read_dir(dir.path().join("topics").join(&topic).join("0"))
            .expect("dir")
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let len = e.metadata().ok()?.len();
                name.ends_with(".log").then_some((name, len))
            })
            .collect();
    let total: u64 = sizes.values().sum();
    let active = sizes[&format!("{:020}.log", after.last().expect("active"))];
    assert!(
        total - active < 20_000,
        "sealed segments fit the limit: {total} total"
    );
    // Recent data is not touched by time retention (retention.ms=-1) and a second pass
    // deletes nothing more.
    assert_eq!(server.enforce_retention_now().expect("retention"), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_retention_task_deletes_expired_segments_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server_on(dir.path())
        .retention_check_interval(Duration::from_millis(100))
        .start()
        .await
        .expect("server");
    let bootstrap = server.bootstrap_servers();
    let topic = unique_topic("retention-task");
    create_topic(
        &bootstrap,
        &topic,
        1,
        &[("segment.bytes", "8192"), ("retention.ms", "60000")],
    )
    .await;
    let (b, t) = (bootstrap.clone(), topic.clone());
    tokio::task::spawn_blocking(move || {
        produce_timed(&b, &t, 300, now_ms() - 7_200_000, 20, "none")
    })
    .await
    .expect("producer");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let bases = server.segment_base_offsets(&topic, 0).expect("partition");
        if bases.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention never ran: {bases:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling interval
    }
    server.shutdown().await;
}
