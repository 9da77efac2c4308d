//! Disk errors, end to end: a server child process (`child_server`) whose file-size limit
//! makes segment writes fail with EFBIG once the log reaches it. Real librdkafka produces
//! with `acks=all` until the limit is hit; the failures must be KAFKA_STORAGE_ERROR, every
//! acknowledged message must be served exactly once (no torn batch), and the server must
//! accept produces again — with contiguous offsets — once the limit is lifted in the same
//! process, or after a restart without it. Offset commits on a full disk are refused with
//! an error code on an open connection, and work again once there is room.

use std::time::Duration;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Offset;
use steadfast_testkit::*;

use crate::child_server::ServerProcess;

/// File-size limit of the child: the segment file cannot grow past it.
const FSIZE_LIMIT: u64 = 64 * 1024;
/// Bytes of each message's payload.
const PAYLOAD_BYTES: usize = 1000;

fn payload_of(i: usize) -> Vec<u8> {
    let mut p = format!("message-{i:06}|").into_bytes();
    p.extend((0..PAYLOAD_BYTES - p.len()).map(|j| b'a' + ((i + j) % 26) as u8));
    p
}

fn producer(bootstrap: &str) -> FutureProducer {
    client_config(bootstrap)
        .set("acks", "all")
        .set("retries", "0")
        .set("enable.idempotence", "false")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer")
}

/// Produces message `i` and waits for its delivery report.
async fn produce(producer: &FutureProducer, topic: &str, i: usize) -> Result<i64, KafkaError> {
    let payload = payload_of(i);
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic).payload(&payload),
            Duration::from_secs(20),
        )
        .await
        .map(|delivery| delivery.offset)
        .map_err(|(e, _)| e)
}

fn assert_storage_error(result: Result<i64, KafkaError>, what: &str) {
    match result {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::KafkaStorageError)) => {}
        other => panic!("{what}: expected KAFKA_STORAGE_ERROR, got {other:?}"),
    }
}

/// Produces until the disk limit refuses a message; returns the indexes of the
/// acknowledged messages, in offset order (offset `k` holds `acked[k]`).
async fn produce_until_full(producer: &FutureProducer, topic: &str) -> Vec<usize> {
    let mut acked = Vec::new();
    for i in 0.. {
        assert!(i < 10_000, "the file-size limit was never hit");
        match produce(producer, topic, i).await {
            Ok(offset) => {
                assert_eq!(offset, acked.len() as i64, "offsets are contiguous");
                acked.push(i);
            }
            Err(e) => {
                assert_storage_error(Err(e), "the first refused produce");
                break;
            }
        }
    }
    assert!(
        acked.len() as u64 > FSIZE_LIMIT / PAYLOAD_BYTES as u64 / 2,
        "only {} messages fit under a {FSIZE_LIMIT}-byte limit",
        acked.len()
    );
    // The disk stays full: every further produce is refused the same way.
    for i in 0..3 {
        assert_storage_error(
            produce(producer, topic, 100_000 + i).await,
            "a produce while the disk is full",
        );
    }
    acked
}

/// Reads the whole partition (checking CRCs) and asserts it holds exactly `expected`, in
/// order from offset 0.
fn assert_log_is(bootstrap: &str, topic: &str, expected: &[usize]) {
    let (low, high) = watermarks(bootstrap, topic, 0);
    assert_eq!(
        (low, high),
        (0, expected.len() as i64),
        "watermarks match the acknowledged messages"
    );
    let received = consume_with(
        bootstrap,
        topic,
        1,
        Offset::Beginning,
        expected.len(),
        Duration::from_secs(60),
        &[("check.crcs", "true")],
    );
    let records = received.get(&0).cloned().unwrap_or_default();
    assert_eq!(records.len(), expected.len(), "each message exactly once");
    for (k, (record, &i)) in records.iter().zip(expected).enumerate() {
        assert_eq!(record.offset, k as i64, "offset of record {k}");
        assert_eq!(
            record.payload.as_deref(),
            Some(&payload_of(i)[..]),
            "payload at offset {k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_produces_with_storage_errors_and_serves_again_once_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::spawn(dir.path(), Some(FSIZE_LIMIT));
    let bootstrap = server.bootstrap.clone();
    let topic = unique_topic("disk-full");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let producer = producer(&bootstrap);

    let mut acked = produce_until_full(&producer, &topic).await;
    let reader = (bootstrap.clone(), topic.clone(), acked.clone());
    tokio::task::spawn_blocking(move || assert_log_is(&reader.0, &reader.1, &reader.2))
        .await
        .expect("reader");

    server.lift_limit();
    for i in 200_000..200_020 {
        let offset = produce(&producer, &topic, i)
            .await
            .expect("produce once the limit is lifted");
        assert_eq!(offset, acked.len() as i64, "offsets stay contiguous");
        acked.push(i);
    }
    tokio::task::spawn_blocking(move || assert_log_is(&bootstrap, &topic, &acked))
        .await
        .expect("reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_the_disk_filled_up_serves_every_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::spawn(dir.path(), Some(FSIZE_LIMIT));
    let topic = unique_topic("disk-full-restart");
    create_topic(&server.bootstrap, &topic, 1, &[]).await;
    let mut acked = produce_until_full(&producer(&server.bootstrap), &topic).await;
    server.crash();

    let server = ServerProcess::spawn(dir.path(), None);
    let bootstrap = server.bootstrap.clone();
    let reader = (bootstrap.clone(), topic.clone(), acked.clone());
    tokio::task::spawn_blocking(move || assert_log_is(&reader.0, &reader.1, &reader.2))
        .await
        .expect("reader");
    let producer = producer(&bootstrap);
    for i in 200_000..200_020 {
        let offset = produce(&producer, &topic, i)
            .await
            .expect("produce after the restart");
        assert_eq!(offset, acked.len() as i64, "offsets stay contiguous");
        acked.push(i);
    }
    tokio::task::spawn_blocking(move || assert_log_is(&bootstrap, &topic, &acked))
        .await
        .expect("reader");
    drop(server);
}

/// COORDINATOR_NOT_AVAILABLE: the retriable answer to a commit the offsets log refused.
const COORDINATOR_NOT_AVAILABLE: i16 = 15;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// Commits `offset` for partition 0 of `topic` (no membership) with 1 KB of metadata, so
/// the offsets log fills up fast; returns the error code.
fn commit(client: &mut RawClient, group: &str, topic: &str, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(s(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)
                .with_committed_metadata(Some(s(&"m".repeat(1000))))])]);
    client.call(&request, 8).topics[0].partitions[0].error_code
}

fn committed(client: &mut RawClient, group: &str, topic: &str) -> i64 {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partition_indexes(vec![0])]));
    client.call(&request, 7).topics[0].partitions[0].committed_offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_commits_on_a_full_disk_are_refused_with_an_error_code_and_work_again_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::spawn(dir.path(), Some(FSIZE_LIMIT));
    let topic = unique_topic("disk-full-commits");
    create_topic(&server.bootstrap, &topic, 1, &[]).await;
    let group = unique_topic("disk-full-group");
    let addr = server.bootstrap.parse().expect("bootstrap address");
    let (group_c, topic_c) = (group.clone(), topic.clone());
    let (mut client, last_ok) = tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        let mut last_ok = None;
        for offset in 0..10_000 {
            match commit(&mut client, &group_c, &topic_c, offset) {
                0 => last_ok = Some(offset),
                code => {
                    assert_eq!(code, COORDINATOR_NOT_AVAILABLE, "a refused commit");
                    break;
                }
            }
        }
        let last_ok = last_ok.expect("some commits fit under the limit");
        assert!(last_ok < 9_999, "the file-size limit was never hit");
        // Same connection: the refused commit changed nothing.
        assert_eq!(committed(&mut client, &group_c, &topic_c), last_ok);
        (client, last_ok)
    })
    .await
    .expect("committer");

    server.lift_limit();
    let (group_c, topic_c) = (group.clone(), topic.clone());
    tokio::task::spawn_blocking(move || {
        assert_eq!(commit(&mut client, &group_c, &topic_c, last_ok + 100), 0);
        assert_eq!(committed(&mut client, &group_c, &topic_c), last_ok + 100);
    })
    .await
    .expect("committer");
    server.crash();

    let server = ServerProcess::spawn(dir.path(), None);
    let addr = server.bootstrap.parse().expect("bootstrap address");
    let after_restart = tokio::task::spawn_blocking(move || {
        committed(&mut RawClient::connect(addr), &group, &topic)
    })
    .await
    .expect("reader");
    assert_eq!(
        after_restart,
        last_ok + 100,
        "the acknowledged commit survived"
    );
}
