//! Idempotent-producer bookkeeping for one partition: the last batches' sequence numbers per
//! producer id, so a retried batch is acknowledged without being stored twice and a gap in
//! sequences is refused. Rebuilt from the log tail on recovery.

use std::collections::{HashMap, VecDeque};

use super::batch::BatchHeader;

/// Batches remembered per producer (the most a client keeps in flight with idempotence).
const REMEMBERED_BATCHES: usize = 5;

/// What to do with an incoming batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// New data, in sequence: store it.
    Append,
    /// A batch already stored at this base offset: acknowledge it again, store nothing.
    Duplicate { base_offset: i64 },
}

/// Why a batch of an idempotent producer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SequenceError {
    /// The sequence does not follow the last stored one.
    #[error("out of order sequence: expected {expected}, got {got}")]
    OutOfOrder {
        /// The sequence that would have been accepted.
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
    /// The producer epoch is older than one already seen (a fenced producer).
    #[error("producer epoch {got} is older than current epoch {current}")]
    StaleEpoch {
        /// Epoch of the batch.
        got: i16,
        /// Newest epoch seen.
        current: i16,
    },
}

#[derive(Debug, Clone, Copy)]
struct StoredBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<StoredBatch>,
}

/// The sequence state of every producer that wrote to a partition.
#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

impl ProducerStates {
    /// Checks a batch (with `base_offset` not yet assigned) against the producer's state.
    pub(crate) fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, SequenceError> {
        if header.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            // Unknown producer (new, or its state aged out with retention): accept.
            return Ok(SequenceCheck::Append);
        };
        if header.producer_epoch < entry.epoch {
            return Err(SequenceError::StaleEpoch {
                got: header.producer_epoch,
                current: entry.epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            return if header.base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    expected: 0,
                    got: header.base_sequence,
                })
            };
        }
        let last_sequence = header.last_sequence();
        if let Some(stored) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == header.base_sequence && b.last_sequence == last_sequence)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: stored.base_offset,
            });
        }
        let expected = entry
            .batches
            .back()
            .map(|b| next_sequence(b.last_sequence))
            .unwrap_or(header.base_sequence);
        if header.base_sequence == expected {
            Ok(SequenceCheck::Append)
        } else {
            Err(SequenceError::OutOfOrder {
                expected,
                got: header.base_sequence,
            })
        }
    }

    /// Records a batch that was stored (its header carries the assigned base offset).
    pub(crate) fn record(&mut self, header: &BatchHeader) {
        if header.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == REMEMBERED_BATCHES {
            entry.batches.pop_front();
        }
        entry.batches.push_back(StoredBatch {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            base_offset: header.base_offset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(pid: i64, epoch: i16, seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        }
    }

    #[test]
    fn in_sequence_batches_are_appended_and_a_retry_is_a_duplicate() {
        let mut states = ProducerStates::default();
        let first = batch(7, 0, 0, 10, 0);
        assert_eq!(states.check(&first), Ok(SequenceCheck::Append));
        states.record(&first);
        let second = batch(7, 0, 10, 5, 10);
        assert_eq!(states.check(&second), Ok(SequenceCheck::Append));
        states.record(&second);
        assert_eq!(
            states.check(&batch(7, 0, 0, 10, -1)),
            Ok(SequenceCheck::Duplicate { base_offset: 0 })
        );
    }

    #[test]
    fn a_gap_in_sequences_is_out_of_order() {
        let mut states = ProducerStates::default();
        states.record(&batch(7, 0, 0, 10, 0));
        assert_eq!(
            states.check(&batch(7, 0, 11, 1, -1)),
            Err(SequenceError::OutOfOrder {
                expected: 10,
                got: 11
            })
        );
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_restarts_at_zero() {
        let mut states = ProducerStates::default();
        states.record(&batch(7, 3, 0, 1, 0));
        assert!(matches!(
            states.check(&batch(7, 2, 1, 1, -1)),
            Err(SequenceError::StaleEpoch { .. })
        ));
        assert_eq!(
            states.check(&batch(7, 4, 0, 1, -1)),
            Ok(SequenceCheck::Append)
        );
        assert!(states.check(&batch(7, 4, 5, 1, -1)).is_err());
    }
}
