//! The embedded server's integration tests, one module per area, built as one test binary
//! (one link instead of one per file).

#[path = "auth.rs"]
mod auth;
#[path = "child_server.rs"]
mod child_server;
#[path = "compression_roundtrip.rs"]
mod compression_roundtrip;
#[path = "decompression_bomb.rs"]
mod decompression_bomb;
#[path = "disk_errors.rs"]
mod disk_errors;
#[path = "fuzz_regressions.rs"]
mod fuzz_regressions;
#[path = "group_protocol.rs"]
mod group_protocol;
#[path = "group_restart.rs"]
mod group_restart;
#[path = "many_partitions.rs"]
mod many_partitions;
#[path = "offsets_and_retention.rs"]
mod offsets_and_retention;
#[path = "pre_auth_limits.rs"]
mod pre_auth_limits;
#[path = "protocol_edges.rs"]
mod protocol_edges;
#[path = "request_budget.rs"]
mod request_budget;
#[path = "sasl_handshake_v0.rs"]
mod sasl_handshake_v0;
#[path = "support/mod.rs"]
mod support;
#[path = "user_enumeration.rs"]
mod user_enumeration;
