//! The policy stack every message goes through, in a fixed order (outermost first): trace →
//! route (retry tiers, dead-letter topic) → facts → stale drop → breaker → rate limit → key
//! lock → dedup → retry in place → the attempt's span → the user's layers → timeout →
//! handler. The protective layers (facts to dedup) are present only when configured; the
//! order is `STACK`'s. Where the stale check, the lock and dedup share one Redis, one policy
//! (`guarded.rs`) stands in the lock's place instead of the three, with one store call each
//! way.
//!
//! Each policy is a `Policy` (see `adapter.rs`): its logic around the rest of the stack, which
//! it calls through `Next`. The stack as a whole is a tower service ([`BoxedStack`],
//! `Service<Envelope, Response = Outcome, Error = Infallible>`): a failure is a value
//! ([`crate::message::Outcome::Failed`]), never an error that escapes.
//!
//! A new policy is one file here: its logic and a `build` function that makes it from the
//! worker's `Assembly` (its settings, stores, sink, meters) or returns `None` where it is off;
//! then its line in `STACK` and its table in the configuration.

mod adapter;
mod breaker;
mod clock;
mod dedup;
mod facts;
mod guarded;
mod kept_leases;
mod lock;
mod on_drop;
mod outage;
mod panics;
mod ratelimit;
mod retry;
mod route;
mod sink;
mod stack;
mod stale;
mod tier_topics;
mod timeout;
mod trace;

pub(crate) use self::adapter::Next;
use self::adapter::Wrap;
pub use self::adapter::{BoxedStack, OutcomeFuture};
pub use self::breaker::dependencies::Dependencies;
pub use self::breaker::state::{Breaker, BreakerPhase, BreakerSettings, BreakerState, Permit};
pub(crate) use self::clock::now_ms;
pub use self::facts::describe;
pub(crate) use self::kept_leases::KeptLeases;
pub(crate) use self::lock::{keep_for, lease_length};
pub(crate) use self::outage::{outage_backoff, restart_on_error};
pub use self::retry::Retry;
pub(crate) use self::route::abandonable;
pub use self::sink::{MemorySink, OutgoingRecord, Sink, SinkError};
pub(crate) use self::stack::{Assembly, Routing};
pub use self::stack::{Describe, UserLayer};
pub use self::stale::stale_topic;
pub use self::tier_topics::{RetryTiers, TierNames};
pub(crate) use self::timeout::timed_out;

/// The stack's order, outermost first: each entry builds its policy from the worker's
/// [`Assembly`], or `None` where the policy is off. A new policy is a file of this module
/// with a `build` function, and its line here.
pub(crate) const STACK: &[fn(&Assembly<'_>) -> Option<Wrap>] = &[
    trace::build,
    route::build,
    panics::build,
    facts::build,
    stale::build,
    breaker::build,
    ratelimit::build,
    lock::build,
    guarded::build,
    dedup::build,
    retry::build,
    trace::attempt,
    stack::user_layers,
    timeout::build,
];

pub use crate::message::headers;
pub use crate::message::Failure;

/// The stack: every policy of [`STACK`] that is on in `assembly`, around `handler`.
pub(crate) fn assemble(assembly: &Assembly<'_>, handler: Next) -> BoxedStack {
    let next = STACK
        .iter()
        .rev()
        .filter_map(|build| build(assembly))
        .fold(handler, |next, wrap| wrap(next));
    BoxedStack::new(next)
}
