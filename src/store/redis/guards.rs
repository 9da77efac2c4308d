//! The guards of a delivery in one script each way ([`GuardStore`]): stale check, lock and
//! dedup reservation before the handler; dedup completion or release, version advance and
//! lock release after it. The scripts use the keys and values of the separate Redis stores
//! (`version`, `lock`, `token`, `dedup`), so both kinds of worker can share a Redis.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::coalesce::{CoalescedScript, ScriptRuns};
use super::lock::TOKEN_MEMORY;
use super::lua::{COMPARE_INTEGERS, MAY_GRANT, NOW_US};
use super::Keys;
use crate::store::coalesce::MAX_REQUESTS;
use crate::store::guards::{Entered, Entry, Exit, GuardStore};
use crate::store::{ttl_ms, StoreError};

/// Lua for a run whose entries share no key ([`ScriptRuns`] splits runs so): `stored[i]`,
/// the `i`th key's value, all read with one `MGET` up front, and `delete_all(keys)`, one
/// `DEL`. A run carries at most [`MAX_REQUESTS`] entries of four keys, within the 8,000
/// values Lua's stack takes for `unpack` (checked below). A `redis.call` costs 1-2 µs of its
/// own (`scripts/redis_guard_floor.py`), more than a `GET` or `DEL` of a key: one read and one
/// delete a run, instead of one read and up to two deletes an entry, took 12-17 % off a
/// record's Redis time (runs of 256 entries each way).
const ONE_READ: &str = r#"
local stored = redis.call('MGET', unpack(KEYS))
local function delete_all(keys)
  if #keys > 0 then redis.call('DEL', unpack(keys)) end
end
"#;

const _: () = assert!(MAX_REQUESTS * 4 <= 7_000, "a run's keys fit Lua's unpack");

/// Per entry, KEYS: version, lock, token counter, dedup; ARGV: version or '', lock lease
/// ms, counter ms, reservation value or '', reservation lease ms, the locks' memory key
/// (named as an argument: every entry names the same one, which [`ScriptRuns`] would take
/// for a shared key). Per entry, in order, `code, text`: 1 stale (the applied version), 2
/// held (or held back after a restart of the Redis, see [`MAY_GRANT`]), 3 duplicate, 4
/// reserved by another owner, 5 granted (the token). Entries are checked one after another,
/// each all or nothing; their keys are read at once ([`ONE_READ`]), and the server clock and
/// the memory key once per run.
static ENTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{COMPARE_INTEGERS}{NOW_US}{MAY_GRANT}{ONE_READ}{}",
        r#"
local now
local function enter(k, a)
  local applied, lock, last, held = stored[k + 1], stored[k + 2], stored[k + 3], stored[k + 4]
  if ARGV[a + 1] ~= '' and applied and compare(applied, ARGV[a + 1]) >= 0 then
    return 1, applied
  end
  if lock then return 2, '' end
  if ARGV[a + 4] ~= '' then
    if held == 'c' then return 3, '' end
    if held and held ~= ARGV[a + 4] then return 4, '' end
  end
  if not may_grant(ARGV[a + 6], ARGV[a + 2]) then return 2, '' end
  now = now or now_us()
  local token = string.format('%d', math.max(tonumber(last or '0') + 1, now))
  redis.call('SET', KEYS[k + 3], token, 'PX', ARGV[a + 3])
  redis.call('SET', KEYS[k + 2], token, 'PX', ARGV[a + 2])
  if ARGV[a + 4] ~= '' then redis.call('SET', KEYS[k + 4], ARGV[a + 4], 'PX', ARGV[a + 5]) end
  return 5, token
end
local answers = {}
for i = 0, #KEYS / 4 - 1 do
  local code, text = enter(i * 4, i * 6)
  answers[#answers + 1] = code
  answers[#answers + 1] = text
end
return answers
"#
    ))
});

/// KEYS: lock, dedup. ARGV: token, lock lease ms, reservation value or '', reservation lease
/// ms. `{lock held, reservation held}` (1 or 0); a reservation that expired is taken again,
/// as the dedup store's renewal does.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local lock = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  lock = 1
end
local reservation = 1
if ARGV[3] ~= '' then
  local held = redis.call('GET', KEYS[2])
  if held and held ~= ARGV[3] then
    reservation = 0
  else
    redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  end
end
return {lock, reservation}
"#,
    )
});

/// Per entry, KEYS: lock, dedup, version; ARGV: token, reservation value or '', '1' to
/// complete the id (else released), completed id ms, version or ''. One `1` per entry. The
/// keys are read at once and the released ones deleted at once ([`ONE_READ`]).
static EXIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{COMPARE_INTEGERS}{ONE_READ}{}",
        r#"
local released = {}
local function exit(k, a)
  local lock, held, applied = stored[k + 1], stored[k + 2], stored[k + 3]
  if ARGV[a + 2] ~= '' then
    if ARGV[a + 3] == '1' then
      redis.call('SET', KEYS[k + 2], 'c', 'PX', ARGV[a + 4])
    elseif held == ARGV[a + 2] then
      released[#released + 1] = KEYS[k + 2]
    end
  end
  if ARGV[a + 5] ~= '' and (not applied or compare(applied, ARGV[a + 5]) < 0) then
    redis.call('SET', KEYS[k + 3], ARGV[a + 5])
  end
  if lock == ARGV[a + 1] then released[#released + 1] = KEYS[k + 1] end
end
local answers = {}
for i = 0, #KEYS / 3 - 1 do
  exit(i * 3, i * 5)
  answers[#answers + 1] = 1
end
delete_all(released)
return answers
"#
    ))
});

/// [`GuardStore`] in Redis; see the module docs. Concurrent `enter` and `exit` calls share
/// script runs ([`ScriptRuns`]).
#[derive(Clone, Debug)]
pub(crate) struct RedisGuards {
    conn: ConnectionManager,
    keys: Keys,
    enter: CoalescedScript,
    exit: CoalescedScript,
}

impl RedisGuards {
    pub(super) fn new(conn: ConnectionManager, keys: Keys) -> Self {
        RedisGuards {
            enter: ScriptRuns::coalesced(&ENTER, 2, conn.clone()),
            exit: ScriptRuns::coalesced(&EXIT, 1, conn.clone()),
            conn,
            keys,
        }
    }

    /// The dedup key of `id`, or the lock key of `key` where there is no id (a script's
    /// keys are all named, used or not).
    fn dedup_key(&self, id: Option<&str>, key: &str) -> String {
        match id {
            Some(id) => self.keys.key("dedup", id),
            None => self.keys.key("lock", key),
        }
    }
}

/// A reservation's value: the dedup store's.
fn reservation(owner: &str) -> String {
    format!("r:{owner}")
}

fn version_text(version: Option<i64>) -> String {
    version.map(|v| v.to_string()).unwrap_or_default()
}

fn unexpected(what: &str, answer: impl std::fmt::Debug) -> StoreError {
    StoreError::failed("redis", format!("the {what} script answered {answer:?}"))
}

#[async_trait]
impl GuardStore for RedisGuards {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn enter(&self, entry: &Entry<'_>) -> Result<Entered, StoreError> {
        let lease_ms = ttl_ms(entry.lock_lease);
        let keys = vec![
            self.keys.key("version", entry.key),
            self.keys.key("lock", entry.key),
            self.keys.key("token", entry.key),
            self.dedup_key(entry.id, entry.key),
        ];
        let args = vec![
            version_text(entry.version),
            lease_ms.to_string(),
            lease_ms.max(ttl_ms(TOKEN_MEMORY)).to_string(),
            entry
                .id
                .map(|_| reservation(entry.owner))
                .unwrap_or_default(),
            ttl_ms(entry.dedup_lease).to_string(),
            self.keys.memory("lock"),
        ];
        let answer = self.enter.call((keys, args)).await?;
        let (code, text): (i64, String) = match answer.as_slice() {
            [code, text] => (
                redis::from_redis_value_ref(code).map_err(|e| unexpected("enter", e))?,
                redis::from_redis_value_ref(text).map_err(|e| unexpected("enter", e))?,
            ),
            other => return Err(unexpected("enter", other)),
        };
        match code {
            1 => text.parse().map(Entered::Stale).map_err(|_| {
                StoreError::failed(
                    "redis",
                    format!("version of `{}` is not an integer: {text:?}", entry.key),
                )
            }),
            2 => Ok(Entered::Held),
            3 => Ok(Entered::Duplicate),
            4 => Ok(Entered::InProgress),
            5 => text
                .parse()
                .map(Entered::Granted)
                .map_err(|_| unexpected("enter", (code, text))),
            _ => Err(unexpected("enter", (code, text))),
        }
    }

    async fn renew(&self, entry: &Entry<'_>, token: u64) -> Result<(bool, bool), StoreError> {
        let (lock, reserved): (i64, i64) = RENEW
            .key(self.keys.key("lock", entry.key))
            .key(self.dedup_key(entry.id, entry.key))
            .arg(token)
            .arg(ttl_ms(entry.lock_lease))
            .arg(
                entry
                    .id
                    .map(|_| reservation(entry.owner))
                    .unwrap_or_default(),
            )
            .arg(ttl_ms(entry.dedup_lease))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        Ok((lock == 1, reserved == 1))
    }

    async fn exit(&self, exit: &Exit<'_>) -> Result<(), StoreError> {
        let keys = vec![
            self.keys.key("lock", exit.key),
            self.dedup_key(exit.id.map(|(id, _)| id), exit.key),
            self.keys.key("version", exit.key),
        ];
        let args = vec![
            exit.token.to_string(),
            exit.id
                .map(|(_, owner)| reservation(owner))
                .unwrap_or_default(),
            if exit.completed { "1" } else { "0" }.to_owned(),
            ttl_ms(exit.ttl).to_string(),
            version_text(exit.advance),
        ];
        self.exit.call((keys, args)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::redis::{RedisDedupStore, RedisLockStore, RedisStores, RedisVersionStore};
    use crate::store::{DedupStore, LockStore, Reservation, VersionStore};

    /// The combined guards and the three separate stores of the suite's Redis, under a
    /// prefix of this test's own.
    async fn stores() -> (
        RedisGuards,
        RedisLockStore,
        RedisDedupStore,
        RedisVersionStore,
    ) {
        let prefix = format!("guards_{}", uuid::Uuid::new_v4().simple());
        let redis = RedisStores::connect("redis://127.0.0.1:6379", &prefix)
            .await
            .expect("Redis on 127.0.0.1:6379 (start it with scripts/services.sh)");
        (
            redis.guards(),
            redis.lock_store(),
            redis.dedup_store(),
            redis.version_store(),
        )
    }

    fn entry<'a>(
        key: &'a str,
        version: Option<i64>,
        id: Option<&'a str>,
        owner: &'a str,
    ) -> Entry<'a> {
        Entry {
            key,
            version,
            id,
            owner,
            lock_lease: Duration::from_secs(5),
            dedup_lease: Duration::from_secs(5),
        }
    }

    /// The lock of `key` for 5 s, if free.
    async fn acquire(lock: &RedisLockStore, key: &str) -> Option<u64> {
        lock.acquire(key, Duration::from_secs(5))
            .await
            .expect("acquire")
    }

    /// A reservation of `id` for `owner` for 5 s.
    async fn reserve(dedup: &RedisDedupStore, id: &str, owner: &str) -> Reservation {
        dedup
            .reserve(id, owner, Duration::from_secs(5))
            .await
            .expect("reserve")
    }

    fn exit<'a>(e: &Entry<'a>, token: u64, completed: bool, advance: Option<i64>) -> Exit<'a> {
        Exit {
            key: e.key,
            token,
            id: e.id.map(|id| (id, e.owner)),
            completed,
            ttl: Duration::from_secs(60),
            advance,
        }
    }

    #[tokio::test]
    async fn a_grant_and_its_exit_are_what_the_separate_stores_see() {
        let (guards, lock, dedup, versions) = stores().await;
        let before = acquire(&lock, "k").await.expect("free");
        lock.release("k", before).await.expect("release");

        let e = entry("k", Some(7), Some("id-1"), "a");
        let Entered::Granted(token) = guards.enter(&e).await.expect("enter") else {
            panic!("a free key with a new id and no version is granted")
        };
        assert!(
            token > before,
            "tokens keep growing across both kinds of call"
        );
        assert_eq!(acquire(&lock, "k").await, None, "the lock is held");
        assert_eq!(
            reserve(&dedup, "id-1", "b").await,
            Reservation::InProgress,
            "the id is reserved"
        );
        assert_eq!(
            versions.get("k").await.expect("get"),
            None,
            "nothing applied yet"
        );

        guards
            .exit(&exit(&e, token, true, Some(7)))
            .await
            .expect("exit");
        assert_eq!(
            versions.get("k").await.expect("get"),
            Some(7),
            "the version advanced"
        );
        assert_eq!(
            reserve(&dedup, "id-1", "b").await,
            Reservation::Completed,
            "the id completed"
        );
        let after = acquire(&lock, "k").await.expect("the lock was released");
        assert!(after > token);
    }

    #[tokio::test]
    async fn enter_checks_the_version_then_the_lock_then_the_id_and_takes_nothing_unless_granted() {
        let (guards, lock, dedup, versions) = stores().await;
        assert!(versions.advance("k", 5).await.expect("advance"));
        let held = acquire(&lock, "k").await.expect("free");
        assert!(dedup
            .reserve("busy", "other", Duration::from_secs(5))
            .await
            .is_ok());
        dedup
            .complete("done", "other", Duration::from_secs(60))
            .await
            .expect("complete");

        // Stale first: a version not newer than the applied one, whatever else holds.
        for version in [4, 5] {
            assert_eq!(
                guards
                    .enter(&entry("k", Some(version), Some("busy"), "a"))
                    .await
                    .expect("enter"),
                Entered::Stale(5)
            );
        }
        // Then the lock: another holder's lease.
        assert_eq!(
            guards
                .enter(&entry("k", Some(6), Some("done"), "a"))
                .await
                .expect("enter"),
            Entered::Held
        );
        lock.release("k", held).await.expect("release");
        // Then the id: completed before, or reserved by a running holder.
        assert_eq!(
            guards
                .enter(&entry("k", Some(6), Some("done"), "a"))
                .await
                .expect("enter"),
            Entered::Duplicate
        );
        assert_eq!(
            guards
                .enter(&entry("k", Some(6), Some("busy"), "a"))
                .await
                .expect("enter"),
            Entered::InProgress
        );
        // None of those took the lock or touched the reservations.
        let free = acquire(&lock, "k").await.expect("nothing was left held");
        lock.release("k", free).await.expect("release");
        assert_eq!(
            reserve(&dedup, "busy", "other").await,
            Reservation::Reserved,
            "the other owner still holds its reservation"
        );
        // Versions beyond 2^53 compare exactly.
        let big = (1_i64 << 53) + 1;
        assert!(versions.advance("big", big).await.expect("advance"));
        assert_eq!(
            guards
                .enter(&entry("big", Some(big - 1), None, "a"))
                .await
                .expect("enter"),
            Entered::Stale(big)
        );
        assert!(matches!(
            guards
                .enter(&entry("big", Some(big + 1), None, "a"))
                .await
                .expect("enter"),
            Entered::Granted(_)
        ));
    }

    /// A lease longer than the suite's Redis has been up (by an hour).
    async fn longer_than_uptime(guards: &RedisGuards) -> Duration {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut guards.conn.clone())
            .await
            .expect("INFO server");
        let uptime: u64 = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("uptime_in_seconds:"))
            .and_then(|s| s.parse().ok())
            .expect("uptime_in_seconds in INFO server");
        Duration::from_secs(uptime + 3600)
    }

    #[tokio::test]
    async fn a_lease_longer_than_the_redis_has_been_up_is_held_back_and_nothing_is_taken() {
        let (guards, _, dedup, _) = stores().await;
        let held_back = Entry {
            lock_lease: longer_than_uptime(&guards).await,
            ..entry("k", None, Some("id"), "a")
        };
        assert_eq!(
            guards.enter(&held_back).await.expect("enter"),
            Entered::Held,
            "a holder of a forgotten lease may still run"
        );
        assert_eq!(
            reserve(&dedup, "id", "b").await,
            Reservation::Reserved,
            "the held-back entry reserved nothing"
        );
        dedup.release("id", "b").await.expect("release");
        // A lease within the uptime is granted.
        let within = entry("k", None, Some("id"), "a");
        let Entered::Granted(token) = guards.enter(&within).await.expect("enter") else {
            panic!("a lease within the uptime is granted")
        };
        guards
            .exit(&exit(&within, token, false, None))
            .await
            .expect("exit");
    }

    #[tokio::test]
    async fn a_failed_run_releases_the_id_and_the_lock_but_only_its_own() {
        let (guards, lock, dedup, versions) = stores().await;
        let e = entry("k", Some(3), Some("id"), "a");
        let Entered::Granted(token) = guards.enter(&e).await.expect("enter") else {
            panic!("granted")
        };
        guards
            .exit(&exit(&e, token, false, None))
            .await
            .expect("exit");
        assert_eq!(
            versions.get("k").await.expect("get"),
            None,
            "a failure applies nothing"
        );
        assert_eq!(
            reserve(&dedup, "id", "b").await,
            Reservation::Reserved,
            "the id was released"
        );
        let other = acquire(&lock, "k").await.expect("the lock was released");
        // A late exit of the old grant leaves the new holder's lock and reservation alone.
        guards
            .exit(&exit(&e, token, false, None))
            .await
            .expect("late exit");
        assert_eq!(acquire(&lock, "k").await, None);
        assert_eq!(reserve(&dedup, "id", "c").await, Reservation::InProgress);
        assert!(lock
            .renew("k", other, Duration::from_secs(5))
            .await
            .expect("renew"));
    }

    #[tokio::test]
    async fn renewal_reports_a_lock_or_a_reservation_that_was_lost() {
        let (guards, lock, dedup, _) = stores().await;
        let mut e = entry("k", None, Some("id"), "a");
        e.lock_lease = Duration::from_millis(100);
        e.dedup_lease = Duration::from_millis(100);
        let Entered::Granted(token) = guards.enter(&e).await.expect("enter") else {
            panic!("granted")
        };
        assert_eq!(guards.renew(&e, token).await.expect("renew"), (true, true));
        // Both leases run out; another owner reserves the id, another holder takes the key.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let taken = loop {
            if let Some(t) = acquire(&lock, "k").await {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "the lease ran out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(reserve(&dedup, "id", "b").await, Reservation::Reserved);
        assert_eq!(
            guards.renew(&e, token).await.expect("renew"),
            (false, false)
        );
        assert!(
            lock.renew("k", taken, Duration::from_secs(5))
                .await
                .expect("renew"),
            "the new holder keeps the key"
        );
    }

    /// Concurrent calls share script runs, and each gets its own entry's answer: of two
    /// entries for one key in one run, the first is granted and the second finds it held;
    /// every exit releases its own grant.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_script_runs_and_keep_their_own_answers() {
        let (guards, lock, _, version) = stores().await;
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        let mut calls: Vec<&str> = keys.iter().map(String::as_str).collect();
        calls.push("k0");
        let entered = futures::future::join_all(calls.iter().map(|key| {
            let guards = guards.clone();
            async move { guards.enter(&entry(key, Some(7), None, "w1")).await }
        }))
        .await;
        let entered: Vec<Entered> = entered.into_iter().map(|e| e.expect("enter")).collect();
        let granted: Vec<(usize, u64)> = entered
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entered::Granted(t) => Some((i, *t)),
                _ => None,
            })
            .collect();
        assert_eq!(granted.len(), 200, "one grant per key: {entered:?}");
        let k0: Vec<&Entered> = [&entered[0], &entered[200]].into_iter().collect();
        assert!(
            k0.contains(&&Entered::Held),
            "the second entry of k0 finds it held: {k0:?}"
        );
        assert!(
            guards.enter.operations() < 201,
            "201 concurrent calls took {} script runs",
            guards.enter.operations()
        );
        let exits = granted.iter().map(|(i, token)| {
            let guards = guards.clone();
            let key = calls[*i];
            async move {
                guards
                    .exit(&Exit {
                        key,
                        token: *token,
                        id: None,
                        completed: true,
                        ttl: Duration::from_secs(5),
                        advance: Some(7),
                    })
                    .await
            }
        });
        for result in futures::future::join_all(exits).await {
            result.expect("exit");
        }
        for key in &keys {
            assert_eq!(version.get(key).await.expect("get"), Some(7), "{key}");
            assert!(
                lock.acquire(key, Duration::from_secs(1))
                    .await
                    .expect("acquire")
                    .is_some(),
                "{key} was released"
            );
        }
    }
}
