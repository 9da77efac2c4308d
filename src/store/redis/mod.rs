//! Redis stores (the `redis` crate, async, `ConnectionManager`): each multi-step operation is
//! one Lua script, one round trip.

mod rate;

pub use self::rate::RedisRateLimiter;
