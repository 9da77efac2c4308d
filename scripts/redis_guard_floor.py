#!/usr/bin/env python3
"""Where a record's Redis time goes in the combined guards' scripts (issue 24).

Runs the `ENTER` and `EXIT` scripts of `src/store/redis/guards.rs` (their Lua read from the
source) over 256 entries a run, as the worker's coalesced calls do, against a Redis at
`REDIS_URL` (default `redis://127.0.0.1:6379/15`: database 15 is flushed between variants),
and beside them variants that keep one part each: the writes alone (the same `SET`s and
`DEL`), the reads alone (one `MGET` a run each way), the keys and arguments alone (an empty
script). Then the cost of one `SET ... PX` of a new key, pipelined and inside Lua. Each
figure is Redis's own time (`INFO commandstats`) divided by the records, median of the
rounds. Needs `pip install redis`.

    python3 scripts/redis_guard_floor.py [rounds]
"""

import os
import re
import statistics
import sys

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRIES = 256
RUNS = 100
PREFIX = "steadfast:floor-0123456789abcdef"


def lua(path, name):
    text = open(os.path.join(ROOT, path)).read()
    found = re.search(r"(?:const|static) " + name + r'[^=]*=.*?r#"(.*?)"#', text, re.S)
    if not found:
        sys.exit(f"{name} not found in {path}")
    return found.group(1)


def scripts():
    compare = lua("src/store/redis/lua.rs", "COMPARE_INTEGERS")
    now = lua("src/store/redis/lua.rs", "NOW_US")
    may_grant = lua("src/store/redis/lua.rs", "MAY_GRANT")
    one_read = lua("src/store/redis/guards.rs", "ONE_READ")
    enter = compare + now + may_grant + one_read + lua("src/store/redis/guards.rs", "ENTER")
    exit_ = compare + one_read + lua("src/store/redis/guards.rs", "EXIT")
    answers = (
        "local answers = {} for i = 1, #KEYS / 4 do "
        "answers[#answers + 1] = 5; answers[#answers + 1] = '1' end "
    )
    writes_enter = """
for i = 0, #KEYS / 4 - 1 do
  local k, a = i * 4, i * 6
  redis.call('SET', KEYS[k + 3], '1', 'PX', ARGV[a + 3])
  redis.call('SET', KEYS[k + 2], '1', 'PX', ARGV[a + 2])
  redis.call('SET', KEYS[k + 4], ARGV[a + 4], 'PX', ARGV[a + 5])
end
""" + answers + "return answers"
    writes_exit = """
local released = {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = i * 3, i * 5
  redis.call('SET', KEYS[k + 2], 'c', 'PX', ARGV[a + 4])
  redis.call('SET', KEYS[k + 3], ARGV[a + 5])
  released[#released + 1] = KEYS[k + 1]
end
redis.call('DEL', unpack(released))
return {}
"""
    return {
        "the scripts": (enter, exit_),
        "the writes alone (5 SET and a DEL's share a record)": (writes_enter, writes_exit),
        "the reads alone (one MGET a run each way)": (
            "redis.call('MGET', unpack(KEYS)) " + answers + "return answers",
            "redis.call('MGET', unpack(KEYS)) return {}",
        ),
        "keys and arguments alone (an empty script)": (answers + "return answers", "return {}"),
    }


def evalsha_us(r):
    stats = r.info("commandstats")
    return sum(v["usec"] for k, v in stats.items() if k.startswith("cmdstat_evalsha"))


def one_round(r, enter_src, exit_src):
    enter, exit_ = r.register_script(enter_src), r.register_script(exit_src)
    r.flushdb()
    r.config_resetstat()
    for run in range(RUNS):
        keys, args, exit_keys, exit_args = [], [], [], []
        for i in range(ENTRIES):
            n = run * ENTRIES + i
            key, id_ = f"key-{n}", f"id-{n}"
            keys += [f"{PREFIX}:version:{key}", f"{PREFIX}:lock:{key}",
                     f"{PREFIX}:token:{key}", f"{PREFIX}:dedup:{id_}"]
            args += [str(n), "30000", "600000", "r:worker-0123456789", "60000",
                     f"{PREFIX}:granting:lock"]
        answers = enter(keys=keys, args=args)
        for i in range(ENTRIES):
            n = run * ENTRIES + i
            key, id_ = f"key-{n}", f"id-{n}"
            token = answers[i * 2 + 1]
            exit_keys += [f"{PREFIX}:lock:{key}", f"{PREFIX}:dedup:{id_}",
                          f"{PREFIX}:version:{key}"]
            exit_args += [token.decode() if isinstance(token, bytes) else str(token),
                          "r:worker-0123456789", "1", "86400000", str(n)]
        exit_(keys=exit_keys, args=exit_args)
    return evalsha_us(r) / (RUNS * ENTRIES)


def set_cost(r):
    keys = [f"{PREFIX}:lock:key-{i}" for i in range(100_000)]
    r.flushdb()
    r.config_resetstat()
    pipe = r.pipeline(transaction=False)
    for i, key in enumerate(keys):
        pipe.set(key, "1700000000123456", px=30000)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    pipelined = r.info("commandstats")["cmdstat_set"]["usec_per_call"]
    r.flushdb()
    r.config_resetstat()
    script = r.register_script(
        "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'PX', 30000) end return 1")
    for i in range(0, len(keys), ENTRIES):
        script(keys=keys[i:i + ENTRIES], args=["1700000000123456"])
    stats = r.info("commandstats")
    in_lua = stats["cmdstat_set"]["usec_per_call"]
    whole = stats["cmdstat_evalsha"]["usec"] / len(keys)
    r.flushdb()
    return pipelined, in_lua, whole


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    variants = scripts()
    results = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (enter, exit_) in variants.items():
            results[name].append(one_round(r, enter, exit_))
    print(f"Redis time a record, {RUNS} runs of {ENTRIES} entries each way, {rounds} rounds:")
    for name, values in results.items():
        print(f"  {name}: median {statistics.median(values):.2f} µs "
              f"(min {min(values):.2f}, max {max(values):.2f})")
    pipelined, in_lua, whole = set_cost(r)
    print(f"One SET ... PX of a new key: {pipelined:.2f} µs pipelined; in Lua {in_lua:.2f} µs "
          f"for the command, {whole:.2f} µs with the crossing")


if __name__ == "__main__":
    main()
