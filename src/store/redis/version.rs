//! The last applied version per key in Redis (`{prefix}:version:{key}`, decimal text),
//! advanced by a compare-and-set script that compares the decimal texts exactly.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::lua::COMPARE_INTEGERS;
use super::Keys;
use crate::store::{StoreError, VersionStore};

/// KEYS: version. ARGV: version. 1 when stored.
static ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{COMPARE_INTEGERS}{}",
        r#"
local stored = redis.call('GET', KEYS[1])
if stored and compare(stored, ARGV[1]) >= 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#
    ))
});

/// [`VersionStore`] in Redis.
#[derive(Clone, Debug)]
pub struct RedisVersionStore {
    conn: ConnectionManager,
    keys: Keys,
}

impl RedisVersionStore {
    pub(super) fn new(conn: ConnectionManager, keys: Keys) -> Self {
        RedisVersionStore { conn, keys }
    }
}

#[async_trait]
impl VersionStore for RedisVersionStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &str) -> Result<Option<i64>, StoreError> {
        let stored: Option<String> = redis::cmd("GET")
            .arg(self.keys.key("version", key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        stored
            .map(|text| {
                text.parse().map_err(|_| StoreError::Failed {
                    backend: "redis",
                    message: format!("version of `{key}` is not an integer: {text:?}"),
                    cause: None,
                })
            })
            .transpose()
    }

    async fn advance(&self, key: &str, version: i64) -> Result<bool, StoreError> {
        ADVANCE
            .key(self.keys.key("version", key))
            .arg(version)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }
}
