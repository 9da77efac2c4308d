//! The worker runtime: the builder, the consume loop, the dispatcher with its key lanes, the
//! offset tracking with finished-offset commits, rebalance drains and graceful shutdown.

mod assembly;
mod builder;
mod dispatch;
mod endpoint;
mod guards;
mod handlers;
mod offsets;
mod pattern;
mod rebalance;
mod recovery;
mod shared;
mod stats;
mod store_watch;
mod tiers;
mod worker;

pub(crate) use self::assembly::build_stack;
pub use self::builder::WorkerBuilder;
pub(crate) use self::guards::Guards;
pub use self::stats::WorkerStats;
pub use self::worker::Worker;
