//! The policy stack every message goes through, as tower layers in a fixed order (outermost
//! first): trace → route (retry tiers, dead-letter topic) → facts → stale drop → breaker →
//! rate limit → key lock → dedup → retry in place → the user's layers → timeout → handler.
//! The protective layers (facts to dedup) are present only when configured; the order is
//! [`STACK`]'s.
//! Every layer is a `Service<Envelope, Response = Outcome, Error = Infallible>`: a failure is
//! a value ([`Outcome::Failed`]), never an error that escapes.

mod adapter;
mod breaker;
mod dedup;
mod facts;
pub mod headers;
mod lock;
mod outage;
mod ratelimit;
mod retry;
mod route;
mod sink;
mod stack;
mod stale;
mod timeout;
mod trace;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

pub(crate) use self::adapter::Next;
use self::adapter::Wrap;
pub use self::breaker::{Breaker, BreakerPhase, BreakerSettings, BreakerState, Permit};
pub use self::facts::{describe, Describe};
pub(crate) use self::outage::outage_backoff;
pub use self::retry::Retry;
pub(crate) use self::route::{abandonable, Routing};
pub use self::route::{RetryTiers, TierNames};
pub use self::sink::{MemorySink, OutgoingRecord, Sink, SinkError};
pub(crate) use self::stack::Assembly;
pub use self::stack::UserLayer;
pub use self::stale::stale_topic;

/// The stack's order, outermost first: each entry builds its policy from the worker's
/// [`Assembly`], or `None` where the policy is off. A new policy is a file of this module
/// with a `build` function, and its line here.
pub(crate) const STACK: &[fn(&Assembly<'_>) -> Option<Wrap>] = &[
    trace::build,
    route::build,
    facts::build,
    stale::build,
    breaker::build,
    ratelimit::build,
    lock::build,
    dedup::build,
    retry::build,
    stack::user_layers,
    timeout::build,
];

pub use crate::message::Failure;
use crate::message::{Envelope, Outcome};

/// The future every policy service returns.
pub type OutcomeFuture = Pin<Box<dyn Future<Output = Result<Outcome, Infallible>> + Send>>;

/// The boxed service at the top of a stack.
pub type BoxedStack = tower::util::BoxCloneSyncService<Envelope, Outcome, Infallible>;

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
