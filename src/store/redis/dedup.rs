//! Two-phase deduplication of message ids in Redis: one key per id (`{prefix}:dedup:{id}`)
//! holding `r:<owner>` for a reservation (expiring after its lease) or `c` for a completed id
//! (expiring after its time-to-live).

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::lua::DELETE_IF_HOLDS;
use super::Keys;
use crate::store::{ttl_ms, DedupStore, Reservation, StoreError};

/// KEYS: id. ARGV: `r:<owner>`, lease ms. 0 reserved, 1 in progress, 2 completed.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = redis.call('GET', KEYS[1])
if held == 'c' then return 2 end
if held and held ~= ARGV[1] then return 1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
"#,
    )
});

/// [`DedupStore`] in Redis.
#[derive(Clone, Debug)]
pub struct RedisDedupStore {
    conn: ConnectionManager,
    keys: Keys,
}

impl RedisDedupStore {
    pub(super) fn new(conn: ConnectionManager, keys: Keys) -> Self {
        RedisDedupStore { conn, keys }
    }
}

#[async_trait]
impl DedupStore for RedisDedupStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn reserve(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Reservation, StoreError> {
        let state: i64 = RESERVE
            .key(self.keys.key("dedup", id))
            .arg(format!("r:{owner}"))
            .arg(ttl_ms(lease))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        match state {
            0 => Ok(Reservation::Reserved),
            1 => Ok(Reservation::InProgress),
            2 => Ok(Reservation::Completed),
            other => Err(StoreError::Failed {
                backend: "redis",
                message: format!("dedup reserve script answered {other}"),
                cause: None,
            }),
        }
    }

    async fn complete(&self, id: &str, _owner: &str, ttl: Duration) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(self.keys.key("dedup", id))
            .arg("c")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        DELETE_IF_HOLDS
            .key(self.keys.key("dedup", id))
            .arg(format!("r:{owner}"))
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(StoreError::from)
    }
}
