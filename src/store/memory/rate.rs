//! Named rate limits in process memory (GCRA, the same arithmetic as the Redis backend).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::store::{RateLimit, RateLimitStore, StoreError};

/// [`RateLimitStore`] in process memory: limits shared by the workers of one process.
#[derive(Debug)]
pub struct MemoryRateLimitStore {
    /// Each limit's theoretical arrival time, as time since `epoch`.
    arrivals: Mutex<HashMap<String, Duration>>,
    epoch: Instant,
}

impl Default for MemoryRateLimitStore {
    fn default() -> Self {
        MemoryRateLimitStore {
            arrivals: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }
}

impl MemoryRateLimitStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RateLimitStore for MemoryRateLimitStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn reserve(&self, limit: &RateLimit) -> Result<Duration, StoreError> {
        if !(limit.per_second.is_finite() && limit.per_second > 0.0) {
            return Err(StoreError::Failed {
                backend: "memory",
                message: format!(
                    "rate limit `{}`: {} permits a second is not a positive rate",
                    limit.name, limit.per_second
                ),
                cause: None,
            });
        }
        let interval = Duration::try_from_secs_f64(1.0 / limit.per_second).map_err(|_| {
            StoreError::Failed {
                backend: "memory",
                message: format!(
                    "rate limit `{}`: {} permits a second is too small a rate",
                    limit.name, limit.per_second
                ),
                cause: None,
            }
        })?;
        let tolerance = interval.saturating_mul(limit.burst.max(1) - 1);
        let now = self.epoch.elapsed();
        let mut arrivals = self.arrivals.lock();
        let arrival = arrivals.entry(limit.name.clone()).or_default();
        let tat = (*arrival).max(now);
        *arrival = tat.saturating_add(interval);
        Ok(tat.saturating_sub(tolerance).saturating_sub(now))
    }
}
