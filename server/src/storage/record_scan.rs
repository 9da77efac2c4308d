//! Reads the records of one stored batch without materialising them: the batch payload is
//! decompressed as a stream through a reader with a hard output limit, and each record's
//! timestamp and offset are read while its key, value and headers are skipped. A small
//! compressed batch that inflates to gigabytes ("decompression bomb") stops at the limit
//! with an error instead of exhausting memory.

use std::io::{self, Read};

use super::batch::{BatchHeader, HEADER_LEN};

/// Compression codec bits of the batch attributes.
const CODEC_MASK: i16 = 0x07;
/// Timestamp type bit of the batch attributes: set for LogAppendTime.
const LOG_APPEND_TIME: i16 = 0x08;
/// Largest zstd window accepted (2^24 = 16 MiB): bounds the decoder's own buffer.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// The xerial framing that Java clients put around snappy blocks.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// Length of the xerial header: magic, version and compatible version.
const XERIAL_HEADER_LEN: usize = 16;

/// Why the records of a batch could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScanError {
    /// The batch header is unreadable.
    #[error("unreadable batch header")]
    Header,
    /// The compression codec is not one of Kafka's.
    #[error("unknown compression codec {0}")]
    UnknownCodec(i16),
    /// The records inflate past the limit.
    #[error("batch inflates past {limit} bytes")]
    TooLarge {
        /// The limit on decompressed bytes.
        limit: u64,
    },
    /// The records do not decode.
    #[error("malformed records: {0}")]
    Malformed(String),
}

impl From<ScanError> for io::Error {
    fn from(e: ScanError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// The error a bounded reader fails with past its limit.
#[derive(Debug, thiserror::Error)]
#[error("decompression limit exceeded")]
struct LimitExceeded;

fn limit_exceeded() -> io::Error {
    io::Error::other(LimitExceeded)
}

fn is_limit_exceeded(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<LimitExceeded>())
}

/// A reader that fails once more than `remaining` bytes have come out of `inner`.
struct Bounded<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte more than allowed, so reaching the limit exactly is not an error.
        let want = (buf.len() as u64).min(self.remaining.saturating_add(1)) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.remaining {
            return Err(limit_exceeded());
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Snappy blocks (raw, or in xerial framing), decompressed one block at a time with each
/// block's claimed size checked against the limit before anything is allocated.
struct SnappyBlocks<'a> {
    input: &'a [u8],
    framed: bool,
    block: Vec<u8>,
    at: usize,
    budget: u64,
}

impl<'a> SnappyBlocks<'a> {
    fn new(input: &'a [u8], budget: u64) -> Self {
        let framed = input.len() >= XERIAL_HEADER_LEN && input.starts_with(XERIAL_MAGIC);
        SnappyBlocks {
            input: if framed {
                &input[XERIAL_HEADER_LEN..]
            } else {
                input
            },
            framed,
            block: Vec::new(),
            at: 0,
            budget,
        }
    }

    /// Decompresses the next block into `self.block`; false at the end of the input.
    fn next_block(&mut self) -> io::Result<bool> {
        if self.input.is_empty() {
            return Ok(false);
        }
        let compressed = if self.framed {
            if self.input.len() < 4 {
                return Err(invalid("truncated snappy block length"));
            }
            let len =
                u32::from_be_bytes([self.input[0], self.input[1], self.input[2], self.input[3]])
                    as usize;
            let rest = &self.input[4..];
            if rest.len() < len {
                return Err(invalid("truncated snappy block"));
            }
            self.input = &rest[len..];
            &rest[..len]
        } else {
            std::mem::take(&mut self.input)
        };
        let size = snap::raw::decompress_len(compressed).map_err(|e| invalid(&e.to_string()))?;
        if size as u64 > self.budget {
            return Err(limit_exceeded());
        }
        self.budget -= size as u64;
        self.block.clear();
        self.block.resize(size, 0);
        snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block)
            .map_err(|e| invalid(&e.to_string()))?;
        self.at = 0;
        Ok(true)
    }
}

impl Read for SnappyBlocks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The decompressed record bytes of a batch payload, as a stream.
fn records_reader<'a>(
    codec: i16,
    payload: &'a [u8],
    limit: u64,
) -> Result<Box<dyn Read + 'a>, ScanError> {
    let reader: Box<dyn Read + 'a> = match codec {
        0 => Box::new(payload),
        1 => Box::new(flate2::read::GzDecoder::new(payload)),
        2 => Box::new(SnappyBlocks::new(payload, limit.saturating_add(1))),
        3 => Box::new(lz4::Decoder::new(payload).map_err(|e| ScanError::Malformed(e.to_string()))?),
        4 => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(|e| ScanError::Malformed(e.to_string()))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| ScanError::Malformed(e.to_string()))?;
            Box::new(decoder)
        }
        other => return Err(ScanError::UnknownCodec(other)),
    };
    Ok(reader)
}

/// Reads a zigzag varint of at most `max_bytes` bytes.
fn read_varint(reader: &mut impl Read, max_bytes: u32) -> io::Result<i64> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let mut byte = [0u8; 1];
        reader.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(invalid("varint too long"))
}

/// The first record of `batch` (one whole stored batch) whose timestamp is at or after
/// `timestamp`, as `(offset, timestamp)`. At most `limit` bytes are decompressed.
pub(crate) fn first_record_at_or_after(
    batch: &[u8],
    timestamp: i64,
    limit: u64,
) -> Result<Option<(i64, i64)>, ScanError> {
    let header = BatchHeader::parse(batch).map_err(|_| ScanError::Header)?;
    let end = header.total_size().min(batch.len());
    let payload = batch.get(HEADER_LEN..end).ok_or(ScanError::Header)?;
    let inner = records_reader(header.attributes & CODEC_MASK, payload, limit)?;
    let mut reader = Bounded {
        inner,
        remaining: limit,
    };
    scan(&mut reader, &header, timestamp).map_err(|e| {
        if is_limit_exceeded(&e) {
            ScanError::TooLarge { limit }
        } else {
            ScanError::Malformed(e.to_string())
        }
    })
}

fn scan(
    reader: &mut impl Read,
    header: &BatchHeader,
    timestamp: i64,
) -> io::Result<Option<(i64, i64)>> {
    let log_append_time = header.attributes & LOG_APPEND_TIME != 0;
    for _ in 0..header.record_count {
        let length = read_varint(reader, 5)?;
        let mut fields = CountingReader {
            inner: &mut *reader,
            count: 0,
        };
        let mut attributes = [0u8; 1];
        fields.read_exact(&mut attributes)?;
        let timestamp_delta = read_varint(&mut fields, 10)?;
        let offset_delta = read_varint(&mut fields, 5)?;
        let consumed = fields.count;
        let rest = length
            .checked_sub(consumed as i64)
            .filter(|rest| *rest >= 0)
            .ok_or_else(|| invalid("record shorter than its fields"))?;
        let record_timestamp = if log_append_time {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(timestamp_delta)
        };
        if record_timestamp >= timestamp {
            let offset = header.base_offset.wrapping_add(offset_delta);
            return Ok(Some((offset, record_timestamp)));
        }
        let skipped = io::copy(&mut (&mut *reader).take(rest as u64), &mut io::sink())?;
        if skipped != rest as u64 {
            return Err(invalid("truncated record"));
        }
    }
    Ok(None)
}

/// Counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::Compression;
    use steadfast_testkit::batch::BatchSpec;

    fn batch(count: usize, compression: Compression) -> bytes::Bytes {
        BatchSpec::numbered(
            count,
            1_000,
            |i| format!("k{i}").into_bytes(),
            |i| vec![b'x'; 100 + i],
        )
        .compressed(compression)
        .encode()
    }

    #[test]
    fn every_codec_finds_the_first_record_at_or_after_a_time() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(10, compression);
            let found = first_record_at_or_after(&b, 1_004, 1 << 20).expect("decodes");
            assert_eq!(found, Some((4, 1_004)), "{compression:?}");
            let none = first_record_at_or_after(&b, 2_000, 1 << 20).expect("decodes");
            assert_eq!(none, None, "{compression:?}");
        }
    }

    #[test]
    fn a_batch_that_inflates_past_the_limit_is_refused() {
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(50, compression);
            let err = first_record_at_or_after(&b, i64::MAX, 1_000).expect_err("over the limit");
            assert!(
                matches!(err, ScanError::TooLarge { limit: 1_000 }),
                "{compression:?}: {err}"
            );
        }
    }
}
