//! A lease lock per key in Redis, with fencing tokens seeded from the server's clock.
//!
//! Every operation is one script. A grant's token is `max(last + 1, now_us)`: `last` is the
//! key's previous token, kept in a counter key (`{prefix}:token:{key}`) that outlives the
//! lease (at least a day), and `now_us` is the Redis server's clock in microseconds
//! (`TIME`). So tokens strictly increase per key, also when the counter is gone: after it
//! expired, and after a Redis without persistence restarted and forgot every key, as long as
//! the server's clock did not step back and no key was granted more than a million times a
//! second. The fence (`{prefix}:fence:{key}`, kept without expiry) of a Redis without
//! persistence is forgotten in a restart: a write under a token from before the restart is
//! then accepted until a newer token writes. Such a Redis also forgot which keys are held:
//! it grants no lease until it has been up for a lease (see [`MAY_GRANT`]), so that a holder
//! from before the restart has ended or found its lease lost before the key is granted again.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::lua::{COMPARE_INTEGERS, DELETE_IF_HOLDS, MAY_GRANT, NOW_US};
use super::Keys;
use crate::store::{ttl_ms, LockStore, StoreError};

/// How long a key's last token is kept at least after its last grant.
pub(super) const TOKEN_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);

/// KEYS: lock, token counter, the locks' memory key. ARGV: lease ms, counter ms. The token,
/// or nil when held (or held back after a restart of the Redis, see [`MAY_GRANT`]).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_US}{MAY_GRANT}{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if not may_grant(KEYS[3], ARGV[1]) then return false end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = math.max(last + 1, now_us())
local text = string.format('%d', token)
redis.call('SET', KEYS[2], text, 'PX', ARGV[2])
redis.call('SET', KEYS[1], text, 'PX', ARGV[1])
return token
"#
    ))
});

/// KEYS: lock. ARGV: token, lease ms. 1 when renewed.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// KEYS: fence. ARGV: token. 1 when accepted.
static FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{COMPARE_INTEGERS}{}",
        r#"
local stored = redis.call('GET', KEYS[1])
if stored and compare(ARGV[1], stored) < 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#
    ))
});

/// [`LockStore`] in Redis; see the module docs for how tokens keep growing.
#[derive(Clone, Debug)]
pub struct RedisLockStore {
    conn: ConnectionManager,
    keys: Keys,
}

impl RedisLockStore {
    pub(super) fn new(conn: ConnectionManager, keys: Keys) -> Self {
        RedisLockStore { conn, keys }
    }
}

#[async_trait]
impl LockStore for RedisLockStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let lease_ms = ttl_ms(ttl);
        let counter_ms = lease_ms.max(ttl_ms(TOKEN_MEMORY));
        ACQUIRE
            .key(self.keys.key("lock", key))
            .key(self.keys.key("token", key))
            .key(self.keys.memory("lock"))
            .arg(lease_ms)
            .arg(counter_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn renew(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, StoreError> {
        RENEW
            .key(self.keys.key("lock", key))
            .arg(token)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn release(&self, key: &str, token: u64) -> Result<(), StoreError> {
        DELETE_IF_HOLDS
            .key(self.keys.key("lock", key))
            .arg(token)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(StoreError::from)
    }

    async fn fence(&self, key: &str, token: u64) -> Result<bool, StoreError> {
        FENCE
            .key(self.keys.key("fence", key))
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }
}
