#!/usr/bin/env bash
# The whole test suite: services up, formatting, lints and rustdoc clean, every test run (unit,
# integration, UI, doc tests and the benchmarks' smoke runs), then one closing line with the
# totals.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --doc 2>&1 | tee -a "$log"
# The ledger's end-to-end test runs the example as worker processes: `cargo test` builds
# examples only as test harnesses, so build the binary itself first.
cargo build --locked --example ledger
cargo test --workspace --locked --all-targets "$@" 2>&1 | tee -a "$log"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
