//! The command line's integration tests, one module per area, built as one test binary (one
//! link instead of one per file).

#[path = "console.rs"]
mod console;
#[path = "consumer_groups.rs"]
mod consumer_groups;
#[path = "delays.rs"]
mod delays;
#[path = "dlq_replay.rs"]
mod dlq_replay;
#[path = "durability.rs"]
mod durability;
#[path = "find.rs"]
mod find;
#[path = "support.rs"]
mod support;
#[path = "users.rs"]
mod users;
