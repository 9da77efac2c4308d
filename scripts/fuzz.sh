#!/usr/bin/env bash
# Builds the cargo-fuzz targets of the embedded server (server/fuzz/, nightly toolchain) and
# runs each one over its seed corpus, exiting non-zero as soon as a target crashes (a panic,
# an allocation over the malloc limit, an RSS over the RSS limit, or a timeout).
#
# Usage: scripts/fuzz.sh [-runs=N | -max_total_time=SECONDS] [target...]
#   default: -runs=20000 for each of request_frame, record_batch, segment_recovery.
# A long campaign: scripts/fuzz.sh -runs=10000000 record_batch   (see server/fuzz/README.md)
#
# FUZZ_SANITIZER=none builds without AddressSanitizer (cargo fuzz -s none): many times the
# executions per second (request_frame: 119,000/s against about 4,000/s), for long campaigns
# over the (safe Rust) decoders; panics, allocations over the malloc limit and timeouts still
# count as crashes.
#
# Needs `cargo install cargo-fuzz --locked` and `rustup toolchain install nightly`. Not part
# of CI's test command: nightly sanitizer builds are slow.
set -euo pipefail

cd "$(dirname "$0")/../server/fuzz"

limit="-runs=20000"
if [ $# -gt 0 ] && [[ "$1" == -* ]]; then
  limit=$1
  shift
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(request_frame record_batch segment_recovery)
fi

sanitizer=(-s "${FUZZ_SANITIZER:-address}")
for target in "${targets[@]}"; do cargo +nightly fuzz build -O "${sanitizer[@]}" "$target"; done

for target in "${targets[@]}"; do
  echo "== fuzzing $target ($limit)"
  mkdir -p "corpus/$target" "artifacts/$target"
  # A scratch copy of the corpus takes the new inputs, so a run does not grow the committed one.
  work=$(mktemp -d)
  cp -r "corpus/$target/." "$work/"
  status=0
  cargo +nightly fuzz run -O "${sanitizer[@]}" "$target" "$work" -- \
    "$limit" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
    || status=$?
  rm -rf "$work"
  if [ "$status" -ne 0 ]; then
    echo "error: $target crashed (exit $status); the input is in server/fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
echo "all fuzz targets ran without a crash"
