//! Reading a consumer's messages many at a time (`rd_kafka_consume_batch_queue`, what
//! confluent-kafka's `Consumer.consume(num_messages)` calls), instead of one
//! `BaseConsumer::poll` per message: the per-message event, its `Arc` and the clock reads of
//! the poll loop are the consuming thread's largest costs at millions of messages a second,
//! and the benchmark is there to measure the servers.

use std::time::Duration;

use anyhow::{bail, Result};
use rdkafka::consumer::BaseConsumer;
use rdkafka_sys as rdsys;

/// The consumer's queue, read in batches; borrows the consumer so that it outlives the queue.
pub(crate) struct BatchReader<'a> {
    /// `rd_kafka_queue_get_consumer`'s handle, destroyed on drop.
    queue: *mut rdsys::rd_kafka_queue_t,
    /// Where librdkafka puts a batch's messages.
    slots: Vec<*mut rdsys::rd_kafka_message_t>,
    _consumer: &'a BaseConsumer,
}

/// What one batch held.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Batch {
    /// Messages read.
    pub(crate) messages: u64,
    /// Their payloads' bytes.
    pub(crate) bytes: u64,
}

impl<'a> BatchReader<'a> {
    /// A reader of `consumer`'s queue (the queue its assigned partitions deliver to), at most
    /// `size` messages a batch.
    pub(crate) fn new(consumer: &'a BaseConsumer, size: usize) -> Result<Self> {
        use rdkafka::consumer::Consumer as _;
        // SAFETY: the client pointer is valid while `consumer` lives, which the borrow
        // guarantees; the returned handle is released in `drop`.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        if queue.is_null() {
            bail!("the consumer has no consumer queue (is group.id set?)");
        }
        Ok(BatchReader {
            queue,
            slots: vec![std::ptr::null_mut(); size.max(1)],
            _consumer: consumer,
        })
    }

    /// Reads up to `limit` (and the reader's size) messages, waiting up to `timeout` for them,
    /// counts them and frees them. Fails on the first message that carries an error.
    pub(crate) fn read(&mut self, limit: u64, timeout: Duration) -> Result<Batch> {
        let want = self
            .slots
            .len()
            .min(usize::try_from(limit).unwrap_or(usize::MAX));
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `slots` has room for `want` pointers; librdkafka fills the first `got`.
        let got = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue,
                timeout_ms,
                self.slots.as_mut_ptr(),
                want,
            )
        };
        let Ok(got) = usize::try_from(got) else {
            bail!("rd_kafka_consume_batch_queue failed");
        };
        let mut batch = Batch::default();
        let mut error = None;
        for &message in &self.slots[..got] {
            // SAFETY: each of the first `got` slots holds a message librdkafka handed over,
            // destroyed exactly once here.
            unsafe {
                let err = (*message).err;
                if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    && err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF
                {
                    error.get_or_insert(err);
                } else if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    batch.messages += 1;
                    batch.bytes += (*message).len as u64;
                }
                rdsys::rd_kafka_message_destroy(message);
            }
        }
        match error {
            Some(err) => bail!("a message carried an error: {err:?}"),
            None => Ok(batch),
        }
    }
}

impl Drop for BatchReader<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_get_consumer` and is released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) };
    }
}
