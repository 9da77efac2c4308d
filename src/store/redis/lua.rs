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
