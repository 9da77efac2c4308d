//! The policy stack every message goes through, as tower layers in a fixed order (outermost
//! first): trace → route (retry tiers, dead-letter topic) → retry in place → timeout → handler.
//! Every layer is a `Service<Envelope, Response = Outcome, Error = Infallible>`: a failure is
//! a value ([`Outcome::Failed`]), never an error that escapes.

pub mod headers;
mod retry;
mod route;
mod sink;
mod timeout;
mod trace;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

pub use self::retry::{Retry, RetryLayer, RetryService};
pub use self::route::{RetryTiers, RouteLayer, RouteService};
pub use self::sink::{MemorySink, OutgoingRecord, Sink, SinkError};
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
