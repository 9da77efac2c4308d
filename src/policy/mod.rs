//! The policy stack every message goes through, as tower layers in a fixed order (outermost
//! first): trace → route (retry tiers, dead-letter topic) → facts → stale drop → breaker →
//! rate limit → key lock → dedup → retry in place → timeout → handler. The protective layers
//! (facts to dedup) are present only when configured.
//! Every layer is a `Service<Envelope, Response = Outcome, Error = Infallible>`: a failure is
//! a value ([`Outcome::Failed`]), never an error that escapes.

mod breaker;
mod dedup;
mod facts;
pub mod headers;
mod lock;
mod outage;

pub(crate) use self::outage::outage_backoff;
mod ratelimit;
mod retry;
mod route;
mod sink;
mod stale;
mod timeout;
mod trace;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

pub use self::breaker::{
    Breaker, BreakerLayer, BreakerPhase, BreakerService, BreakerSettings, BreakerState, Permit,
};
pub use self::dedup::{DedupLayer, DedupService};
pub use self::facts::{describe, Describe, FactsLayer, FactsService};
pub use self::lock::{KeyLockLayer, KeyLockService};
pub use self::ratelimit::{RateLimitLayer, RateLimitService};
pub use self::retry::{Retry, RetryLayer, RetryService};
pub(crate) use self::route::abandonable;
pub use self::route::{RetryTiers, RouteLayer, RouteService, TierNames};
pub use self::sink::{MemorySink, OutgoingRecord, Sink, SinkError};
pub use self::stale::{stale_topic, StaleLayer, StaleService};
pub use self::timeout::{TimeoutLayer, TimeoutService};
pub use self::trace::{TraceLayer, TraceService};

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
