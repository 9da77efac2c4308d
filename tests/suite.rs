//! The runtime's integration tests, one module per area, built as one test binary: one link
//! and one copy of the generic code they share, where a binary per file built the runtime's
//! dependencies into each of them. (The chaos test, with a `main` of its own, is the other
//! test binary.) The derive macros' tests (`derive`, `ui`) are here too: in the proc-macro crate
//! they would build steadfast a second time (a proc-macro's dev-dependencies are resolved
//! apart, without steadfast's default features). `cargo nextest run -E 'test(/^policies::/)'`
//! runs one area.

#[path = "support/mod.rs"]
mod support;

#[path = "batch_handlers.rs"]
mod batch_handlers;
#[path = "broker_gone.rs"]
mod broker_gone;
#[path = "combined_guards.rs"]
mod combined_guards;
#[path = "config_reference.rs"]
mod config_reference;
#[path = "custom_store.rs"]
mod custom_store;
#[path = "dedup_leases.rs"]
mod dedup_leases;
#[path = "dependency_breaker_mix.rs"]
mod dependency_breaker_mix;
#[path = "deploy.rs"]
mod deploy;
#[path = "derive.rs"]
mod derive;
#[path = "docker_compose.rs"]
mod docker_compose;
#[path = "first_contact.rs"]
mod first_contact;
#[path = "ledger_end_to_end.rs"]
mod ledger_end_to_end;
#[path = "long_holds.rs"]
mod long_holds;
#[path = "mock_cluster.rs"]
mod mock_cluster;
#[path = "observe.rs"]
mod observe;
#[path = "outages.rs"]
mod outages;
#[path = "panics_and_layers.rs"]
mod panics_and_layers;
#[path = "policies.rs"]
mod policies;
#[path = "producer.rs"]
mod producer;
#[path = "provenance.rs"]
mod provenance;
#[path = "quickstart.rs"]
mod quickstart;
#[path = "retry_tiers.rs"]
mod retry_tiers;
#[path = "revoke_and_stop.rs"]
mod revoke_and_stop;
#[path = "routed_once.rs"]
mod routed_once;
#[path = "several_handlers.rs"]
mod several_handlers;
#[path = "start_from.rs"]
mod start_from;
#[path = "store_conformance_postgres.rs"]
mod store_conformance_postgres;
#[path = "store_conformance_redis.rs"]
mod store_conformance_redis;
#[path = "store_postgres.rs"]
mod store_postgres;
#[path = "store_trouble.rs"]
mod store_trouble;
#[path = "test_worker.rs"]
mod test_worker;
#[path = "tier_records.rs"]
mod tier_records;
// Needs the `otel` feature: scripts/test.sh builds the suite with it
// (`cargo nextest run --features otel`).
#[cfg(feature = "otel")]
#[path = "traces.rs"]
mod traces;
#[path = "ui.rs"]
mod ui;
#[path = "worker_restarts.rs"]
mod worker_restarts;
#[path = "worker_semantics.rs"]
mod worker_semantics;
