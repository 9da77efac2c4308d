//! Redis stores (the `redis` crate, async, `ConnectionManager`): each multi-step operation is
//! one Lua script, one round trip.
//!
//! [`RedisStores::connect`] opens one multiplexed connection that every store made from it
//! shares. Connection attempts and responses are bounded (2 s each) and a lost connection is
//! re-established in the background with a short backoff, so while Redis is down every call
//! fails quickly with [`StoreError::Unavailable`], and calls work again by themselves once it
//! is back.
//!
//! Keys are `{prefix}:{kind}:{key}` (`lock`, `token`, `fence`, `dedup`, `version`, `rate`,
//! and `granting:lock`, a key of the stores' own);
//! the keys given to the stores are arbitrary text. Scripts touching two keys assume a single
//! Redis server (not a cluster).

mod coalesce;
mod dedup;
mod error;
mod guards;
mod lock;
mod lua;
mod persistence;
mod rate;
mod version;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use self::dedup::RedisDedupStore;
pub use self::error::classify;
pub(crate) use self::guards::RedisGuards;
pub use self::lock::RedisLockStore;
pub use self::persistence::{restart_loses, Persistence};
pub use self::rate::RedisRateLimiter;
pub use self::version::RedisVersionStore;

use crate::store::StoreError;

/// How long one connection attempt may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may wait for its response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts after the first one when (re)connecting, 100 ms doubling to at most 1 s apart.
const RECONNECT_RETRIES: usize = 2;

/// The Redis connection and key prefix shared by the Redis stores; cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisStores {
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl RedisStores {
    /// Connects to the Redis at `url` (`redis://[user][:password@]host[:port][/db]`); every
    /// key the stores write starts with `{prefix}:`.
    ///
    /// Fails with [`StoreError::Url`] for a URL that cannot be used (reported without its
    /// password), with [`StoreError::Auth`] when Redis refuses the credentials (or wants some
    /// the URL does not give), and with [`StoreError::Unavailable`] within a few seconds when
    /// Redis does not answer.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStores, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Url {
            url: without_password(url),
            reason: scrub_password(url, &e.to_string()),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1))
            .set_exponent_base(2.0);
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(StoreError::from)?;
        // A Redis that requires a password the URL does not give accepts the connection and
        // refuses every command (`NOAUTH`): ask once, so that shows now, as refused credentials.
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(RedisStores {
            conn,
            prefix: Arc::from(prefix),
        })
    }

    /// The lease lock store.
    pub fn lock_store(&self) -> RedisLockStore {
        RedisLockStore::new(self.conn.clone(), self.keys())
    }

    /// The deduplication store.
    pub fn dedup_store(&self) -> RedisDedupStore {
        RedisDedupStore::new(self.conn.clone(), self.keys())
    }

    /// The stale check, lock and dedup of a delivery in one call each way (for a worker
    /// whose three guards are all in this Redis).
    pub(crate) fn guards(&self) -> RedisGuards {
        RedisGuards::new(self.conn.clone(), self.keys())
    }

    /// The last-applied-version store.
    pub fn version_store(&self) -> RedisVersionStore {
        RedisVersionStore::new(self.conn.clone(), self.keys())
    }

    /// The rate limit `name`, shared by every process using the same Redis, prefix and name:
    /// bursts of at most `burst` permits (a burst of 0 counts as 1), `per_second` permits a
    /// second after that (see [`RedisRateLimiter`]).
    pub fn rate_limiter(&self, name: &str, per_second: f64, burst: u32) -> RedisRateLimiter {
        RedisRateLimiter::new(
            self.conn.clone(),
            self.keys().key("rate", name),
            per_second,
            burst,
        )
    }

    fn keys(&self) -> Keys {
        Keys {
            prefix: self.prefix.clone(),
        }
    }
}

/// Builds the stores' key names under one prefix.
#[derive(Clone, Debug)]
struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    /// `{prefix}:{kind}:{key}`.
    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}:{kind}:{key}", self.prefix)
    }

    /// `{prefix}:granting:{kind}`: the longest lease of `kind` (`lock`), in ms, this Redis
    /// granted since it last started, once up for at least that lease (see `lua::MAY_GRANT`).
    fn memory(&self, kind: &str) -> String {
        self.key("granting", kind)
    }
}

/// The password of `url`, when it has one.
fn password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let password = &userinfo[userinfo.find(':')? + 1..];
    (!password.is_empty()).then_some(password)
}

/// `url` with its password (if any) replaced by `***`.
fn without_password(url: &str) -> String {
    crate::config::redact(url)
}

/// `text` with every occurrence of `url`'s password replaced by `***`.
fn scrub_password(url: &str, text: &str) -> String {
    match password(url) {
        Some(password) => text.replace(password, "***"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private `redis-server` that requires the password `s3cret`, stopped on drop.
    struct PasswordRedis {
        child: std::process::Child,
        port: u16,
    }

    impl PasswordRedis {
        async fn start() -> PasswordRedis {
            let port = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                listener.local_addr().expect("address").port()
            };
            let child = std::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--requirepass",
                    "s3cret",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (the test suite's Redis) is on PATH");
            let redis = PasswordRedis { child, port };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the private redis-server listens on {port}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            redis
        }

        fn url(&self, userinfo: &str) -> String {
            format!("redis://{userinfo}127.0.0.1:{}", self.port)
        }
    }

    impl Drop for PasswordRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn refused_credentials_are_not_an_outage() {
        let redis = PasswordRedis::start().await;
        for (url, what) in [
            (redis.url(":wrong@"), "a wrong password"),
            (redis.url("nobody:s3cret@"), "an unknown user"),
            (redis.url(""), "no password"),
        ] {
            let err = RedisStores::connect(&url, "t").await.expect_err(what);
            assert!(matches!(err, StoreError::Auth { .. }), "{what}: {err:?}");
            assert!(!err.to_string().contains("wrong"), "{err}");
        }
        RedisStores::connect(&redis.url(":s3cret@"), "t")
            .await
            .expect("the right password");
    }

    #[tokio::test]
    async fn a_redis_that_is_not_there_is_still_an_outage() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let err = RedisStores::connect(&format!("redis://127.0.0.1:{port}"), "t")
            .await
            .expect_err("nobody listens");
        assert!(err.is_unavailable(), "{err:?}");
    }

    #[test]
    fn passwords_are_hidden_in_reported_urls() {
        assert_eq!(
            without_password("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(
            without_password("redis://:s3cret@host:notaport"),
            "redis://:***@host:notaport"
        );
        assert_eq!(
            without_password("redis://user@host:6379"),
            "redis://user@host:6379"
        );
        assert_eq!(without_password("not a url"), "not a url");
    }
}
