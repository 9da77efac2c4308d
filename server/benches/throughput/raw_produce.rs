//! A produce load that measures the server rather than the client: every request is
//! encoded before the clock starts, then sent over one connection with a few requests in
//! flight, and timed from the first write to the last answer. librdkafka spends CPU per
//! partition on every pass of its broker thread (`rd_kafka_toppar_producer_serve`), which
//! with 10,000 partitions caps one producer far below what the server takes; this load
//! has no such cost, so what it shows is the server's.
//!
//! Messages carry the keys `key-<i>`; each goes to the partition its key hashes to, so the
//! requests spread over every partition as keyed librdkafka messages do. A request carries
//! [`MESSAGES_PER_REQUEST`] messages, one batch per partition they fall in.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use steadfast_server::client::{decode_response, encode_request};
use steadfast_testkit::batch::{BatchSpec, RecordSpec};

use super::{Measured, Payloads};

/// Messages per produce request.
const MESSAGES_PER_REQUEST: u64 = 5_000;
/// Requests sent before the first answer is waited for.
const IN_FLIGHT: usize = 4;
/// Produce request version.
const VERSION: i16 = 7;

/// The partition the key of message `i` hashes to.
fn partition_of(i: u64, partitions: i32) -> i32 {
    let mut hasher = DefaultHasher::new();
    format!("key-{i}").hash(&mut hasher);
    (hasher.finish() % partitions as u64) as i32
}

/// The encoded request frames for `messages` messages.
fn encode_all(
    topic: &str,
    partitions: i32,
    messages: u64,
    payloads: &Payloads,
    acks: i16,
) -> Result<Vec<Vec<u8>>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut frames = Vec::new();
    let mut first = 0;
    while first < messages {
        let last = (first + MESSAGES_PER_REQUEST).min(messages);
        let mut by_partition: BTreeMap<i32, Vec<RecordSpec>> = BTreeMap::new();
        for i in first..last {
            by_partition
                .entry(partition_of(i, partitions))
                .or_default()
                .push(RecordSpec {
                    key: Some(Bytes::from(format!("key-{i}"))),
                    value: Some(Bytes::copy_from_slice(payloads.get(i))),
                    timestamp: now,
                });
        }
        let partition_data = by_partition
            .into_iter()
            .map(|(p, records)| {
                PartitionProduceData::default()
                    .with_index(p)
                    .with_records(Some(BatchSpec::new(records).encode()))
            })
            .collect();
        let request = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(partition_data)]);
        let id = i32::try_from(frames.len()).context("too many requests")?;
        frames.push(encode_request(&request, VERSION, id, "bench-raw")?);
        first = last;
    }
    Ok(frames)
}

/// Reads one response frame (without its length prefix).
fn read_frame(stream: &mut TcpStream) -> Result<Bytes> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = usize::try_from(i32::from_be_bytes(len)).context("negative frame length")?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Bytes::from(body))
}

/// Produces `messages` messages of `payloads` to `topic` with `acks` (1 or -1), keyed over
/// its `partitions` partitions; every partition of every answer must be without error.
pub(crate) fn produce(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    messages: u64,
    payloads: &Payloads,
    acks: i16,
) -> Result<Measured> {
    let frames = encode_all(topic, partitions, messages, payloads, acks)?;
    let requests = frames.len();
    let mut writer = TcpStream::connect(bootstrap).context("connecting")?;
    writer.set_nodelay(true)?;
    let mut reader = writer.try_clone()?;
    reader.set_read_timeout(Some(Duration::from_secs(60)))?;
    // One token per request that may be in flight; the reader hands one back per answer.
    let (tokens, wait_for_token) = mpsc::sync_channel::<()>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        tokens
            .send(())
            .map_err(|_| anyhow!("token channel closed"))?;
    }
    let start = Instant::now();
    let answers = std::thread::scope(|scope| -> Result<()> {
        // Dropped when this closure returns, so a sender waiting for a token then stops.
        let tokens = tokens;
        let sender = scope.spawn(move || -> Result<()> {
            for frame in &frames {
                wait_for_token
                    .recv()
                    .map_err(|_| anyhow!("the reader stopped"))?;
                writer.write_all(frame)?;
            }
            Ok(())
        });
        for id in 0..requests {
            let frame = read_frame(&mut reader).with_context(|| format!("answer {id}"))?;
            let response = decode_response::<ProduceRequest>(frame, VERSION, i32::try_from(id)?)?;
            for t in &response.responses {
                for p in &t.partition_responses {
                    if p.error_code != 0 {
                        bail!(
                            "request {id}, partition {}: error {}",
                            p.index,
                            p.error_code
                        );
                    }
                }
            }
            // The sender may have finished: a token it no longer needs is not an error.
            let _ = tokens.try_send(());
        }
        sender
            .join()
            .map_err(|_| anyhow!("the sending thread panicked"))?
    });
    answers?;
    let elapsed = start.elapsed();
    ensure!(requests > 0, "nothing to send");
    Ok(Measured {
        messages,
        bytes: messages * payloads.size as u64,
        elapsed,
    })
}
