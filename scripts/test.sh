#!/usr/bin/env bash
# The whole test suite: services up, formatting and lints clean, every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --all-targets "$@"
cargo test --workspace --locked --doc
