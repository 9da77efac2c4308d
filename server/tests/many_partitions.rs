//! Ten thousand partitions under an open-file limit of 1,024: a server child process
//! (`child_server --nofile-limit 1024`, soft and hard, so it cannot raise it) holds a topic
//! of 10,000 partitions and takes `acks=-1` produces to a sample of them spread over the
//! whole range (more partitions than it may keep files open for), is killed with SIGKILL
//! in the middle of them, and starts again on the same data. Every acknowledged batch must
//! be there, whole and in order, every partition must hold a prefix of what was sent, and
//! the restarted server must take produces again at the next offsets.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use steadfast_server::client::Client;
use steadfast_testkit::batch::BatchSpec;
use steadfast_testkit::*;

use crate::child_server::ServerProcess;

/// Partitions of the topic: the most a topic may have.
const PARTITIONS: i32 = 10_000;
/// Every this many-th partition is produced to: 1,000 partitions across the whole range,
/// more than the 512 segment files the server keeps open under a limit of 1,024.
const SAMPLE_EVERY: i32 = 10;
/// Records per batch; each produce request carries one batch for every sampled partition.
const RECORDS_PER_BATCH: usize = 2;
/// Requests acknowledged before the server is killed.
const ACKED_BEFORE_KILL: usize = 4;
/// How long any one step may take.
const DEADLINE: Duration = Duration::from_secs(60);

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn sampled() -> impl Iterator<Item = i32> {
    (0..PARTITIONS).step_by(SAMPLE_EVERY as usize)
}

/// The value of record `i` of the batch of request `round` to `partition`.
fn value_of(partition: i32, round: usize, i: usize) -> Vec<u8> {
    format!("p{partition}-r{round}-{i}").into_bytes()
}

/// One `acks=-1` produce request: a batch for every sampled partition, its `round_of(p)`-th.
fn produce_request(topic: &str, round_of: impl Fn(i32) -> usize) -> ProduceRequest {
    let partition_data = sampled()
        .map(|p| {
            let round = round_of(p);
            let batch = BatchSpec::numbered(
                RECORDS_PER_BATCH,
                1_700_000_000_000 + round as i64,
                |i| format!("k{i}").into_bytes(),
                |i| value_of(p, round, i),
            );
            PartitionProduceData::default()
                .with_index(p)
                .with_records(Some(batch.encode()))
        })
        .collect();
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(partition_data)])
}

/// Sends `acks=-1` produce requests one after another until one fails (the server was
/// killed) or `stop` is set, counting those sent and those acknowledged (each with every
/// partition's base offset checked).
fn produce_until_killed(addr: &str, topic: &str, acked: &AtomicCounter, stop: &AtomicBool) {
    let Ok(mut client) = Client::connect(addr, Duration::from_secs(10)) else {
        return;
    };
    for round in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        acked.sent.store(round + 1, Ordering::SeqCst);
        let Ok(response) = client.call(&produce_request(topic, |_| round), 7) else {
            return;
        };
        for p in &response.responses[0].partition_responses {
            assert_eq!(p.error_code, 0, "produce to partition {}", p.index);
            assert_eq!(
                p.base_offset,
                (round * RECORDS_PER_BATCH) as i64,
                "base offset of round {round} in partition {}",
                p.index
            );
        }
        acked.acked.store(round + 1, Ordering::SeqCst);
    }
}

/// Requests sent and acknowledged by the producing thread.
#[derive(Debug, Default)]
struct AtomicCounter {
    sent: std::sync::atomic::AtomicUsize,
    acked: std::sync::atomic::AtomicUsize,
}

/// The log end offset of every sampled partition, in one ListOffsets request.
fn log_ends(client: &mut RawClient, topic: &str) -> BTreeMap<i32, i64> {
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(
                sampled()
                    .map(|p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(p)
                            .with_timestamp(-1)
                    })
                    .collect(),
            )]);
    let response = client.call(&request, 1);
    response.topics[0]
        .partitions
        .iter()
        .map(|p| {
            assert_eq!(
                p.error_code, 0,
                "ListOffsets of partition {}",
                p.partition_index
            );
            (p.partition_index, p.offset)
        })
        .collect()
}

/// Asserts each batch's CRC-32C (over everything after the CRC field).
fn assert_crcs(mut records: Bytes, partition: i32) {
    while records.len() >= 61 {
        let len = u32::from_be_bytes(records[8..12].try_into().expect("4 bytes")) as usize + 12;
        let stored = u32::from_be_bytes(records[17..21].try_into().expect("4 bytes"));
        assert_eq!(
            crc32c::crc32c(&records[21..len]),
            stored,
            "CRC of a batch of partition {partition}"
        );
        records.advance(len);
    }
    assert!(records.is_empty(), "partition {partition}: a torn batch");
}

/// Reads every sampled partition from offset 0 and returns its records' (offset, value).
fn read_all(client: &mut RawClient, topic: &str) -> BTreeMap<i32, Vec<(i64, Vec<u8>)>> {
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(64 * 1024 * 1024)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(
                sampled()
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1024 * 1024)
                    })
                    .collect(),
            )]);
    let response = client.call(&request, 4);
    let mut read = BTreeMap::new();
    for partition in &response.responses[0].partitions {
        let p = partition.partition_index;
        assert_eq!(partition.error_code, 0, "fetch of partition {p}");
        let mut bytes = partition.records.clone().unwrap_or_default();
        assert_crcs(bytes.clone(), p);
        let batches = RecordBatchDecoder::decode_all(&mut bytes)
            .unwrap_or_else(|e| panic!("partition {p}: {e}"));
        let records = batches
            .into_iter()
            .flat_map(|b| b.records)
            .map(|r| (r.offset, r.value.map(|v| v.to_vec()).unwrap_or_default()))
            .collect();
        read.insert(p, records);
    }
    read
}

#[test]
fn ten_thousand_partitions_within_1024_descriptors_survive_sigkill_during_acks_all_produce() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit: [&OsStr; 2] = ["--nofile-limit".as_ref(), "1024".as_ref()];
    let server = ServerProcess::spawn_with(dir.path(), &limit);
    let topic = unique_topic("many-partitions");
    let mut admin = RawClient::connect(server.addr());
    let created = admin.call(
        &CreateTopicsRequest::default()
            .with_timeout_ms(DEADLINE.as_millis() as i32)
            .with_topics(vec![CreatableTopic::default()
                .with_name(name(&topic))
                .with_num_partitions(PARTITIONS)
                .with_replication_factor(1)]),
        4,
    );
    assert_eq!(created.topics[0].error_code, 0, "create the topic");

    // Produce with acks=-1 on a thread of its own; kill the server once a few requests
    // were acknowledged, while the next one is in flight.
    let counter = Arc::new(AtomicCounter::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (addr, topic) = (server.bootstrap.clone(), topic.clone());
        let (counter, stop) = (counter.clone(), stop.clone());
        std::thread::spawn(move || produce_until_killed(&addr, &topic, &counter, &stop))
    };
    let started = Instant::now();
    while counter.acked.load(Ordering::SeqCst) < ACKED_BEFORE_KILL {
        assert!(
            !producer.is_finished(),
            "the producer stopped after {} requests",
            counter.acked.load(Ordering::SeqCst)
        );
        assert!(
            started.elapsed() < DEADLINE,
            "only {} acks=-1 requests acknowledged in {DEADLINE:?}",
            counter.acked.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.crash();
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("the producing thread");
    let (sent, acked) = (
        counter.sent.load(Ordering::SeqCst),
        counter.acked.load(Ordering::SeqCst),
    );
    assert!(acked >= ACKED_BEFORE_KILL);

    let server = ServerProcess::spawn_with(dir.path(), &limit);
    let mut client = RawClient::connect(server.addr());
    let ends = log_ends(&mut client, &topic);
    assert_eq!(ends.len(), sampled().count(), "every sampled partition");
    let read = read_all(&mut client, &topic);
    for (&p, &end) in &ends {
        let (min, max) = (
            (acked * RECORDS_PER_BATCH) as i64,
            (sent * RECORDS_PER_BATCH) as i64,
        );
        assert!(
            (min..=max).contains(&end),
            "partition {p}: log end {end}, acknowledged up to {min}, sent up to {max}"
        );
        assert_eq!(
            end % RECORDS_PER_BATCH as i64,
            0,
            "partition {p}: whole batches"
        );
        let records = &read[&p];
        assert_eq!(
            records.len() as i64,
            end,
            "partition {p}: every record read"
        );
        for (k, (offset, value)) in records.iter().enumerate() {
            let (round, i) = (k / RECORDS_PER_BATCH, k % RECORDS_PER_BATCH);
            assert_eq!(*offset, k as i64, "partition {p}: contiguous offsets");
            assert_eq!(
                value,
                &value_of(p, round, i),
                "partition {p}, offset {k}: what was sent, in order"
            );
        }
    }
    // Partitions that were never written to are there, empty.
    let mut untouched = RawClient::connect(server.addr());
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(&topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(PARTITIONS - 1)
                .with_timestamp(-1)])]);
    let response = untouched.call(&request, 1);
    let last = &response.topics[0].partitions[0];
    assert_eq!((last.error_code, last.offset), (0, 0), "the last partition");

    // The restarted server takes produces again, at each partition's log end (a request
    // in flight at the kill may have reached some of its partitions and not others).
    let next_round = |p: i32| ends[&p] as usize / RECORDS_PER_BATCH;
    let response = client.call(&produce_request(&topic, next_round), 7);
    for p in &response.responses[0].partition_responses {
        assert_eq!(
            p.error_code, 0,
            "produce after the restart, partition {}",
            p.index
        );
        assert_eq!(
            p.base_offset, ends[&p.index],
            "next offset of partition {}",
            p.index
        );
    }
    server.stop();
}
