//! Captures seed corpora for the fuzz targets in `server/fuzz/` from real librdkafka traffic.
//!
//! Runs the embedded server behind a TCP proxy (advertised to clients, so every connection
//! goes through it), drives rdkafka through produce (none/gzip/snappy/lz4/zstd, and an
//! idempotent producer), consume, a consumer group (join, sync, heartbeat, commit, offset
//! fetch, leave), metadata, list offsets (latest, earliest, by time), create/delete topics
//! and list/describe/delete groups, and writes:
//!
//! - `corpus/request_frame/`: each distinct request frame (length prefix included),
//! - `corpus/record_batch/`: the records of each partition of each produce request,
//! - `corpus/segment_recovery/`: the segment and index files the server wrote, in the
//!   input format of `steadfast_server::fuzzing::segment_recovery`.
//!
//! Run: `cargo run -p steadfast-server --example capture_corpus -- server/fuzz/corpus`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader};
use kafka_protocol::protocol::Decodable;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use steadfast_testkit::client_config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Distinct frames kept per API and version.
const FRAMES_PER_API_VERSION: usize = 3;
/// Largest input kept in any corpus.
const MAX_INPUT: usize = 48 * 1024;

type Frames = Arc<Mutex<Vec<Vec<u8>>>>;

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "server/fuzz/corpus".to_owned()),
    );
    let data = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let frames: Frames = Arc::default();
    let proxy = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let proxy_port = proxy.local_addr()?.port();
    let server = rt.block_on(
        steadfast_server::Server::builder()
            .listen("127.0.0.1:0")
            .data_dir(data.path())
            .advertised("127.0.0.1", proxy_port)
            .segment_bytes(8 * 1024)
            .start(),
    )?;
    rt.spawn(run_proxy(proxy, server.local_addr(), frames.clone()));
    let bootstrap = format!("127.0.0.1:{proxy_port}");

    drive_clients(&rt, &bootstrap)?;

    rt.block_on(server.shutdown());
    let frames = std::mem::take(&mut *frames.lock());
    let written = write_corpora(&out, &frames, data.path())?;
    println!(
        "captured {} frames; wrote {} request_frame, {} record_batch, {} segment_recovery inputs to {}",
        frames.len(),
        written.0,
        written.1,
        written.2,
        out.display()
    );
    Ok(())
}

/// Forwards every connection to the server, recording each client frame.
async fn run_proxy(listener: TcpListener, server: std::net::SocketAddr, frames: Frames) {
    while let Ok((client, _)) = listener.accept().await {
        let frames = frames.clone();
        tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect(server).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            loop {
                let mut prefix = [0u8; 4];
                if client_read.read_exact(&mut prefix).await.is_err() {
                    break;
                }
                let len = i32::from_be_bytes(prefix).max(0) as usize;
                let mut frame = vec![0u8; 4 + len];
                frame[..4].copy_from_slice(&prefix);
                if client_read.read_exact(&mut frame[4..]).await.is_err() {
                    break;
                }
                if server_write.write_all(&frame).await.is_err() {
                    break;
                }
                frames.lock().push(frame);
            }
            let _ = server_write.shutdown().await;
        });
    }
}

fn drive_clients(rt: &tokio::runtime::Runtime, bootstrap: &str) -> anyhow::Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("capture-{run}");
    let doomed = format!("capture-doomed-{run}");
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    rt.block_on(admin.create_topics(
        &[
            NewTopic::new(&topic, 2, TopicReplication::Fixed(1)),
            NewTopic::new(&doomed, 1, TopicReplication::Fixed(1)).set("retention.ms", "3600000"),
        ],
        &options,
    ))?;

    eprintln!("topics created");
    let start_ms = now_ms();
    for (i, codec) in ["none", "gzip", "snappy", "lz4", "zstd"].iter().enumerate() {
        let mut producer_config = client_config(bootstrap);
        producer_config
            .set("compression.type", *codec)
            .set("linger.ms", "5");
        if i % 2 == 0 {
            producer_config.set("enable.idempotence", "true");
        }
        let producer: BaseProducer = producer_config.create()?;
        for n in 0..40 {
            let key = format!("key-{codec}-{n}");
            let value = format!("value {n} of {codec}: {}", "x".repeat(n * 7));
            let headers = OwnedHeaders::new().insert(Header {
                key: "codec",
                value: Some(codec.as_bytes()),
            });
            let record = BaseRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .partition((n % 2) as i32)
                .headers(headers);
            if let Err((e, _)) = producer.send(record) {
                anyhow::bail!("send failed: {e}");
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30))?;
        let doomed_record = BaseRecord::<(), str>::to(&doomed).payload("short-lived");
        if let Err((e, _)) = producer.send(doomed_record) {
            anyhow::bail!("send failed: {e}");
        }
        producer.flush(Duration::from_secs(30))?;
    }

    eprintln!("produced with every codec");
    let group = format!("capture-group-{run}");
    let mut consumer_config = client_config(bootstrap);
    consumer_config
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = consumer_config.create()?;
    consumer.subscribe(&[&topic])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = 0;
    while received < 200 && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            message?;
            received += 1;
        }
    }
    anyhow::ensure!(received == 200, "consumed {received} of 200 records");
    // Let a few heartbeats go out.
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    eprintln!("consumed {received} records");
    consumer.commit_consumer_state(CommitMode::Sync)?;
    let committed = consumer.committed(Duration::from_secs(10))?;
    anyhow::ensure!(committed.count() == 2, "two committed partitions");
    let mut times = TopicPartitionList::new();
    for p in 0..2 {
        times.add_partition_offset(&topic, p, Offset::Offset(start_ms))?;
    }
    consumer.offsets_for_times(times, Duration::from_secs(10))?;
    consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10))?;
    consumer.fetch_metadata(None, Duration::from_secs(10))?;
    consumer.fetch_group_list(None, Duration::from_secs(10))?;
    // Closing the consumer sends LeaveGroup; librdkafka may linger on close, so it closes on
    // a thread of its own, waited for with a deadline.
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        consumer.unsubscribe();
        drop(consumer);
        let _ = closed_tx.send(());
    });
    if closed_rx.recv_timeout(Duration::from_secs(15)).is_err() {
        eprintln!("the consumer did not close within 15 s; going on");
    }
    // The answers do not matter here, only the requests.
    if let Err(e) = rt.block_on(admin.delete_groups(&[&group], &options)) {
        eprintln!("delete groups: {e}");
    }
    rt.block_on(admin.delete_topics(&[&doomed], &options))?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// FNV-1a, for file names that dedupe identical inputs.
fn name_of(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn write_input(dir: &Path, bytes: &[u8], seen: &mut HashSet<String>) -> anyhow::Result<bool> {
    if bytes.len() > MAX_INPUT {
        return Ok(false);
    }
    let name = name_of(bytes);
    if !seen.insert(name.clone()) {
        return Ok(false);
    }
    std::fs::write(dir.join(name), bytes)?;
    Ok(true)
}

fn write_corpora(
    out: &Path,
    frames: &[Vec<u8>],
    data_dir: &Path,
) -> anyhow::Result<(usize, usize, usize)> {
    let (frame_dir, batch_dir, segment_dir) = (
        out.join("request_frame"),
        out.join("record_batch"),
        out.join("segment_recovery"),
    );
    for d in [&frame_dir, &batch_dir, &segment_dir] {
        std::fs::create_dir_all(d)?;
    }
    let mut seen = HashSet::new();
    let mut per_api: HashMap<(i16, i16), usize> = HashMap::new();
    let (mut n_frames, mut n_batches, mut n_segments) = (0, 0, 0);
    for frame in frames {
        let (Some(key), Some(version)) = (frame.get(4..6), frame.get(6..8)) else {
            continue;
        };
        let key = i16::from_be_bytes([key[0], key[1]]);
        let version = i16::from_be_bytes([version[0], version[1]]);
        if key == ApiKey::Produce as i16 {
            n_batches += produce_records(&frame[4..], key, version)
                .into_iter()
                .map(|records| write_input(&batch_dir, &records, &mut seen))
                .collect::<anyhow::Result<Vec<bool>>>()?
                .into_iter()
                .filter(|w| *w)
                .count();
        }
        let count = per_api.entry((key, version)).or_default();
        if *count < FRAMES_PER_API_VERSION && write_input(&frame_dir, frame, &mut seen)? {
            *count += 1;
            n_frames += 1;
        }
    }
    for partition_dir in partition_dirs(&data_dir.join("topics"))? {
        for input in segment_inputs(&partition_dir)? {
            if write_input(&segment_dir, &input, &mut seen)? {
                n_segments += 1;
            }
        }
    }
    Ok((n_frames, n_batches, n_segments))
}

/// The records of every partition of a produce request frame (without its length prefix).
fn produce_records(frame: &[u8], key: i16, version: i16) -> Vec<Bytes> {
    let Ok(api) = ApiKey::try_from(key) else {
        return Vec::new();
    };
    let mut buf = Bytes::copy_from_slice(frame);
    if RequestHeader::decode(&mut buf, api.request_header_version(version)).is_err() {
        return Vec::new();
    }
    let Ok(request) = ProduceRequest::decode(&mut buf, version) else {
        return Vec::new();
    };
    request
        .topic_data
        .iter()
        .flat_map(|t| t.partition_data.iter())
        .filter_map(|p| p.records.clone())
        .collect()
}

fn partition_dirs(topics: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for topic in std::fs::read_dir(topics)? {
        let topic = topic?.path();
        if !topic.is_dir() {
            continue;
        }
        for partition in std::fs::read_dir(&topic)? {
            let partition = partition?.path();
            if partition.is_dir() {
                dirs.push(partition);
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Inputs of the recovery target from a partition's files: its last segment alone, and its
/// first segment with its indexes followed by the second one.
fn segment_inputs(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let read = |p: PathBuf| std::fs::read(p).unwrap_or_default();
    let mut inputs = Vec::new();
    if let Some(last) = logs.last() {
        let mut input = vec![0u8];
        input.extend(read(last.clone()));
        inputs.push(input);
    }
    for pair in logs.windows(2).take(1) {
        let mut input = vec![3u8];
        input.extend(read(pair[0].clone()));
        input.extend_from_slice(b"SEG|");
        input.extend(read(pair[1].clone()));
        input.extend_from_slice(b"SEG|");
        input.extend(read(pair[0].with_extension("index")));
        input.extend_from_slice(b"SEG|");
        input.extend(read(pair[0].with_extension("timeindex")));
        inputs.push(input);
    }
    Ok(inputs)
}
