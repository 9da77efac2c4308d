//! The errors of the dead-letter tooling: what went wrong and what the user can do about it.

/// A failure of [`list`](super::Dlq::list), [`show`](super::Dlq::show) or
/// [`replay`](super::Dlq::replay).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// The topic does not exist on the broker.
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    /// The original topic of selected records does not exist, so they cannot be replayed.
    #[error("the original topic `{topic}` of {count} selected record(s) does not exist; create it or leave those records out of the selection")]
    UnknownOriginalTopic {
        /// The missing topic.
        topic: String,
        /// How many selected records name it.
        count: usize,
    },
    /// Selected records name an original topic other than the one the dead-letter topic is
    /// named after (or the dead-letter topic follows no naming rule), and no target was named:
    /// a record cannot choose where it is replayed to.
    #[error("{count} selected record(s) name an original topic that is not {expected} (the first: {topic}/{partition}/{offset} names `{named}`); a record cannot choose where it is replayed to: leave them out of the selection (an original-topic filter), or name the target topic explicitly (--to)")]
    ForeignOriginalTopic {
        /// How many selected records name another topic.
        count: usize,
        /// What was expected, for the message: the source topic, or why none is known.
        expected: String,
        /// The dead-letter topic.
        topic: String,
        /// Partition of the first such record.
        partition: i32,
        /// Offset of the first such record.
        offset: i64,
        /// The original topic the first one names.
        named: String,
    },
    /// The selection's filters contradict each other or are out of range.
    #[error("invalid selection: {0}")]
    InvalidSelection(String),
    /// No record at that position.
    #[error("no record at {topic}/{partition}/{offset}: {reason}")]
    NoSuchRecord {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset.
        offset: i64,
        /// Why (out of range, a gap in the log, no such partition).
        reason: String,
    },
    /// Selected records lack the original-topic header, so there is nowhere to replay them.
    #[error("{count} selected record(s) have no `steadfast-original-topic` header, so there is nowhere to replay them (the first: {topic}/{partition}/{offset}); narrow the selection, for instance with an original-topic filter")]
    MissingOriginalTopic {
        /// How many selected records lack it.
        count: usize,
        /// The dead-letter topic.
        topic: String,
        /// Partition of the first such record.
        partition: i32,
        /// Offset of the first such record.
        offset: i64,
    },
    /// The replay id has progress recorded for another selection.
    #[error("replay id `{id}` belongs to another selection (selection {recorded}, this one {current}); use another replay id, or a fresh one")]
    ReplayIdInUse {
        /// The replay id.
        id: String,
        /// The selection fingerprint recorded with the id's progress.
        recorded: String,
        /// The fingerprint of this selection.
        current: String,
    },
    /// The recorded progress of a replay could not be understood.
    #[error("the progress recorded for replay `{id}` cannot be read: {reason}")]
    BadProgress {
        /// The replay id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The replay's progress note names more target partitions than the commit entries of
    /// the dead-letter partitions can carry; refused before anything is produced.
    #[error("the replay would have to note {targets} target partitions in its progress, more than the commit metadata of the {dlq_partitions} dead-letter partition(s) holds ({limit} bytes each, under Kafka's default `offset.metadata.max.bytes` of 4096); narrow the selection, for instance with an original-topic or original-partition filter")]
    ProgressTooLarge {
        /// Target partitions the note would name.
        targets: usize,
        /// Partitions of the dead-letter topic (one commit entry each).
        dlq_partitions: usize,
        /// The bytes of metadata one commit entry may carry.
        limit: usize,
    },
    /// A broker request failed.
    #[error("{context}: {source}")]
    Broker {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A replayed record was not acknowledged; a rerun with the same replay id resumes.
    #[error("producing the copy of {of} to {topic} failed: {reason}; run the replay again with `--replay-id {replay_id}` to resume")]
    Produce {
        /// The dead-letter record (`<topic>/<partition>/<offset>`).
        of: String,
        /// The target topic.
        topic: String,
        /// What the client said.
        reason: String,
        /// The replay id to resume under.
        replay_id: String,
    },
    /// Reading stopped making progress.
    #[error("timed out {0}")]
    Timeout(String),
    /// The blocking task that talks to the broker failed.
    #[error("the broker task failed: {0}")]
    Task(String),
}

impl DlqError {
    /// A broker error with what was being done.
    pub(crate) fn broker(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        DlqError::Broker {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_produce_names_the_replay_id_to_resume_with() {
        let e = DlqError::Produce {
            of: "orders.dlq/0/7".into(),
            topic: "orders".into(),
            reason: "Message timed out".into(),
            replay_id: "4df71be70eee58e3-0a1b2c3d4e5f".into(),
        };
        assert!(
            e.to_string().ends_with(
                "run the replay again with `--replay-id 4df71be70eee58e3-0a1b2c3d4e5f` to resume"
            ),
            "{e}"
        );
    }
}
