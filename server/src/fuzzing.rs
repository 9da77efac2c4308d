//! Entry points for the fuzz targets in `server/fuzz/` and their regression tests.
//!
//! Not an API: hidden from the documentation, with no stability promise. Each function runs
//! one decoding path of the server over arbitrary bytes and panics only when an invariant of
//! that path breaks (or when the path itself panics, which is the bug being looked for).

use std::path::Path;

use bytes::Bytes;
use kafka_protocol::messages::*;

use crate::api::check_served;
use crate::config::LogConfig;
use crate::protocol::frame::{read_frame, FrameLimits};
use crate::protocol::{RequestError, RequestFrame};
use crate::storage::batch::{split_batches, BatchHeader};
use crate::storage::open_files::OpenFiles;
use crate::storage::partition::{inflate_limit, Partition};
use crate::storage::producer_state::ProducerStates;
use crate::storage::record_scan::first_record_at_or_after;

/// Largest frame the request target accepts (the server's default is 100 MiB; a smaller
/// bound keeps the fuzzer's inputs meaningful without changing what the decoders see).
const FUZZ_MAX_REQUEST: usize = 1 << 20;

/// Decompressed-size bound used by the batch target (small, so bombs are cheap to find).
const FUZZ_INFLATE_LIMIT: u64 = 1 << 20;

/// Reads length-prefixed frames from `data` as a connection does, and for each one decodes
/// the request header, checks the API and version are served, and decodes the body as the
/// handler of that API would (for produce, also splits and checks its record batches).
pub fn request_frames(data: &[u8]) {
    let mut reader = data;
    loop {
        let frame = match futures::executor::block_on(read_frame(
            &mut reader,
            FrameLimits::uniform(FUZZ_MAX_REQUEST),
        )) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        let Ok(request) = RequestFrame::parse(frame) else {
            return;
        };
        match check_served(&request) {
            Ok(None) => {}
            Ok(Some(_)) => continue,
            Err(_) => return,
        }
        if decode_body(&request).is_err() {
            return;
        }
    }
}

/// Decodes a request body as the handler of its API does; `Err` for an API not served.
pub(crate) fn decode_body(request: &RequestFrame) -> Result<(), RequestError> {
    match request.api_key {
        ApiKey::ApiVersions => drop(request.decode::<ApiVersionsRequest>()?),
        ApiKey::Metadata => drop(request.decode::<MetadataRequest>()?),
        ApiKey::Produce => {
            let produce = request.decode::<ProduceRequest>()?;
            for topic in &produce.topic_data {
                for partition in &topic.partition_data {
                    if let Some(records) = &partition.records {
                        let _ = split_batches(records);
                    }
                }
            }
        }
        ApiKey::Fetch => drop(request.decode::<FetchRequest>()?),
        ApiKey::ListOffsets => drop(request.decode::<ListOffsetsRequest>()?),
        ApiKey::CreateTopics => drop(request.decode::<CreateTopicsRequest>()?),
        ApiKey::DeleteTopics => drop(request.decode::<DeleteTopicsRequest>()?),
        ApiKey::InitProducerId => drop(request.decode::<InitProducerIdRequest>()?),
        ApiKey::FindCoordinator => drop(request.decode::<FindCoordinatorRequest>()?),
        ApiKey::JoinGroup => drop(request.decode::<JoinGroupRequest>()?),
        ApiKey::SyncGroup => drop(request.decode::<SyncGroupRequest>()?),
        ApiKey::Heartbeat => drop(request.decode::<HeartbeatRequest>()?),
        ApiKey::LeaveGroup => drop(request.decode::<LeaveGroupRequest>()?),
        ApiKey::OffsetCommit => drop(request.decode::<OffsetCommitRequest>()?),
        ApiKey::OffsetFetch => drop(request.decode::<OffsetFetchRequest>()?),
        ApiKey::DescribeGroups => drop(request.decode::<DescribeGroupsRequest>()?),
        ApiKey::ListGroups => drop(request.decode::<ListGroupsRequest>()?),
        ApiKey::DeleteGroups => drop(request.decode::<DeleteGroupsRequest>()?),
        ApiKey::SaslHandshake => drop(request.decode::<SaslHandshakeRequest>()?),
        ApiKey::SaslAuthenticate => {
            let request: SaslAuthenticateRequest = request.decode()?;
            sasl_token(&request.auth_bytes);
        }
        other => return Err(RequestError::UnknownApiKey(other as i16)),
    }
    Ok(())
}

/// Runs the PLAIN parser and both steps of a SCRAM exchange (as first and as final
/// message) over a SaslAuthenticate token.
fn sasl_token(token: &[u8]) {
    use crate::auth::crypto::Hash;
    use crate::auth::plain::PlainMessage;
    use crate::auth::scram::ScramExchange;
    use crate::auth::users::CredentialKeys;

    let _ = PlainMessage::parse(token);
    let keys = || CredentialKeys {
        salt: vec![7; 16],
        iterations: 1,
        stored_key: vec![1; 32],
        server_key: vec![2; 32],
    };
    let decoy = std::sync::Arc::new(crate::auth::decoy::DecoySecret::from_bytes([9; 32]));
    let mut fresh = ScramExchange::new(Hash::Sha256, decoy.clone());
    let _ = fresh.step(token, |_| Some(keys()), "nonce");
    let mut exchange = ScramExchange::new(Hash::Sha256, decoy);
    let _ = exchange.step(b"n,,n=user,r=abc", |_| Some(keys()), "def");
    let _ = exchange.step(token, |_| None, "");
}

/// Runs what produce runs over a partition's records (split, CRC and header checks, the
/// producer-sequence check), then reads the records of each batch as ListOffsets by time
/// does (decompressing within a bound).
///
/// The CRCs of the batches in `data` are recomputed first (see [`repair_crcs`]), so the
/// fuzzer explores what lies behind the CRC check rather than the check itself.
pub fn record_batches(data: &[u8]) {
    let mut data = data.to_vec();
    repair_crcs(&mut data);
    let records = Bytes::from(data);
    let Ok(batches) = split_batches(&records) else {
        return;
    };
    let mut producers = ProducerStates::default();
    for batch in &batches {
        let header = batch.header;
        assert_eq!(header.total_size(), batch.bytes.len());
        let _ = header.is_transactional();
        let _ = header.offset_count();
        if producers.check(&header).is_ok() {
            producers.record(&header);
        }
        for timestamp in [i64::MIN, header.base_timestamp, header.max_timestamp] {
            if let Ok(Some((_, found))) =
                first_record_at_or_after(&batch.bytes, timestamp, FUZZ_INFLATE_LIMIT)
            {
                assert!(
                    found >= timestamp,
                    "a record older than asked for was returned"
                );
            }
        }
    }
}

/// The log settings of the recovery target: tiny index intervals, so indexes get entries.
fn recovery_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        retention: None,
        retention_bytes: None,
        max_message_bytes: 1 << 20,
        index_interval_bytes: 64,
    }
}

/// Writes the segment files described by `data` into `dir` (an empty directory), opens the
/// partition over them (recovery), and checks what recovery found.
///
/// `data` is: one flag byte (bit 0: the first segment is an older, sealed one followed by a
/// second; bit 1: write index files for the first segment), then the files separated by the
/// four bytes `SEG|`: first log, second log, first offset index, first time index. Unless
/// bit 2 of the flags is set, the batch CRCs of both logs are recomputed first.
pub fn segment_recovery(dir: &Path, data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = split_parts(rest).into_iter();
    let mut first_log = parts.next().unwrap_or_default().to_vec();
    let mut second_log = parts.next().unwrap_or_default().to_vec();
    if flags & 4 == 0 {
        repair_crcs(&mut first_log);
        repair_crcs(&mut second_log);
    }
    let (first_log, second_log) = (&first_log[..], &second_log[..]);
    let offset_index = parts.next().unwrap_or_default();
    let time_index = parts.next().unwrap_or_default();
    if write_segment_files(dir, flags, first_log, second_log, offset_index, time_index).is_err() {
        return;
    }

    let config = recovery_config();
    // The smallest set of open files: segments' files are closed and opened again.
    let files = OpenFiles::new(0);
    let Ok(partition) = Partition::open(dir, config.clone(), &files) else {
        return;
    };
    let (start, end) = (partition.log_start_offset(), partition.log_end_offset());
    assert!(start <= end, "log start {start} after log end {end}");
    // Every offset in the log reads without error (data or an empty answer for a gap).
    if start < end {
        match partition.read(start, 1 << 16, true) {
            Ok(read) => {
                assert_eq!(read.high_watermark, end);
                // The last segment is CRC-checked by recovery; an older one with consistent
                // indexes is trusted as written (its headers are checked, not its CRCs).
                if !read.records.is_empty() && flags & 1 == 0 {
                    split_batches(&read.records).expect("a read returns whole, valid batches");
                }
            }
            Err(e) => panic!("reading the recovered log from {start} failed: {e}"),
        }
        let _ = partition.read(end - 1, 1 << 16, true);
    }
    let _ = partition.offset_for_timestamp(0);
    drop(partition);
    // Recovery is idempotent: opening the recovered files again finds the same log.
    let again = Partition::open(dir, config, &files).expect("reopening a recovered partition");
    assert_eq!(
        again.log_start_offset(),
        start,
        "log start changed on reopen"
    );
    assert_eq!(again.log_end_offset(), end, "log end changed on reopen");
}

fn write_segment_files(
    dir: &Path,
    flags: u8,
    first_log: &[u8],
    second_log: &[u8],
    offset_index: &[u8],
    time_index: &[u8],
) -> std::io::Result<()> {
    let stem = |base: i64| format!("{base:020}");
    std::fs::write(dir.join(format!("{}.log", stem(0))), first_log)?;
    if flags & 2 != 0 {
        std::fs::write(dir.join(format!("{}.index", stem(0))), offset_index)?;
        std::fs::write(dir.join(format!("{}.timeindex", stem(0))), time_index)?;
    }
    if flags & 1 != 0 {
        // The second segment's base follows what the first claims to hold.
        let second_base = second_base_of(first_log).max(1);
        std::fs::write(dir.join(format!("{}.log", stem(second_base))), second_log)?;
    }
    Ok(())
}

/// The bound used when a stored batch's records are read, for a `max.message.bytes`.
pub fn decompression_limit(max_message_bytes: usize) -> u64 {
    inflate_limit(max_message_bytes)
}

/// Rewrites the CRC of every whole batch at the start of `buf` (walking batch lengths) to
/// match its contents: a fuzzer cannot guess CRC-32C values, so without this nearly every
/// mutated batch would stop at the CRC check.
pub fn repair_crcs(buf: &mut [u8]) {
    const CRC_AT: usize = 17;
    const CRC_START: usize = 21;
    let mut pos = 0;
    while let Ok(size) = BatchHeader::peek_size(&buf[pos..]) {
        let Some(batch) = buf.get_mut(pos..pos.saturating_add(size)) else {
            break;
        };
        if batch.len() > CRC_START {
            let crc = crc32c::crc32c(&batch[CRC_START..]);
            batch[CRC_AT..CRC_START].copy_from_slice(&crc.to_be_bytes());
        }
        pos += size;
    }
}

fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    const SEPARATOR: &[u8] = b"SEG|";
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// The offset after the last batch header found at the start of a log file, or 1.
fn second_base_of(log: &[u8]) -> i64 {
    let mut pos = 0;
    let mut next = 1;
    while let Ok(header) = BatchHeader::parse(&log[pos..]) {
        next = header.base_offset.saturating_add(header.offset_count());
        pos += header.total_size();
        if pos >= log.len() {
            break;
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::api_versions::SERVED;

    #[test]
    fn every_served_api_has_a_body_decoder() {
        for (api, min, max) in SERVED {
            for version in *min..=*max {
                let frame = RequestFrame {
                    api_key: *api,
                    api_version: version,
                    correlation_id: 0,
                    client_id: None,
                    body: Bytes::new(),
                    peer: None,
                    context: None,
                };
                assert!(
                    !matches!(decode_body(&frame), Err(RequestError::UnknownApiKey(_))),
                    "{api:?} v{version} is served but not decoded by the fuzz entry point"
                );
            }
        }
    }
}
