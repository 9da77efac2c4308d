//! What one request may make the server allocate or return: a Metadata request of 5 million
//! topic entries (85 MiB, under the 100 MiB request limit) is refused from its length prefix
//! and API key, before any of it is decoded, and a Metadata (DescribeGroups) request that
//! names one topic (group) over and over is answered with it once.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use steadfast_testkit::{create_by_producing, unique_topic, RawClient};

use crate::child_server::ServerProcess;

/// Peak resident memory the refused request may add to the server.
const RSS_BOUND_BYTES: u64 = 50 * 1000 * 1000;

/// Topic entries of the oversized request.
const ENTRIES: usize = 5_000_000;

/// An unsigned varint, as flexible versions encode lengths.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A Metadata v12 request of `ENTRIES` topic entries (a zero topic id and a null name each),
/// written in chunks so that the test never holds all of it; write errors (the server closing
/// the connection) end the writing.
fn send_huge_metadata(stream: &mut TcpStream) {
    const ENTRY: [u8; 18] = [0; 18]; // 16-byte topic id, null name, no tagged fields
    let mut head = Vec::new();
    head.extend_from_slice(&3i16.to_be_bytes()); // Metadata
    head.extend_from_slice(&12i16.to_be_bytes());
    head.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    head.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    head.push(0); // header tagged fields
    varint(ENTRIES as u64 + 1, &mut head);
    let tail = [0u8, 0, 0]; // allow auto-creation, authorized operations, tagged fields
    let size = head.len() + ENTRIES * ENTRY.len() + tail.len();
    let mut frame = (size as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&head);
    if stream.write_all(&frame).is_err() {
        return;
    }
    let chunk: Vec<u8> = ENTRY.repeat(1 << 16);
    let mut left = ENTRIES;
    while left > 0 {
        let n = left.min(1 << 16);
        if stream.write_all(&chunk[..n * ENTRY.len()]).is_err() {
            return;
        }
        left -= n;
    }
    let _ = stream.write_all(&tail);
}

#[test]
fn a_metadata_request_of_5_million_topics_is_refused_without_an_allocation_spike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::spawn_with(&dir.path().join("data"), &[] as &[&OsStr]);
    let addr = server.addr();
    let versions = RawClient::connect(addr).call(&ApiVersionsRequest::default(), 3);
    assert_eq!(versions.error_code, 0);
    let before = server.peak_rss();

    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("write timeout");
    send_huge_metadata(&mut stream);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let started = Instant::now();
    let mut answered = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    // Until the server closes, or has answered more than a refusal could be.
    while answered < 1 << 20 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answered += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close within {:?}: {e}", started.elapsed()),
        }
    }
    let grown = server.peak_rss().saturating_sub(before);
    eprintln!(
        "server peak RSS grew by {:.1} MB; {answered} response bytes",
        grown as f64 / 1e6
    );
    assert!(
        answered < 1 << 20,
        "the server answered {answered} bytes to the 5-million-topic request"
    );
    assert!(
        grown < RSS_BOUND_BYTES,
        "peak RSS grew by {grown} bytes (bound {RSS_BOUND_BYTES})"
    );
    let versions = RawClient::connect(addr).call(&ApiVersionsRequest::default(), 3);
    assert_eq!(versions.error_code, 0, "the server still serves");
    server.stop();
}

#[test]
fn a_topic_named_many_times_in_one_metadata_request_is_answered_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::spawn_with(&dir.path().join("data"), &[] as &[&OsStr]);
    let topic = unique_topic("repeated");
    create_by_producing(&server.bootstrap, &topic);
    let entry = MetadataRequestTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.clone()))));
    let request = MetadataRequest::default()
        .with_topics(Some(vec![entry; 10_000]))
        .with_allow_auto_topic_creation(false);
    let response = RawClient::connect(server.addr()).call(&request, 12);
    let named: Vec<_> = response
        .topics
        .iter()
        .filter(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic.as_str()))
        .collect();
    assert_eq!(named.len(), 1, "{} entries in all", response.topics.len());
    assert_eq!(named[0].error_code, 0);
    server.stop();
}

#[test]
fn a_group_named_many_times_in_one_describe_groups_request_is_described_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::spawn_with(&dir.path().join("data"), &[] as &[&OsStr]);
    let group = kafka_protocol::messages::GroupId(StrBytes::from_string(unique_topic("group")));
    let request =
        kafka_protocol::messages::DescribeGroupsRequest::default().with_groups(vec![group; 5_000]);
    let response = RawClient::connect(server.addr()).call(&request, 5);
    assert_eq!(response.groups.len(), 1);
    server.stop();
}
