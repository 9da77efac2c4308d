//! The on-wire (and on-disk) record batch header of Kafka's message format v2, and the
//! checks the server makes before it stores a batch the way the client sent it.

use bytes::Bytes;

/// Bytes before the batch-length field ends: base offset (8) + batch length (4).
pub(crate) const LOG_OVERHEAD: usize = 12;
/// Size of the fixed v2 batch header, up to and including the record count.
pub(crate) const HEADER_LEN: usize = 61;
/// The CRC covers the batch from the attributes field to its end.
const CRC_START: usize = 21;

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BatchError {
    /// The bytes end in the middle of a batch.
    #[error("truncated record batch")]
    Truncated,
    /// The batch length field is impossible.
    #[error("invalid batch length {0}")]
    InvalidLength(i32),
    /// Only message format v2 (magic 2) is stored.
    #[error("unsupported message format (magic {0})")]
    UnsupportedMagic(i8),
    /// The CRC-32C of the batch does not match its contents.
    #[error("CRC mismatch: header says {expected:#010x}, contents give {actual:#010x}")]
    CrcMismatch {
        /// CRC stored in the header.
        expected: u32,
        /// CRC computed over the contents.
        actual: u32,
    },
    /// The batch header contradicts itself.
    #[error("inconsistent batch header: {0}")]
    Inconsistent(&'static str),
}

/// The fixed header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub(crate) base_offset: i64,
    pub(crate) batch_length: i32,
    pub(crate) magic: i8,
    pub(crate) crc: u32,
    pub(crate) attributes: i16,
    pub(crate) last_offset_delta: i32,
    pub(crate) base_timestamp: i64,
    pub(crate) max_timestamp: i64,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) base_sequence: i32,
    pub(crate) record_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("slice of 8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("slice of 4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("slice of 2 bytes"))
}

impl BatchHeader {
    /// Reads the length prefix of the batch at the start of `buf`: the whole batch size.
    pub(crate) fn peek_size(buf: &[u8]) -> Result<usize, BatchError> {
        if buf.len() < LOG_OVERHEAD {
            return Err(BatchError::Truncated);
        }
        let len = be_i32(buf, 8);
        if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::InvalidLength(len));
        }
        Ok(LOG_OVERHEAD + len as usize)
    }

    /// Parses the header at the start of `buf` (which needs at least [`HEADER_LEN`] bytes).
    pub(crate) fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        Self::peek_size(buf)?;
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated);
        }
        let magic = buf[16] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let header = BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, 8),
            magic,
            crc: be_i32(buf, 17) as u32,
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        };
        if header.last_offset_delta < 0 {
            return Err(BatchError::Inconsistent("negative last offset delta"));
        }
        if header.record_count as i64 != header.last_offset_delta as i64 + 1 {
            return Err(BatchError::Inconsistent(
                "record count does not match the last offset delta",
            ));
        }
        // Uncompressed, every record takes at least 7 bytes.
        if header.attributes & 0x07 == 0
            && header.record_count as i64 * 7 > header.batch_length as i64 - 49
        {
            return Err(BatchError::Inconsistent("more records than bytes"));
        }
        Ok(header)
    }

    /// Size of the whole batch including the offset and length fields.
    pub(crate) fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the last record of the batch.
    pub(crate) fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Number of offsets the batch occupies.
    pub(crate) fn offset_count(&self) -> i64 {
        self.last_offset_delta as i64 + 1
    }

    /// Sequence number of the last record (sequences wrap at `i32::MAX`).
    pub(crate) fn last_sequence(&self) -> i32 {
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        if last > i32::MAX as i64 {
            (last - i32::MAX as i64 - 1) as i32
        } else {
            last as i32
        }
    }

    /// Whether the batch is part of a transaction.
    pub(crate) fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
}

/// Verifies the CRC-32C of a whole batch.
pub(crate) fn verify_crc(batch: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let actual = crc32c::crc32c(&batch[CRC_START..]);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok(())
}

/// One validated batch of a produce request: its header and where it lies in the buffer.
#[derive(Debug, Clone)]
pub(crate) struct IncomingBatch {
    pub(crate) header: BatchHeader,
    pub(crate) bytes: Bytes,
}

/// Splits a produce request's records into whole, CRC-checked v2 batches.
pub(crate) fn split_batches(records: &Bytes) -> Result<Vec<IncomingBatch>, BatchError> {
    let mut batches = Vec::with_capacity(1);
    let mut pos = 0;
    while pos < records.len() {
        let rest = &records[pos..];
        let size = BatchHeader::peek_size(rest)?;
        if rest.len() < size {
            return Err(BatchError::Truncated);
        }
        let header = BatchHeader::parse(rest)?;
        verify_crc(&rest[..size], &header)?;
        batches.push(IncomingBatch {
            header,
            bytes: records.slice(pos..pos + size),
        });
        pos += size;
    }
    if batches.is_empty() {
        return Err(BatchError::Truncated);
    }
    Ok(batches)
}

/// Writes `base_offset` into the header of the batch at the start of `buf`.
#[cfg(test)]
pub(crate) fn set_base_offset(buf: &mut [u8], base_offset: i64) {
    buf[..8].copy_from_slice(&base_offset.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use steadfast_testkit::batch::BatchSpec;

    /// Encodes `count` small records as one v2 batch with the given first timestamp.
    fn encode_batch(count: usize, first_timestamp: i64) -> Bytes {
        BatchSpec::numbered(
            count,
            first_timestamp,
            |i| format!("k{i}").into_bytes(),
            |i| format!("value-{i}").into_bytes(),
        )
        .encode()
    }

    #[test]
    fn a_well_formed_batch_is_split_and_its_header_read() {
        let batch = encode_batch(3, 1_000);
        let split = split_batches(&batch).expect("valid batch");
        assert_eq!(split.len(), 1);
        let h = split[0].header;
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.max_timestamp, 1_002);
        assert_eq!(h.total_size(), batch.len());
    }

    #[test]
    fn a_flipped_byte_fails_the_crc() {
        let batch = encode_batch(3, 1_000);
        let mut corrupt = batch.to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let err = split_batches(&Bytes::from(corrupt)).expect_err("corrupt batch");
        assert!(matches!(err, BatchError::CrcMismatch { .. }));
    }

    #[test]
    fn a_truncated_batch_is_refused() {
        let batch = encode_batch(3, 1_000);
        let cut = batch.slice(..batch.len() - 5);
        assert_eq!(split_batches(&cut).unwrap_err(), BatchError::Truncated);
    }

    #[test]
    fn rewriting_the_base_offset_keeps_the_crc_valid() {
        let batch = encode_batch(2, 5);
        let mut copy = batch.to_vec();
        set_base_offset(&mut copy, 42);
        let split = split_batches(&Bytes::from(copy)).expect("still valid");
        assert_eq!(split[0].header.base_offset, 42);
    }

    #[test]
    fn a_record_count_that_contradicts_the_offsets_is_refused() {
        let mut bytes = encode_batch(3, 0).to_vec();
        bytes[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
        assert!(matches!(
            BatchHeader::parse(&bytes),
            Err(BatchError::Inconsistent(_))
        ));
    }

    #[test]
    fn last_sequence_wraps_at_i32_max() {
        let mut h = BatchHeader::parse(&encode_batch(3, 0)).expect("valid");
        h.base_sequence = i32::MAX - 1;
        assert_eq!(h.last_sequence(), 0);
    }
}
