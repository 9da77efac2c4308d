//! Per-partition queues: each partition of the source topic and of its retry tiers is read
//! from a queue of its own, and the consume loop takes records from them in turn. With the
//! one queue librdkafka hands records in by default, a fetch's records come partition after
//! partition, so the in-flight window filled with the backlog of whichever partition came
//! first and the keys of the others waited; taken in turn, the window holds records of every
//! partition that has some.
//!
//! A partition is split from the main queue before the first poll (a record delivered
//! through the main queue before the split could otherwise run after a later one of its
//! partition) and stays split for the consumer's life: librdkafka keeps a queue the
//! application split across later assignments. Partitions the worker does not know at start
//! (a topic grown since) come through the main queue, which the loop polls as before for
//! rebalances, errors and such records.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use futures::Stream;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{MessageStream, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;

use crate::runtime::rebalance::WorkerContext;

/// The most partitions (source and retry tiers together) a worker splits into queues of
/// their own. Each split partition prefetches on its own account, so past this the worker
/// keeps librdkafka's one queue and its one prefetch bound.
pub(super) const MAX_SPLIT_PARTITIONS: usize = 64;

/// The fewest records a split partition prefetches.
const MIN_PARTITION_PREFETCH: usize = 100;

/// librdkafka's default bound on the prefetched bytes of a queue (`queued.max.messages.kbytes`):
/// shared out among the split partitions, so the worker's prefetch stays within it.
const PREFETCH_KBYTES: usize = 65_536;

/// A split partition's queue.
pub(super) type PartitionQueue = StreamPartitionQueue<WorkerContext>;

/// How many partitions the worker splits: every partition of `topics` (each has
/// `partitions`), or none when there are more than [`MAX_SPLIT_PARTITIONS`].
pub(super) fn split_count(topics: usize, partitions: i32) -> usize {
    let n = topics.saturating_mul(usize::try_from(partitions).unwrap_or(0));
    if n <= MAX_SPLIT_PARTITIONS {
        n
    } else {
        0
    }
}

/// The consumer's prefetch bounds (`queued.min.messages`, and `queued.max.messages.kbytes`
/// when it changes) for an in-flight bound of `max_in_flight` records and `split` split
/// partitions: about twice the bound in all, shared out among the split partitions.
pub(super) fn prefetch(max_in_flight: usize, split: usize) -> (usize, Option<usize>) {
    let total = max_in_flight.saturating_mul(2);
    if split == 0 {
        return (total.max(1_000), None);
    }
    (
        total.div_ceil(split).max(MIN_PARTITION_PREFETCH),
        Some(PREFETCH_KBYTES / split),
    )
}

/// Splits every partition of `topics` (each has `partitions`) into a queue of its own.
/// Called before the consumer's first poll.
pub(super) fn split(
    consumer: &Arc<StreamConsumer<WorkerContext>>,
    topics: &[&str],
    partitions: i32,
) -> Vec<PartitionQueue> {
    let mut queues = Vec::new();
    for topic in topics {
        for partition in 0..partitions {
            match consumer.split_partition_queue(topic, partition) {
                Some(queue) => queues.push(queue),
                None => tracing::warn!(
                    topic,
                    partition,
                    "the partition could not be split: its records come through the main queue"
                ),
            }
        }
    }
    queues
}

/// Takes records (and events) from the consumer's queues: the main queue first whenever it
/// has something (rebalances, errors, records of partitions not split: served as soon as
/// they come, as with one queue), then the split partitions' queues in turn. A queue that
/// was found empty is not polled again until librdkafka reports something in it: polling
/// an empty queue costs two polls and a lock, and most queues (the retry tiers', and the
/// main queue once every partition is split) are empty most of the time.
pub(super) struct InTurn<'a> {
    /// The main queue's stream, then the split partitions'.
    streams: Vec<MessageStream<'a, WorkerContext>>,
    /// One waker a queue: marks it ready and wakes the loop.
    wakers: Vec<Waker>,
    ready: Arc<Readiness>,
    /// The partition queue to look at first next time: the one after the last that gave a
    /// record.
    next: usize,
}

/// Which queues may hold something, and the loop's task to wake when one does.
struct Readiness {
    queues: Vec<AtomicBool>,
    task: AtomicWaker,
}

/// The waker handed to librdkafka's queue `index`.
struct QueueWaker {
    index: usize,
    ready: Arc<Readiness>,
}

impl Wake for QueueWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.queues[self.index].store(true, Ordering::Release);
        self.ready.task.wake();
    }
}

impl<'a> InTurn<'a> {
    /// Reads `consumer`'s main queue and its split partitions' `queues`.
    pub(super) fn new(
        consumer: &'a StreamConsumer<WorkerContext>,
        queues: &'a [PartitionQueue],
    ) -> Self {
        let streams: Vec<_> = std::iter::once(consumer.stream())
            .chain(queues.iter().map(PartitionQueue::stream))
            .collect();
        let ready = Arc::new(Readiness {
            queues: streams.iter().map(|_| AtomicBool::new(true)).collect(),
            task: AtomicWaker::new(),
        });
        let wakers = (0..streams.len())
            .map(|index| {
                Waker::from(Arc::new(QueueWaker {
                    index,
                    ready: ready.clone(),
                }))
            })
            .collect();
        InTurn {
            streams,
            wakers,
            ready,
            next: 0,
        }
    }

    /// The next record (or error) of the main queue when it has one, else of the first
    /// partition queue, from where the last one left off, that has one.
    pub(super) async fn recv(&mut self) -> KafkaResult<BorrowedMessage<'a>> {
        poll_fn(|cx| {
            self.ready.task.register(cx.waker());
            if let Poll::Ready(received) = self.poll_queue(0) {
                return Poll::Ready(received);
            }
            let n = self.streams.len() - 1;
            for i in 0..n {
                let at = (self.next + i) % n;
                if let Poll::Ready(received) = self.poll_queue(at + 1) {
                    self.next = (at + 1) % n;
                    return Poll::Ready(received);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Polls queue `index` when it may hold something.
    fn poll_queue(&mut self, index: usize) -> Poll<KafkaResult<BorrowedMessage<'a>>> {
        // Cleared before the poll: whatever lands after it marks it again.
        if !self.ready.queues[index].swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut queue_cx = Context::from_waker(&self.wakers[index]);
        match Pin::new(&mut self.streams[index]).poll_next(&mut queue_cx) {
            Poll::Ready(Some(received)) => {
                // It may hold more.
                self.ready.queues[index].store(true, Ordering::Release);
                Poll::Ready(received)
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_past_the_limit_are_not_split() {
        assert_eq!(split_count(4, 16), 64);
        assert_eq!(split_count(1, 65), 0);
        assert_eq!(split_count(3, 0), 0);
        assert_eq!(split_count(2, -1), 0);
    }

    #[test]
    fn the_prefetch_is_shared_out_among_split_partitions() {
        assert_eq!(prefetch(2_048, 0), (4_096, None));
        assert_eq!(prefetch(100, 0), (1_000, None));
        assert_eq!(prefetch(2_048, 12), (342, Some(5_461)));
        assert_eq!(prefetch(100, 64), (100, Some(1_024)));
    }
}
