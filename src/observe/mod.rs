//! What a worker shows the people who run it: Prometheus metrics, a liveness and a
//! readiness probe with a stall detector, served over HTTP when `[observe] listen` is set;
//! and traces: W3C trace context carried across a message's hops ([`trace`]), exported over
//! OTLP with the `otel` feature (module `otel`). The metric names are the constants of
//! [`metrics`]; the README lists them.

mod health;
mod http;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
mod stores;
pub mod trace;
mod traceparent;

pub use self::health::Readiness;
pub(crate) use self::health::{Health, LowestUnfinished, PartitionView, WorkerView};
pub(crate) use self::http::{serve, Probe};
pub(crate) use self::metrics::{lock_wait, store_restarted, Meters, Timer};
pub(crate) use self::stores::Observed;
