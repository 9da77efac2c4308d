//! The dispatcher: per partition an [`OffsetTracker`], per key a FIFO lane (one key strictly
//! sequential, other keys concurrent up to the concurrency bound), bounds that pause fetching
//! when reached and resume it when drained, and the parking of keys whose record sits in a
//! retry tier (strict ordering).
//!
//! Pure state: it decides which jobs start and which partitions to pause or resume; the
//! worker carries the decisions out. Lanes are freed when empty, so memory follows the
//! in-flight bound, not the number of distinct keys ever seen.
//!
//! ## Why no bound can wedge the worker
//!
//! Delivered, unfinished records fall in three classes, each with its own bound:
//!
//! - *source records that can run*: running, ready, or queued behind a running record of
//!   their key. At `max_in_flight` of them the consume loop stops taking records (and after a
//!   while pauses every partition, polling on). Each of them finishes without any record that
//!   is not yet delivered: a running handler ends, and the next of its lane starts.
//! - *parked records*: source records queued behind a key parked for a retry-tier record.
//!   They do not count against `max_in_flight` (they wait for a record that may not be
//!   delivered yet) and pause nothing: past `max_per_key` of one key or `max_in_flight` in
//!   all, a parked key's next records are let go and read again once it runs (`parking`).
//! - *retry-tier records*: never parked and never queued behind a source record, so each
//!   finishes by itself (a held one when it is due). At `max_in_flight` of them only the tier
//!   partitions pause.
//!
//! So whatever the bounds, the record a parked key waits for can be fetched: the source
//! records that can run drain by themselves and reopen the loop, parked records never close
//! it, and tier partitions are never paused by source records. A full key lane that can run
//! (`max_per_key`) pauses only its own partition; a parked one pauses nothing. A key is parked only while the tier
//! partition its record went to is assigned to this worker, so the record it waits for is
//! fetched here.
//!
//! One key's source record and its retry-tier records queue in different lanes, and an
//! abandoned job of a revoked partition may still run when the partition comes back; still,
//! two jobs whose records share a first-delivery lane never run at once: the later one waits
//! until the running one ends. It waits only for a *running* job, which ends by itself, so
//! this wait cannot wedge either. A first delivery's job is seen by its lane's `running` flag;
//! only the jobs that flag cannot show (a retry-tier record's, an abandoned one whose lane was
//! dropped at its revoke) are counted apart, so a worker without retry tiers keeps no
//! bookkeeping per record for this.
//!
//! ## Where each concern lives
//!
//! The state, each part with its own rules: [`dispatcher`] (the whole, its bounds and
//! counts), [`lanes`] (key lanes), [`partitions`] (offsets, epochs, held and deferred records,
//! commits), [`pause`] (pause state and decisions), and the parked keys (`tiers::parking`).
//! What the dispatcher does with it, one concern a file:
//!
//! - [`flow`]: a record taken in, its job's outcome recorded;
//! - [`schedule`]: which queued record starts next;
//! - [`assignment`]: assignments, the hand-over of what was read back, revokes;
//! - [`parking`]: keys held back while a record of theirs sits in a retry tier;
//! - [`bounds`]: the bounds and the pause and resume decisions they lead to;
//! - [`view`]: what the stall detector sees.

mod assignment;
mod bounds;
mod dispatcher;
mod flow;
mod job;
mod lanes;
mod parking;
mod partitions;
mod pause;
mod schedule;
#[cfg(test)]
pub(crate) mod testing;
mod view;

pub(crate) use self::assignment::{PendingTierRecord, Recovered};
pub(crate) use self::dispatcher::{Dispatcher, Limits};
pub(crate) use self::job::{Accepted, Job, TopicPartition};
pub(crate) use self::lanes::LaneKey;
