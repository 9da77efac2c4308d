#!/usr/bin/env bash
# The whole test suite: services up, formatting, no import cycle, lints and rustdoc clean,
# every test run (unit, integration, the macros' UI tests, doc tests, the quickstart run as a
# user runs it, and the benchmarks' smoke runs), then the wall time of each phase and of each
# test binary, and one closing line with the totals.
#
# One build serves every phase. The workspace's crates are compiled by scripts/compile.sh
# (RUSTC_WORKSPACE_WRAPPER): clippy-driver with `-D warnings`, as `cargo clippy` runs it, so the
# lints of every target (`--all-targets`) come with one build of the dependencies instead of a
# check build of their own; and rustdoc with `-D warnings` over each library, reading the
# dependencies this build made, where `cargo doc` would build them again. One
# `cargo test --no-run --all-targets` builds the test binaries (one per crate: tests/*.rs are
# modules of it), the examples (the ledger's end-to-end test and the quickstart's test run the
# example binaries) and the benchmarks; `cargo nextest run` then runs the tests of all binaries
# in parallel (`.config/nextest.toml`), and the doc tests, the dependent crate and the
# benchmarks' smoke runs reuse what was built (the same wrapper is set for all of them, or the
# workspace's crates would be built again). Arguments go to nextest, e.g.
# `bash scripts/test.sh -E 'test(/^policies::/)'`.
set -uo pipefail
cd "$(dirname "$0")/.."
# The vendored wire-protocol crate is a workspace member through its path dependency; it is
# checked where the server uses it, not linted, documented or tested on its own.
# The `otel` feature is on, so its code is linted and documented and the trace test
# (tests/traces.rs) runs; the dependent crate below builds steadfast without it.
ws=(--workspace --exclude steadfast-kafka-protocol --features steadfast/otel)
# Incremental compilation pays when the same crates are rebuilt after small edits; the suite
# builds each once, and without it a clean build is faster and the target directory smaller.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# librdkafka (built from source by rdkafka-sys) without C debug symbols: its configure script
# reads this, and the tests never step through its C code. Not part of any fingerprint, so a
# `cargo test` outside this script reuses the same build.
export MKL_NO_DEBUG_SYMBOLS=${MKL_NO_DEBUG_SYMBOLS:-y}

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
times=$logs/times
touch "$logs/started"
now() { date +%s.%N; }
suite_start=$(now)
failed=()
junit=target/nextest/default/junit.xml

# phase NAME COMMAND...: runs COMMAND with its output also in the log and records its wall
# time and exit status.
phase() {
  local name=$1 start status
  shift
  start=$(now)
  echo "==> $name: $*" >&2
  "$@" 2>&1 | tee "$logs/$name.log"
  status=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$(awk -v a="$start" -v b="$(now)" 'BEGIN { print b - a }')" \
    "$status" >>"$times"
  [ "$status" -eq 0 ] || failed+=("$name")
  return "$status"
}

report() {
  echo
  if [ -f "$junit" ] && [ "$junit" -nt "$logs/started" ]; then
    echo "test modules (tests, summed test time, longest test; they run in parallel):"
    # nextest's JUnit report: one <testcase name="<module>::<test>"
    # classname="<crate>::<binary>" time="..."> per test.
    awk 'BEGIN { RS = "<" }
         /^testcase / {
           c = $0; sub(/.*classname="/, "", c); sub(/".*/, "", c)
           md = $0; sub(/.* name="/, "", md); sub(/".*/, "", md)
           if (md ~ /::/) { sub(/::.*/, "", md); c = c "::" md }
           t = $0; sub(/.*time="/, "", t); sub(/".*/, "", t)
           n[c]++; s[c] += t; if (t > m[c]) m[c] = t
         }
         END { for (c in n) printf "  %-44s %4d %8.1f s %7.1f s\n", c, n[c], s[c], m[c] }' \
      "$junit" | sort -k3 -n -r
    echo
  fi
  echo "phase times (wall):"
  awk -F'\t' '{ printf "  %-14s %7.1f s%s\n", $1, $2, ($3 == 0 ? "" : "  FAILED (exit " $3 ")") }' "$times"
  printf '  %-14s %7.1f s\n' total "$(awk -v a="$suite_start" -v b="$(now)" 'BEGIN { print b - a }')"
  # Totals: nextest's "Summary [...] T tests run: N passed, M failed, ..." where nextest ran
  # the tests, libtest's "test result: ok. N passed; M failed; ..." lines otherwise (cargo
  # test, the doc tests); with --no-capture nextest also shows libtest's lines, which then
  # do not count a second time.
  for f in "$logs"/tests.log "$logs"/doc-tests.log "$logs"/dependent.log; do
    [ -f "$f" ] || continue
    if grep -q '^ *Summary \[' "$f"; then grep '^ *Summary \[' "$f"; else grep '^test result:' "$f"; fi
  done | awk '{ for (i = 1; i < NF; i++) {
                  if ($(i+1) ~ /^passed/) p += $i
                  if ($(i+1) ~ /^failed/ || $(i+1) ~ /^timed/) f += $i
                } }
              END { printf "tests: %d passed, %d failed\n", p, f }'
}

# beside NAME COMMAND...: `phase NAME COMMAND...` in the background, once nextest has started
# running the tests (its build step done, the target directory's lock free): the tests wait
# on sockets and timers more than they compute, and these phases use the time. Their output
# goes to their logs, shown by `await_beside`, which waits for them and records failures.
beside_pids=()
beside_names=()
beside() {
  local name=$1
  (
    until grep -qE '^ *Starting [0-9]+ tests' "$logs/tests.log" 2>/dev/null ||
      [ -e "$logs/tests.done" ]; do
      sleep 0.5
    done
    phase "$@" >/dev/null 2>&1
  ) &
  beside_pids+=($!)
  beside_names+=("$name")
}
await_beside() {
  local i
  for i in "${!beside_pids[@]}"; do
    wait "${beside_pids[$i]}" || failed+=("${beside_names[$i]}")
    echo "==> ${beside_names[$i]} (ran beside the tests):"
    cat "$logs/${beside_names[$i]}.log"
  done
}

# Checks and builds: the first that fails ends the run.
gate() {
  phase "$@" || {
    report
    echo "stopped: $1 failed" >&2
    exit 1
  }
}

# cargo-nextest runs the tests of all binaries in parallel; without it, `cargo test` runs the
# same tests one binary after the other.
if cargo nextest --version >/dev/null 2>&1; then
  run_tests=(cargo nextest run "${ws[@]}" --locked --no-fail-fast)
else
  echo "cargo-nextest is not installed (cargo install cargo-nextest --locked): the tests run" \
    "one binary at a time with cargo test" >&2
  run_tests=(cargo test "${ws[@]}" --locked --no-fail-fast --lib --bins --tests)
fi

gate services bash scripts/services.sh
# Chromium and chromedriver for the console's browser test, installed beside the build
# when missing (a download the build need not wait for); the tests wait for it.
bash scripts/browser.sh >"$logs/browser.log" 2>&1 &
browser_pid=$!
gate fmt cargo fmt --all -- --check
# No file-level import cycle in any crate of the workspace (see the script for the rule).
gate imports python3 scripts/import_cycles.py
export RUSTC_WORKSPACE_WRAPPER=$PWD/scripts/compile.sh
LINT_DRIVER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)
export LINT_DRIVER
if [ -n "$LINT_DRIVER" ]; then
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
else
  echo "clippy-driver not found (rustup component add clippy): linting with cargo clippy" >&2
  gate clippy cargo clippy "${ws[@]}" --all-targets --profile test --locked -- -D warnings
fi
# Every test binary, the examples and the benchmarks, with the test profile (linted, and the
# libraries documented).
# `--timings`: what each crate's build took, in target/cargo-timings/cargo-timing.html.
gate build cargo test "${ws[@]}" --locked --all-targets --no-run --timings
# Beside the tests (nextest only; `cargo test` holds the target directory while it runs, so
# these two take turns): the benchmarks' quick smoke passes (run without `--bench`, as
# `cargo test` runs them; their figures are not checked, so the load of the tests beside them
# changes nothing they assert), and a crate outside the workspace that depends on steadfast by
# path, as a user's does (see tests/dependent/Cargo.toml). Its target directory is the
# workspace's, so most dependencies built above are reused.
bench_smoke=(cargo test "${ws[@]}" --locked --benches)
dependent=(cargo test --manifest-path tests/dependent/Cargo.toml --locked --target-dir target)
if [ "${run_tests[0]} ${run_tests[1]}" = "cargo nextest" ]; then
  beside bench-smoke "${bench_smoke[@]}"
  beside dependent "${dependent[@]}"
fi
if ! wait "$browser_pid"; then
  cat "$logs/browser.log" >&2
  failed+=(browser)
fi
# The tests: all of them run, whatever fails.
phase tests "${run_tests[@]}" "$@"
touch "$logs/tests.done"
if [ ${#beside_pids[@]} -gt 0 ]; then
  await_beside
else
  phase bench-smoke "${bench_smoke[@]}"
  phase dependent "${dependent[@]}"
fi
phase doc-tests cargo test "${ws[@]}" --locked --doc
report
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
