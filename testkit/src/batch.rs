//! The one record-batch encoder of the tests: v2 record batches built from a few numbers,
//! for tests that produce through the raw protocol or check the server's batch parsing.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// One record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpec {
    /// The record key.
    pub key: Option<Bytes>,
    /// The record value.
    pub value: Option<Bytes>,
    /// Creation timestamp, milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// The idempotent producer a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSpec {
    /// Producer id.
    pub id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence number of the batch's first record.
    pub first_sequence: i32,
}

/// A whole batch: its records, producer and compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpec {
    /// The records, offset deltas 0, 1, 2, … in this order.
    pub records: Vec<RecordSpec>,
    /// The idempotent producer, or none (producer id and epoch -1).
    pub producer: Option<ProducerSpec>,
    /// Compression codec of the batch.
    pub compression: Compression,
}

impl BatchSpec {
    /// An uncompressed batch of `records` from no particular producer.
    pub fn new(records: Vec<RecordSpec>) -> Self {
        BatchSpec {
            records,
            producer: None,
            compression: Compression::None,
        }
    }

    /// `count` records: record `i` has key `key(i)`, value `value(i)` and timestamp
    /// `first_timestamp + i`.
    pub fn numbered(
        count: usize,
        first_timestamp: i64,
        key: impl Fn(usize) -> Vec<u8>,
        value: impl Fn(usize) -> Vec<u8>,
    ) -> Self {
        BatchSpec::new(
            (0..count)
                .map(|i| RecordSpec {
                    key: Some(Bytes::from(key(i))),
                    value: Some(Bytes::from(value(i))),
                    timestamp: first_timestamp + i as i64,
                })
                .collect(),
        )
    }

    /// The same batch from producer `id` at `epoch`, its first record at `first_sequence`.
    pub fn from_producer(mut self, id: i64, epoch: i16, first_sequence: i32) -> Self {
        self.producer = Some(ProducerSpec {
            id,
            epoch,
            first_sequence,
        });
        self
    }

    /// The same batch compressed with `compression`.
    pub fn compressed(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Encodes the batch; see [`encode_batch`].
    pub fn encode(&self) -> Bytes {
        encode_batch(self)
    }
}

/// Encodes `spec` as one v2 record batch at base offset 0. Panics if the encoder fails
/// (an empty batch, for one).
pub fn encode_batch(spec: &BatchSpec) -> Bytes {
    let (producer_id, producer_epoch) = spec.producer.map_or((-1, -1), |p| (p.id, p.epoch));
    let records: Vec<Record> = spec
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Sequences step with offsets (without a producer from -1, as the encoder
            // expects), so the encoder keeps every record in one batch.
            sequence: match spec.producer {
                Some(p) => p.first_sequence.wrapping_add(i as i32),
                None => i as i32 - 1,
            },
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: spec.compression,
        },
    )
    .expect("test record batch encodes");
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_i64(b: &[u8], at: usize) -> i64 {
        i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }
    fn header_i32(b: &[u8], at: usize) -> i32 {
        i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }

    #[test]
    fn one_batch_holds_every_record_with_its_producer_and_timestamps() {
        let batch = BatchSpec::numbered(3, 1_000, |i| vec![i as u8], |_| b"v".to_vec())
            .from_producer(7, 2, 40)
            .encode();
        assert_eq!(
            header_i32(&batch, 8) as usize + 12,
            batch.len(),
            "one batch"
        );
        assert_eq!(header_i32(&batch, 23), 2, "last offset delta");
        assert_eq!(header_i64(&batch, 27), 1_000, "base timestamp");
        assert_eq!(header_i64(&batch, 35), 1_002, "max timestamp");
        assert_eq!(header_i64(&batch, 43), 7, "producer id");
        assert_eq!(&batch[51..53], &2i16.to_be_bytes(), "producer epoch");
        assert_eq!(header_i32(&batch, 53), 40, "base sequence");
        assert_eq!(header_i32(&batch, 57), 3, "record count");
    }

    #[test]
    fn compression_is_recorded_in_the_attributes() {
        let spec = BatchSpec::numbered(50, 0, |_| vec![], |_| vec![b'x'; 100]);
        let plain = spec.encode();
        let lz4 = spec.clone().compressed(Compression::Lz4).encode();
        assert_eq!(&plain[21..23], &0i16.to_be_bytes());
        assert_eq!(&lz4[21..23], &3i16.to_be_bytes());
        assert!(lz4.len() < plain.len());
    }
}
