//! The server speaking the protocol directly: bad input never crashes it, errors come back as
//! Kafka error codes, idempotent producers are deduplicated, and fetch long-polls correctly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rand::{Rng, SeedableRng};
use rdkafka::producer::BaseRecord;
use rdkafka::Offset;
use steadfast_testkit::batch::BatchSpec;
use steadfast_testkit::*;

use crate::support::{temp_server, with_clients};

const PRODUCE_V: i16 = 9;
const FETCH_V: i16 = 12;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// One v2 batch of `count` records (keys `key-{i}`, values of `value_len` bytes) from
/// producer `producer_id` (none if negative) at `epoch`, starting at `first_sequence`.
fn batch(
    count: usize,
    producer_id: i64,
    epoch: i16,
    first_sequence: i32,
    value_len: usize,
) -> Bytes {
    let spec = BatchSpec::numbered(
        count,
        1_700_000_000_000,
        |i| format!("key-{i}").into_bytes(),
        |_| vec![b'v'; value_len],
    );
    if producer_id >= 0 {
        spec.from_producer(producer_id, epoch, first_sequence)
            .encode()
    } else {
        spec.encode()
    }
}

fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

/// Produces and returns (error code, base offset) of the single partition.
fn produce(client: &mut RawClient, topic: &str, records: Bytes, acks: i16) -> (i16, i64) {
    let response = client.call(&produce_request(topic, 0, records, acks), PRODUCE_V);
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn latest_offset(client: &mut RawClient, topic: &str) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let response = client.call(&request, 6);
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

fn create_topic(
    client: &mut RawClient,
    topic: &str,
    replication: i16,
    configs: &[(&str, &str)],
) -> i16 {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(5_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(1)
            .with_replication_factor(replication)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string((*k).to_owned()))
                            .with_value(Some(StrBytes::from_string((*v).to_owned())))
                    })
                    .collect(),
            )]);
    client.call(&request, 7).topics[0].error_code
}

fn fetch_request(
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
    partition_max: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(50 * 1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max)])])
}

/// The record set of the first partition of a fetch response.
fn fetched_records(response: &FetchResponse) -> Bytes {
    response.responses[0].partitions[0]
        .records
        .clone()
        .expect("records")
}

/// Record batch sizes in a fetched record set.
fn batch_sizes(records: &Bytes) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut pos = 0;
    while pos + 12 <= records.len() {
        let len = i32::from_be_bytes(records[pos + 8..pos + 12].try_into().expect("4 bytes"))
            as usize
            + 12;
        assert!(pos + len <= records.len(), "a partial batch was served");
        sizes.push(len);
        pos += len;
    }
    assert_eq!(pos, records.len(), "records end on a batch boundary");
    sizes
}

fn expect_closed(client: &mut RawClient, what: &str) {
    assert!(
        client.is_closed_by_server(),
        "server should close the connection after {what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_leave_the_server_serving_a_well_behaved_client() {
    let (_dir, server) = temp_server(|server| server.max_request_bytes(1024 * 1024)).await;
    let bootstrap = server.bootstrap_servers();
    with_clients(server, move |addr| {
        // A client connected before the trouble starts, and still served after it.
        let mut bystander = RawClient::connect(addr);
        assert_eq!(
            bystander.call(&ApiVersionsRequest::default(), 3).error_code,
            0
        );

        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for round in 0..20 {
            let mut c = RawClient::connect(addr);
            let body: Vec<u8> = (0..96).map(|_| rng.random()).collect();
            let mut frame = 96i32.to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            c.send_raw(&frame).expect("send");
            expect_closed(&mut c, &format!("random bytes (round {round})"));
        }

        // A valid Produce header followed by garbage instead of a body.
        let mut c = RawClient::connect(addr);
        let mut frame = c.frame(&ProduceRequest::default(), PRODUCE_V);
        let garbage: Vec<u8> = (0..64).map(|_| rng.random()).collect();
        frame.truncate(4 + 4 + 4 + 2 + 8 + 1); // length, key+version, correlation, client id
        frame.extend_from_slice(&garbage);
        let len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        c.send_raw(&frame).expect("send");
        expect_closed(&mut c, "a garbage Produce body");

        // A tiny request claiming an array of 2^31 - 1 elements must not make the server
        // try to allocate for them.
        let mut c = RawClient::connect(addr);
        let mut frame = c.frame(&MetadataRequest::default().with_topics(Some(vec![])), 1);
        let len = frame.len();
        frame[len - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
        c.send_raw(&frame).expect("send");
        expect_closed(&mut c, "an array length far beyond the request");

        let mut c = RawClient::connect(addr);
        c.send_raw(&i32::MAX.to_be_bytes()).expect("send");
        expect_closed(&mut c, "a length prefix above the maximum");

        let mut c = RawClient::connect(addr);
        c.send_raw(&(-5i32).to_be_bytes()).expect("send");
        expect_closed(&mut c, "a negative length prefix");

        let mut c = RawClient::connect(addr);
        c.send_raw(&[0, 0, 0, 5, 0, 3, 0, 1, 0]).expect("send");
        expect_closed(&mut c, "a truncated header");

        let mut c = RawClient::connect(addr);
        c.send_raw(&[0, 0, 0, 100, 0, 3, 0]).expect("send");
        c.stream_shutdown_write();
        expect_closed(&mut c, "a frame cut short by the client");

        let mut c = RawClient::connect(addr);
        let mut frame = c.frame(&MetadataRequest::default(), 12);
        frame[6..8].copy_from_slice(&99i16.to_be_bytes());
        c.send_raw(&frame).expect("send");
        expect_closed(&mut c, "an unknown Metadata version");

        let mut c = RawClient::connect(addr);
        let mut frame = c.frame(&ApiVersionsRequest::default(), 0);
        frame[4..6].copy_from_slice(&1000i16.to_be_bytes());
        c.send_raw(&frame).expect("send");
        expect_closed(&mut c, "an unknown API key");

        // An ApiVersions version the server does not speak gets UNSUPPORTED_VERSION and the
        // served ranges, and the connection stays usable.
        let mut c = RawClient::connect(addr);
        let mut frame = c.frame(&ApiVersionsRequest::default(), 3);
        frame[6..8].copy_from_slice(&99i16.to_be_bytes());
        c.send_raw(&frame).expect("send");
        let response = c.receive::<ApiVersionsRequest>(0);
        assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
        assert!(response
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Fetch as i16));
        assert_eq!(c.call(&ApiVersionsRequest::default(), 3).error_code, 0);

        // The bystander is still served, and so is a real client.
        let metadata = bystander.call(&MetadataRequest::default().with_topics(None), 12);
        assert_eq!(metadata.brokers.len(), 1);
        let topic = unique_topic("after-garbage");
        let producer = logged_producer(&bootstrap, &[("acks", "all")]);
        for i in 0..100usize {
            let payload = format!("ok {i}");
            send_record(
                &producer,
                BaseRecord::with_opaque_to(&topic, Box::new(i)).payload(payload.as_bytes()),
            );
        }
        assert_eq!(delivered_ok(&producer).len(), 100);
        let received = consume(
            &bootstrap,
            &topic,
            1,
            Offset::Beginning,
            100,
            Duration::from_secs(30),
        );
        assert_eq!(received[&0].len(), 100);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_get_kafka_error_codes_and_store_nothing() {
    let (_dir, server) = temp_server(|server| server.auto_create_topics(false)).await;
    with_clients(server, move |addr| {
        let mut c = RawClient::connect(addr);
        let topic = unique_topic("errors");

        let metadata = c.call(
            &MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(name(&topic)))
                ]))
                .with_allow_auto_topic_creation(true),
            12,
        );
        assert_eq!(
            metadata.topics[0].error_code, 3,
            "no auto-create when it is off"
        );
        assert_eq!(
            produce(&mut c, &topic, batch(3, -1, -1, -1, 10), 1).0,
            3,
            "UNKNOWN_TOPIC_OR_PARTITION"
        );

        assert_eq!(
            create_topic(&mut c, "bad/name", 1, &[]),
            17,
            "INVALID_TOPIC_EXCEPTION"
        );
        assert_eq!(
            create_topic(&mut c, &topic, 3, &[]),
            38,
            "INVALID_REPLICATION_FACTOR"
        );
        assert_eq!(
            create_topic(&mut c, &topic, 1, &[("no.such.config", "1")]),
            40,
            "INVALID_CONFIG"
        );
        assert_eq!(
            create_topic(&mut c, &topic, -1, &[("max.message.bytes", "2048")]),
            0
        );
        assert_eq!(
            create_topic(&mut c, &topic, 1, &[]),
            36,
            "TOPIC_ALREADY_EXISTS"
        );
        let huge = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(name(&unique_topic("huge")))
            .with_num_partitions(i32::MAX)
            .with_replication_factor(1)]);
        assert_eq!(
            c.call(&huge, 7).topics[0].error_code,
            37,
            "INVALID_PARTITIONS"
        );

        let good = batch(3, -1, -1, -1, 10);
        let mut corrupt = good.to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_eq!(
            produce(&mut c, &topic, Bytes::from(corrupt), 1).0,
            2,
            "CORRUPT_MESSAGE"
        );
        let mut torn = good.to_vec();
        torn.truncate(good.len() - 4);
        assert_eq!(
            produce(&mut c, &topic, Bytes::from(torn), 1).0,
            2,
            "a torn batch is CORRUPT_MESSAGE"
        );
        assert_eq!(
            produce(&mut c, &topic, batch(2, -1, -1, -1, 4096), 1).0,
            10,
            "MESSAGE_TOO_LARGE"
        );
        assert_eq!(
            produce(&mut c, &topic, good.clone(), 5).0,
            21,
            "INVALID_REQUIRED_ACKS"
        );
        assert_eq!(
            latest_offset(&mut c, &topic),
            0,
            "nothing refused was stored"
        );

        assert_eq!(produce(&mut c, &topic, good, -1), (0, 0));
        assert_eq!(latest_offset(&mut c, &topic), 3);

        // acks=0: stored, and no response is sent (the next response on the connection
        // belongs to the next request, which `receive` checks by correlation id).
        let frame = c.frame(
            &produce_request(&topic, 0, batch(2, -1, -1, -1, 10), 0),
            PRODUCE_V,
        );
        c.send_raw(&frame).expect("send");
        assert_eq!(latest_offset(&mut c, &topic), 5);
    })
    .await;
}

fn init_producer_id(c: &mut RawClient, existing: Option<(i64, i16)>) -> (i64, i16) {
    let mut request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    if let Some((id, epoch)) = existing {
        request = request
            .with_producer_id(id.into())
            .with_producer_epoch(epoch);
    } else {
        request = request
            .with_producer_id((-1).into())
            .with_producer_epoch(-1);
    }
    let response = c.call(&request, 4);
    assert_eq!(response.error_code, 0);
    (response.producer_id.0, response.producer_epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_duplicates_are_acknowledged_once_and_gaps_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = unique_topic("idempotent");
    let t = topic.clone();
    let (pid, epoch) = with_clients(start_server(dir.path()).await, move |addr| {
        let mut c = RawClient::connect(addr);
        assert_eq!(create_topic(&mut c, &t, 1, &[]), 0);
        let (pid, epoch) = init_producer_id(&mut c, None);
        assert!(pid >= 0);
        assert_eq!(produce(&mut c, &t, batch(3, pid, epoch, 0, 10), -1), (0, 0));
        assert_eq!(
            produce(&mut c, &t, batch(3, pid, epoch, 0, 10), -1),
            (0, 0),
            "duplicate is acknowledged"
        );
        assert_eq!(latest_offset(&mut c, &t), 3, "duplicate not stored twice");
        assert_eq!(produce(&mut c, &t, batch(2, pid, epoch, 3, 10), -1), (0, 3));
        assert_eq!(
            produce(&mut c, &t, batch(1, pid, epoch, 9, 10), -1).0,
            45,
            "OUT_OF_ORDER_SEQUENCE_NUMBER"
        );
        assert_eq!(latest_offset(&mut c, &t), 5);
        (pid, epoch)
    })
    .await;

    // Sequence state is rebuilt from the log: a retry after a restart is still a duplicate.
    with_clients(start_server(dir.path()).await, move |addr| {
        let mut c = RawClient::connect(addr);
        assert_eq!(
            produce(&mut c, &topic, batch(2, pid, epoch, 3, 10), -1),
            (0, 3),
            "duplicate after restart"
        );
        assert_eq!(latest_offset(&mut c, &topic), 5);
        assert_eq!(
            produce(&mut c, &topic, batch(1, pid, epoch, 5, 10), -1),
            (0, 5)
        );
        let (same_pid, bumped) = init_producer_id(&mut c, Some((pid, epoch)));
        assert_eq!(
            (same_pid, bumped),
            (pid, epoch + 1),
            "epoch bump keeps the id"
        );
        assert_eq!(
            produce(&mut c, &topic, batch(1, pid, bumped, 0, 10), -1),
            (0, 6)
        );
        assert_eq!(
            produce(&mut c, &topic, batch(1, pid, epoch, 6, 10), -1).0,
            47,
            "INVALID_PRODUCER_EPOCH"
        );
        let (other, _) = init_producer_id(&mut c, None);
        assert_ne!(other, pid, "producer ids are not reused across restarts");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_answers_at_once_when_data_is_ready_and_long_polls_otherwise() {
    let (_dir, server) = temp_server(|server| server).await;
    with_clients(server, move |addr| {
        let mut c = RawClient::connect(addr);
        let topic = unique_topic("fetch");
        assert_eq!(create_topic(&mut c, &topic, 1, &[]), 0);
        for i in 0..10 {
            assert_eq!(
                produce(&mut c, &topic, batch(2, -1, -1, -1, 500), 1),
                (0, i * 2)
            );
        }

        // Data is ready: the answer comes at once, not after max_wait_ms (10 s).
        let started = Instant::now();
        let response = c.call(&fetch_request(&topic, 0, 10_000, 1, 1024 * 1024), FETCH_V);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "ready data waited {:?}",
            started.elapsed()
        );
        let p = &response.responses[0].partitions[0];
        assert_eq!(
            (p.error_code, p.high_watermark, p.log_start_offset),
            (0, 20, 0)
        );
        let records = p.records.clone().expect("records");
        assert_eq!(batch_sizes(&records).len(), 10);

        // partition_max_bytes is honoured with whole batches, but one batch always comes.
        let one = batch_sizes(&records)[0];
        let response = c.call(
            &fetch_request(&topic, 0, 0, 1, (2 * one + one / 2) as i32),
            FETCH_V,
        );
        assert_eq!(batch_sizes(&fetched_records(&response)).len(), 2);
        let response = c.call(&fetch_request(&topic, 0, 0, 1, 10), FETCH_V);
        assert_eq!(batch_sizes(&fetched_records(&response)).len(), 1);

        // A fetch from the middle of a batch returns that whole batch.
        let response = c.call(&fetch_request(&topic, 5, 0, 1, 10), FETCH_V);
        let records = fetched_records(&response);
        assert_eq!(
            i64::from_be_bytes(records[..8].try_into().expect("8 bytes")),
            4
        );

        // Nothing new: the fetch waits for max_wait_ms and returns empty.
        let started = Instant::now();
        let response = c.call(&fetch_request(&topic, 20, 400, 1, 1024 * 1024), FETCH_V);
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "returned early: {:?}",
            started.elapsed()
        );
        assert!(response.responses[0].partitions[0]
            .records
            .as_ref()
            .is_none_or(|r| r.is_empty()));

        // A waiting fetch is woken by a produce from another connection.
        let mut waiter = RawClient::connect(addr);
        let frame = waiter.frame(&fetch_request(&topic, 20, 20_000, 1, 1024 * 1024), FETCH_V);
        waiter.send_raw(&frame).expect("send fetch");
        assert!(
            waiter.nothing_received_for(Duration::from_millis(300)),
            "the fetch is parked"
        );
        let started = Instant::now();
        assert_eq!(
            produce(&mut c, &topic, batch(1, -1, -1, -1, 10), 1),
            (0, 20)
        );
        let response = waiter.receive::<FetchRequest>(FETCH_V);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken by the produce"
        );
        let p = &response.responses[0].partitions[0];
        assert_eq!(p.high_watermark, 21);
        assert_eq!(batch_sizes(p.records.as_ref().expect("records")).len(), 1);

        // An offset past the end is OFFSET_OUT_OF_RANGE.
        let response = c.call(&fetch_request(&topic, 99, 0, 1, 1024), FETCH_V);
        assert_eq!(response.responses[0].partitions[0].error_code, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_server(dir.path()).await;
    let err = server_on(dir.path())
        .start()
        .await
        .expect_err("second server must not start");
    assert!(err.to_string().contains("in use"), "clear error: {err}");
    first.shutdown().await;
    let again = start_server(dir.path()).await;
    again.shutdown().await;
}
