//! Pieces shared by the stores' Lua scripts.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: key. ARGV: value. Deletes the key when it holds the value (a holder releasing what
/// it holds, never what another took over since); 1 when deleted.
pub(super) static DELETE_IF_HOLDS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// `compare(a, b)`: -1, 0 or 1 for two integers in canonical decimal text (as Rust prints
/// them), exactly, beyond the 2^53 where Lua's numbers lose precision.
pub(super) const COMPARE_INTEGERS: &str = r#"
local function compare(a, b)
  local a_negative, b_negative = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if a_negative ~= b_negative then
    if a_negative then return -1 else return 1 end
  end
  if a_negative then a, b = b:sub(2), a:sub(2) end
  if #a ~= #b then
    if #a < #b then return -1 else return 1 end
  end
  if a == b then return 0 end
  if a < b then return -1 else return 1 end
end
"#;

/// `now_us()`: the Redis server's clock in microseconds.
pub(super) const NOW_US: &str = r#"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"#;

/// `may_grant(memory, lease_ms)`: whether this Redis may grant a lease of `lease_ms` of the
/// kind whose memory key is `memory` (`{prefix}:granting:{kind}`). A Redis that restarted
/// without its data forgot the leases it granted before; their holders may run until a lease
/// after the restart, and a grant of the same key meanwhile would run beside them. So a
/// grant waits until the server has been up for its lease (its `uptime_in_seconds` less one:
/// the difference of two whole-second clock readings overstates the time up by less than a
/// second), and then writes the lease into the memory key: the longest lease cleared so far,
/// which a later restart without data forgets with the rest. A lease not longer than it is
/// granted at once; so is any lease where the server refuses `INFO` or answers no uptime.
/// The answer is kept for the rest of the script run.
pub(super) const MAY_GRANT: &str = r#"
local granting = {}
local function may_grant(memory, lease_ms)
  local asked = memory .. ' ' .. lease_ms
  local known = granting[asked]
  if known ~= nil then return known end
  local lease = tonumber(lease_ms)
  local ok = tonumber(redis.call('GET', memory) or '-1') >= lease
  if not ok then
    local info = redis.pcall('INFO', 'server')
    local uptime = type(info) == 'string' and tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
    ok = not uptime or (uptime - 1) * 1000 >= lease
    if ok then redis.call('SET', memory, lease_ms) end
  end
  granting[asked] = ok
  return ok
end
"#;
