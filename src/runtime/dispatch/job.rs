//! What the dispatcher hands out and answers: a job to run, what became of a delivered
//! record, and the topic-partition pair everything is keyed by.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::lanes::LaneKey;
use crate::message::Envelope;

/// A topic and partition.
pub(crate) type TopicPartition = (Arc<str>, i32);

/// A message to hand to the policy stack.
#[derive(Debug)]
pub(crate) struct Job {
    /// The lane the record was queued in.
    pub(crate) lane: LaneKey,
    /// The assignment of its partition the job belongs to.
    pub(crate) epoch: u64,
    /// The record.
    pub(crate) envelope: Envelope,
    /// For a retry-tier record, the source lane of its first delivery, which this job holds
    /// busy until it ends (computed once, when the job starts); `None` for a first delivery,
    /// whose own lane's `running` flag stands for it.
    pub(crate) origin: Option<LaneKey>,
    /// Cancelled when the job is abandoned: its partition was lost, or revoked while it still
    /// ran at the drain deadline. An abandoned job must publish no copy any more (the next
    /// owner may already have read back the tiers and handles the record itself). Shared by
    /// the jobs of one assignment of a partition (an `Arc`: handing it to a job is a count,
    /// not a lock of the token's own tree).
    pub(crate) abandoned: Arc<CancellationToken>,
}

/// What became of a delivered message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Queued in its lane (and possibly started).
    Queued,
    /// Finished before the last commit, or copied to a tier or the dead-letter topic
    /// already: skipped.
    AlreadyFinished,
    /// A retry-tier message that is not due: held, its partition paused until `due_ms`.
    Held { due_ms: i64, epoch: u64 },
    /// Its partition is not assigned (a message from before a revoke): ignored.
    NotAssigned,
    /// Its partition's retry state is still being read back: kept until it is.
    Deferred,
    /// A retry-tier record another consumer group routed (shared tier names): skipped.
    OtherGroup,
    /// Delivered before and read again because records of a parked key were let go and are
    /// read back (see `spill`): skipped.
    ReadAgain,
}
