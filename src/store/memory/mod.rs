//! In-process stores: for one worker process, tests and the quickstart. State lives and dies
//! with the process, so they protect nothing across pods.

mod dedup;
mod lock;
mod rate;
mod version;

pub use self::dedup::MemoryDedupStore;
pub use self::lock::MemoryLockStore;
pub use self::rate::MemoryRateLimitStore;
pub use self::version::MemoryVersionStore;
