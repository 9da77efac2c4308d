//! Postgres stores (`deadpool-postgres` + `tokio-postgres`), their schema migrations, and the
//! transactional idempotency store.

mod error;

pub use self::error::classify;
