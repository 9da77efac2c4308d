//! A decompression bomb — a zstd batch of a few dozen KB whose records inflate to 1 GiB —
//! produced over TCP and then looked up by timestamp: the server stays up, answers with an
//! error code instead of inflating the batch, keeps its memory bounded, and serves normal
//! traffic afterwards.

use std::io::Write;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Offset;
use steadfast_testkit::*;

/// Records of the bomb, each with a value of [`VALUE_LEN`] zero bytes: 1 GiB in all.
const RECORDS: usize = 1024;
const VALUE_LEN: usize = 1024 * 1024;
/// Timestamp of every record; the header claims a newer maximum, so a lookup between the two
/// has to read every record.
const RECORD_TS: i64 = 1_700_000_000_000;
const CLAIMED_MAX_TS: i64 = RECORD_TS + 1_000;
/// Growth of the process's peak resident memory tolerated across the bomb's requests.
const RSS_BOUND_BYTES: u64 = 256 * 1024 * 1024;

fn put_varint(buf: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

/// A v2 batch with zstd-compressed records of 1 GiB of zeros, compressed as a stream.
fn zstd_bomb() -> Bytes {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd encoder");
    let zeros = vec![0u8; VALUE_LEN];
    for i in 0..RECORDS {
        let mut fields = Vec::new();
        fields.push(0u8); // attributes
        put_varint(&mut fields, 0); // timestamp delta
        put_varint(&mut fields, i as i64); // offset delta
        put_varint(&mut fields, -1); // null key
        put_varint(&mut fields, VALUE_LEN as i64);
        let mut record = Vec::new();
        // Length: the fields above, the value, and the header count (one byte).
        put_varint(&mut record, (fields.len() + VALUE_LEN + 1) as i64);
        record.extend_from_slice(&fields);
        encoder.write_all(&record).expect("compress");
        encoder.write_all(&zeros).expect("compress");
        encoder.write_all(&[0]).expect("compress"); // no headers
    }
    let payload = encoder.finish().expect("compress");

    let mut batch = BytesMut::new();
    batch.put_i64(0); // base offset
    batch.put_i32((49 + payload.len()) as i32); // batch length
    batch.put_i32(-1); // partition leader epoch
    batch.put_i8(2); // magic
    batch.put_u32(0); // crc, set below
    let crc_start = batch.len();
    batch.put_i16(4); // attributes: zstd, create time
    batch.put_i32(RECORDS as i32 - 1); // last offset delta
    batch.put_i64(RECORD_TS);
    batch.put_i64(CLAIMED_MAX_TS);
    batch.put_i64(-1); // producer id
    batch.put_i16(-1); // producer epoch
    batch.put_i32(-1); // base sequence
    batch.put_i32(RECORDS as i32);
    batch.put_slice(&payload);
    let crc = crc32c::crc32c(&batch[crc_start..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch.freeze()
}

/// Peak resident set size of this process (server included), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kb * 1024
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn list_offset_by_time(client: &mut RawClient, topic: &str, timestamp: i64) -> (i16, i64) {
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])]);
    let response = client.call(&request, 6);
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_bomb_is_refused_without_inflating_it_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let addr = server.local_addr();
    let topic = unique_topic("bomb");
    create_topic(&bootstrap, &topic, 2, &[]).await;

    tokio::task::spawn_blocking(move || {
        let bomb = zstd_bomb();
        assert!(
            bomb.len() < 256 * 1024,
            "the bomb should be small: {} bytes",
            bomb.len()
        );
        let rss_before = peak_rss();

        let mut client = RawClient::connect(addr);
        let produce = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name(&topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(bomb))])]);
        let response = client.call(&produce, 9);
        let p = &response.responses[0].partition_responses[0];
        // Produce stores batches as sent, compressed: the bomb is either refused as corrupt
        // or stored at offset 0 without being inflated.
        assert!(
            p.error_code == 0 || p.error_code == ResponseError::CorruptMessage.code(),
            "produce answered error {}",
            p.error_code
        );
        let stored = p.error_code == 0;

        // A lookup between the records' time and the claimed maximum reads every record.
        let (code, offset) = list_offset_by_time(&mut client, &topic, RECORD_TS + 500);
        if stored {
            assert_eq!(
                code,
                ResponseError::CorruptMessage.code(),
                "a lookup through the bomb must be refused, got offset {offset}"
            );
        } else {
            assert_eq!((code, offset), (0, -1));
        }
        // A lookup that the first record answers needs no more than its own bytes.
        let (code, offset) = list_offset_by_time(&mut client, &topic, RECORD_TS);
        if stored {
            assert_eq!((code, offset), (0, 0));
        }

        let grown = peak_rss().saturating_sub(rss_before);
        assert!(
            grown < RSS_BOUND_BYTES,
            "peak RSS grew by {} MiB handling the bomb",
            grown / (1024 * 1024)
        );

        // Normal traffic still works: produce to and consume from the other partition.
        let producer: BaseProducer = client_config(&bootstrap)
            .set("compression.type", "zstd")
            .create()
            .expect("producer");
        for i in 0..10 {
            let value = format!("after-{i}");
            producer
                .send(
                    BaseRecord::<(), str>::to(&topic)
                        .partition(1)
                        .payload(value.as_str()),
                )
                .expect("send");
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
        let mut config = client_config(&bootstrap);
        config
            .set("group.id", unique_topic("bomb-reader"))
            .set("enable.auto.commit", "false");
        let consumer: rdkafka::consumer::BaseConsumer = config.create().expect("consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 1, Offset::Beginning)
            .expect("assignment");
        rdkafka::consumer::Consumer::assign(&consumer, &assignment).expect("assign");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut values = Vec::new();
        while values.len() < 10 && std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.expect("consume");
                let payload = rdkafka::Message::payload(&message).expect("payload");
                values.push(String::from_utf8_lossy(payload).into_owned());
            }
        }
        let expected: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
        assert_eq!(values, expected);
        // And the bomb's partition still answers the simple lookups.
        let mut client = RawClient::connect(addr);
        let (code, _) = list_offset_by_time(&mut client, &topic, -1);
        assert_eq!(code, 0);
    })
    .await
    .expect("client thread");
    server.shutdown().await;
}
