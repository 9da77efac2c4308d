//! Derive macros for steadfast: `#[derive(Message)]` binds a type to its topic, key, version
//! and id fields; `#[derive(Handler)]` binds a handler to its message type and group.
