//! A rate limit shared by every worker that uses the same Redis, key prefix and name.
//!
//! GCRA (the generic cell rate algorithm), reservation style, one script and one round trip
//! per permit, on the Redis server's clock: with the emission interval `T = 1 s / per_second`
//! and the tolerance `tau = (burst - 1) * T`, the key (`{prefix}:rate:{name}`) holds the
//! theoretical arrival time `tat`. A permit taken at `now` is usable after
//! `max(0, max(tat, now) - tau - now)`, and moves `tat` to `max(tat, now) + T`. So at most
//! `burst` permits are usable at once, then `per_second` a second; in any window of one
//! second at most `per_second + burst` permits become usable. A permit is granted even when
//! it must wait: the caller is told how long, and must use it no earlier.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use super::lua::NOW_US;
use crate::store::StoreError;

/// KEYS: rate. ARGV: emission interval µs, burst. The wait in µs (whole, rounded up).
///
/// Waits and expiries are capped at 2^52 (µs resp. ms) so that absurdly small rates stay
/// integers Redis can handle.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_US}{}",
        r#"
local now = now_us()
local interval = tonumber(ARGV[1])
local tolerance = (tonumber(ARGV[2]) - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local next_tat = tat + interval
local cap = 2 ^ 52
local expiry_ms = math.min(math.ceil((next_tat - now) / 1000) + 1000, cap)
redis.call('SET', KEYS[1], string.format('%.17g', next_tat), 'PX', string.format('%d', expiry_ms))
return math.min(math.ceil(wait), cap)
"#
    ))
});

/// A GCRA rate limit kept in Redis, shared by every process using the same Redis, key prefix
/// and name (see the module docs). Made by
/// [`RedisStores::rate_limiter`](super::RedisStores::rate_limiter); cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    conn: ConnectionManager,
    key: Arc<str>,
    per_second: f64,
    burst: u32,
}

impl RedisRateLimiter {
    pub(super) fn new(conn: ConnectionManager, key: String, per_second: f64, burst: u32) -> Self {
        RedisRateLimiter {
            conn,
            key: Arc::from(key),
            per_second,
            burst: burst.max(1),
        }
    }

    /// Takes a permit; returns how long to wait before using it. One round trip.
    ///
    /// Fails with [`StoreError::Failed`] when the rate is not a positive finite number.
    pub async fn reserve(&self) -> Result<Duration, StoreError> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err(StoreError::Failed {
                backend: "redis",
                message: format!(
                    "rate limit `{}`: {} permits a second is not a positive rate",
                    self.key, self.per_second
                ),
                cause: None,
            });
        }
        let interval_us = 1e6 / self.per_second;
        let wait_us: u64 = RESERVE
            .key(&*self.key)
            .arg(interval_us.to_string())
            .arg(self.burst)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        Ok(Duration::from_micros(wait_us))
    }

    /// Takes a permit and waits until it may be used.
    pub async fn acquire(&self) -> Result<(), StoreError> {
        let wait = self.reserve().await?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::store::RateLimitStore for super::RedisStores {
    fn backend(&self) -> &'static str {
        "redis"
    }
    async fn reserve(&self, limit: &crate::store::RateLimit) -> Result<Duration, StoreError> {
        self.rate_limiter(&limit.name, limit.per_second, limit.burst)
            .reserve()
            .await
    }
}
