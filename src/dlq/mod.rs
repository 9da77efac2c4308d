//! The dead-letter queue tooling: [`Dlq::list`] the records of a dead-letter topic through a
//! [`Selection`], [`Dlq::show`] one with every provenance header decoded, and
//! [`Dlq::replay`] a selection back to the original topics.
//!
//! ```no_run
//! use steadfast::dlq::{Dlq, ErrorClass, ReplayOptions, Selection};
//!
//! # async fn run() -> Result<(), steadfast::dlq::DlqError> {
//! let dlq = Dlq::new("127.0.0.1:9092");
//! let selection = Selection::new("orders.dlq").with_error_class(ErrorClass::Permanent);
//! for record in dlq.list(&selection).await? {
//!     println!("{}/{} {:?}", record.partition, record.offset, record.error_message);
//! }
//! let report = dlq.replay(&selection, ReplayOptions::default()).await?;
//! println!("replayed {}", report.replayed.len());
//! # Ok(()) }
//! ```
//!
//! **Reading.** A listing reads every partition of the dead-letter topic from its start to
//! the high watermark it has when the listing begins, with an assigned consumer: no group
//! membership, nothing committed. The time filters compare the failure time: the
//! `steadfast-last-failure-at` header, or the record's own timestamp when that is missing.
//! Keys and values are shown as text when they are UTF-8, else as lowercase hex.
//!
//! **Replaying.** Each selected record is produced to its original topic (to its original
//! partition when the topic still has it, else where its key hashes), key and value unchanged,
//! headers kept (a null value stays null; the worker itself writes a header that was null on
//! the source record as an empty value on its retry-tier and dead-letter copies) except the
//! per-delivery state (`steadfast-attempts`, `steadfast-retry-tier`, `steadfast-due-at`), so it
//! starts fresh through the normal stack, dedup and stale checks included. The copy gains
//! `steadfast-replayed-by`, `steadfast-replayed-at`, `steadfast-replay-of` (`<dlq
//! topic>/<partition>/<offset>`) and `steadfast-replay-id`. A selected record without
//! `steadfast-original-topic` refuses the whole replay before anything is produced, and so
//! does one whose original topic is not the topic the dead-letter topic is named after
//! (`orders.dlq` replays into `orders` only): the worker writes provenance from the delivery
//! itself and sets aside such headers arriving on a source record, but a record written into
//! the dead-letter topic by other means could still name any topic. Naming the target
//! ([`ReplayOptions::with_to`]; `--to` on the command line) replays every selected record
//! there instead: the way to replay from a dead-letter topic with a configured name.
//!
//! **Resuming, each record once.** A replay has an id: by default the fingerprint of its
//! selection, so running the same command again continues (or, once finished, replays
//! nothing); a fresh id replays the selection again. The position is committed as offsets
//! of the dead-letter partitions under the group `steadfast-replay-<id>`, only after every
//! copy below it was acknowledged by the broker (the producer is idempotent, so its own
//! retries add no copies). The commit's metadata notes, for each target partition that a
//! record not yet covered can still go to, an offset below which no copy made after the
//! commit can sit; the note is spread over the commit entries of the dead-letter partitions
//! at most 4000 bytes each (brokers refuse more than `offset.metadata.max.bytes`, 4096 by
//! default), and a selection whose note would not fit even so (hundreds of target partitions
//! per dead-letter partition) is refused before anything is produced. A run killed between
//! two commits has produced copies the position does not cover; the next run reads the
//! target partitions from the noted offsets to their end and skips every record whose copy
//! it finds there (same `steadfast-replay-id`, `steadfast-replay-of` at or above the
//! position). So a record is either below the position (acknowledged), or found, or
//! replayed: once in total. The one window left is a produce request still in flight at the
//! broker when the process died and appended only after the next run has read the target
//! partitions.
//!
//! **One run per replay id at a time.** Nothing makes a replay exclusive: its consumer is
//! assigned, not a group member, so two runs with the same id at once (the same command
//! started twice) both read the same position and both produce: every record they both reach
//! is replayed twice, and their commits overwrite each other. Run one at a time (a worker
//! with dedup drops a copy made twice, one without applies it twice).

mod error;
mod record;
mod replay;
mod scan;
pub use self::scan::is_group_error;
mod selection;

use rdkafka::config::ClientConfig;

pub use self::error::DlqError;
pub use self::record::{DlqRecord, ErrorClass, Original, RecordRef, Shown};
pub use self::replay::{
    ProgressFn, ReplayOptions, ReplayProgress, ReplayReport, ReplayStarted, ReplayedRecord,
    StartedFn,
};
pub use self::selection::Selection;

/// A connection to the brokers for the dead-letter tooling. Every call runs its blocking
/// librdkafka work on a blocking thread.
#[derive(Debug, Clone)]
pub struct Dlq {
    config: ClientConfig,
}

impl Dlq {
    /// Tooling for the brokers at `bootstrap` (`host:port[,host:port…]`).
    pub fn new(bootstrap: impl Into<String>) -> Self {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap.into());
        Dlq { config }
    }

    /// Sets a librdkafka property (security settings, timeouts) on every client it creates.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.set(key.into(), value.into());
        self
    }

    /// The selected records, in dead-letter order (partition, then offset).
    pub async fn list(&self, selection: &Selection) -> Result<Vec<DlqRecord>, DlqError> {
        let config = self.config.clone();
        let selection = selection.clone();
        blocking(move || list_blocking(&config, &selection)).await
    }

    /// The record at `topic`/`partition`/`offset`.
    pub async fn show(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<DlqRecord, DlqError> {
        let config = self.config.clone();
        let topic = topic.to_owned();
        blocking(move || show_blocking(&config, &topic, partition, offset)).await
    }

    /// Replays the selected records to their original topics (see the module docs).
    pub async fn replay(
        &self,
        selection: &Selection,
        options: ReplayOptions,
    ) -> Result<ReplayReport, DlqError> {
        let config = self.config.clone();
        let selection = selection.clone();
        blocking(move || replay::replay_blocking(&config, &selection, &options)).await
    }
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DlqError> + Send + 'static,
) -> Result<T, DlqError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DlqError::Task(e.to_string()))?
}

fn list_blocking(config: &ClientConfig, selection: &Selection) -> Result<Vec<DlqRecord>, DlqError> {
    selection.validate()?;
    let consumer = scan::reader(config, None)?;
    let partitions = scan::partitions(&consumer, &selection.topic)?;
    let starts = partitions
        .iter()
        .map(|p| ((selection.topic.clone(), *p), None))
        .collect();
    let mut out = Vec::new();
    scan::read_to_end(&consumer, &starts, |m| {
        let r = scan::record_of(m);
        if selection.matches(&r) {
            out.push(r);
        }
    })?;
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

fn show_blocking(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<DlqRecord, DlqError> {
    let missing = |reason: String| DlqError::NoSuchRecord {
        topic: topic.to_owned(),
        partition,
        offset,
        reason,
    };
    let consumer = scan::reader(config, None)?;
    let partitions = scan::partitions(&consumer, topic)?;
    if !partitions.contains(&partition) {
        return Err(missing(format!(
            "the topic has partitions 0..{}",
            partitions.len()
        )));
    }
    let (low, high) = scan::watermarks(&consumer, topic, partition)?;
    if offset < low || offset >= high {
        return Err(missing(format!(
            "the partition holds offsets {low}..{high}"
        )));
    }
    let found = scan::read_one(&consumer, topic, partition, offset)?;
    found.ok_or_else(|| missing("no data record there (a gap in the log)".into()))
}
