//! Replay: produce selected dead-letter records back to their original topics, rate-limited,
//! resumable, each record once in total across kills (see [`resume`] for how).

mod copy;
mod plan;
mod produce;
mod resume;
mod run;

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::record::RecordRef;

pub(crate) use self::run::replay_blocking;

/// Progress of a running replay, handed to [`ReplayOptions::with_progress`]'s callback after
/// every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayProgress {
    /// Selected records dealt with so far (replayed or found already replayed).
    pub done: u64,
    /// Selected records in all.
    pub total: u64,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(ReplayProgress) + Send + Sync>;

/// Which replay is running, handed to [`ReplayOptions::with_started`]'s callback once the
/// id is known and before anything is read, committed or produced: an interrupted run is
/// resumed with this id, which a `fresh` replay makes up at random.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayStarted {
    /// The replay id (stamped on every copy as `steadfast-replay-id`).
    pub replay_id: String,
    /// The consumer group holding the replay's position.
    pub group: String,
}

/// A start callback.
pub type StartedFn = Arc<dyn Fn(&ReplayStarted) + Send + Sync>;

/// How a replay runs. `Default`: no rate limit, produces, the replay id derived from the
/// selection, `steadfast-replayed-by` = `user@host`.
#[derive(Clone)]
pub struct ReplayOptions {
    /// At most this many records a second.
    pub rate: Option<NonZeroU32>,
    /// Produce nothing; report what would be replayed.
    pub dry_run: bool,
    /// The replay id; default: the selection's fingerprint (or a new one with `fresh`).
    pub replay_id: Option<String>,
    /// A new replay id (the fingerprint and a random suffix), so the selection is replayed
    /// again even where an earlier replay of it finished.
    pub fresh: bool,
    /// The topic every selected record is replayed into, named by the operator. Without it a
    /// record goes back to its original topic, and only to the topic the dead-letter topic is
    /// named after (`<topic>.dlq` holds records of `<topic>`): a record naming any other
    /// original topic refuses the replay ([`DlqError::ForeignOriginalTopic`]), so a record
    /// cannot choose where it is replayed to.
    ///
    /// [`DlqError::ForeignOriginalTopic`]: super::DlqError::ForeignOriginalTopic
    pub to: Option<String>,
    /// `steadfast-replayed-by`; default `user@host`.
    pub by: Option<String>,
    /// Called after every record.
    pub progress: Option<ProgressFn>,
    /// Called once before anything is produced (not in a dry run), with the replay id.
    pub started: Option<StartedFn>,
    /// Commit the position at least this often while producing.
    pub commit_interval: Duration,
    /// Commit the position at least every this many records.
    pub commit_every: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            rate: None,
            dry_run: false,
            replay_id: None,
            fresh: false,
            to: None,
            by: None,
            progress: None,
            started: None,
            commit_interval: Duration::from_secs(1),
            commit_every: 500,
        }
    }
}

impl fmt::Debug for ReplayOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayOptions")
            .field("rate", &self.rate)
            .field("dry_run", &self.dry_run)
            .field("replay_id", &self.replay_id)
            .field("fresh", &self.fresh)
            .field("to", &self.to)
            .field("by", &self.by)
            .field("progress", &self.progress.as_ref().map(|_| "callback"))
            .field("started", &self.started.as_ref().map(|_| "callback"))
            .field("commit_interval", &self.commit_interval)
            .field("commit_every", &self.commit_every)
            .finish()
    }
}

impl ReplayOptions {
    /// At most `per_second` records a second.
    pub fn with_rate(mut self, per_second: NonZeroU32) -> Self {
        self.rate = Some(per_second);
        self
    }
    /// Produce nothing; report what would be replayed.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
    /// This replay id.
    pub fn with_replay_id(mut self, id: impl Into<String>) -> Self {
        self.replay_id = Some(id.into());
        self
    }
    /// A new replay id, so the selection is replayed again.
    pub fn with_fresh(mut self, fresh: bool) -> Self {
        self.fresh = fresh;
        self
    }
    /// Replays every selected record into `topic` (see [`ReplayOptions::to`]).
    pub fn with_to(mut self, topic: impl Into<String>) -> Self {
        self.to = Some(topic.into());
        self
    }
    /// `steadfast-replayed-by`.
    pub fn with_by(mut self, by: impl Into<String>) -> Self {
        self.by = Some(by.into());
        self
    }
    /// Calls `f` after every record.
    pub fn with_progress(mut self, f: impl Fn(ReplayProgress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }
    /// Calls `f` once the replay id is known, before anything is produced (not in a dry
    /// run): the place to tell the user the id a `fresh` replay resumes under.
    pub fn with_started(mut self, f: impl Fn(&ReplayStarted) + Send + Sync + 'static) -> Self {
        self.started = Some(Arc::new(f));
        self
    }
}

/// One record a replay produced (or, in a dry run, would produce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayedRecord {
    /// The dead-letter record.
    pub of: RecordRef,
    /// Its key as `dlq list` shows it: text when UTF-8, else `hex:` and its bytes in hex.
    pub key: String,
    /// The topic it goes back to.
    pub topic: String,
    /// The partition it goes to: its original one when the topic has it, else the key's.
    pub partition: Option<i32>,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// The replay id (stamped on every copy as `steadfast-replay-id`).
    pub replay_id: String,
    /// The consumer group holding the replay's position.
    pub group: String,
    /// Whether this was a dry run (nothing produced, nothing committed).
    pub dry_run: bool,
    /// Selected records not yet covered by the committed position when this run began.
    pub selected: u64,
    /// Records this replay id had replayed before this run (committed, or found in the
    /// target topics after a kill); they are not replayed again.
    pub already_replayed: u64,
    /// Of those, the ones found in the target topics past the last commit (produced by an
    /// interrupted run after its last commit).
    pub found_past_commit: u64,
    /// What this run replayed (in a dry run: would replay), in dead-letter order.
    pub replayed: Vec<ReplayedRecord>,
}
