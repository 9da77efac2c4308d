//! Settings of the worker's HTTP endpoint (`[observe]` in `steadfast.toml`): Prometheus
//! metrics on `/metrics`, liveness on `/healthz`, readiness on `/readyz`.

use serde::{Deserialize, Serialize};

/// The HTTP endpoint and the stall detector (`[observe]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObserveConfig {
    /// `host:port` the worker serves `/metrics`, `/healthz` and `/readyz` on; no endpoint when
    /// unset. Env: `STEADFAST_OBSERVE_LISTEN`.
    pub listen: Option<String>,
    /// A partition with work waiting and no progress for this long makes the worker not
    /// ready, in ms. Env: `STEADFAST_OBSERVE_STALL_AFTER_MS`.
    pub stall_after_ms: u64,
    /// How often consumer lag per partition is read (librdkafka `statistics.interval.ms`),
    /// in ms. Env: `STEADFAST_OBSERVE_LAG_INTERVAL_MS`.
    pub lag_interval_ms: u64,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        ObserveConfig {
            listen: None,
            stall_after_ms: 120_000,
            lag_interval_ms: 5_000,
        }
    }
}
