#!/usr/bin/env bash
# The compiler of the workspace's own crates in scripts/test.sh (RUSTC_WORKSPACE_WRAPPER):
# cargo runs `compile.sh <rustc> <args>` for each of them. It compiles with clippy-driver
# (the lints of `cargo clippy -- -D warnings`, in the same build) and, for a library or
# proc-macro crate, also runs rustdoc with `-D warnings` into target/doc, with the same flags
# and `--extern` paths as the compile: rustdoc reads the dependencies' metadata from this
# build, where `cargo doc` would build all of them a second time (in check mode) for it.
#
# Environment:
#   LINT_DRIVER  clippy-driver's path; empty: plain rustc, no lints beyond rustc's own.
#   DOC_CRATES   0: no rustdoc.
#   COMPILE_TRACE  a file: each rustdoc command line is appended to it (to see what rustdoc
#                  was given when it disagrees with `cargo doc`).
set -uo pipefail

rustc=$1
shift
args=("$@")

crate_name='' crate_type='' test=0 input='' out_dir=''
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[$i]} in
  --crate-name) crate_name=${args[$((i + 1))]} ;;
  --crate-type) crate_type=${args[$((i + 1))]} ;;
  --out-dir) out_dir=${args[$((i + 1))]} ;;
  --test) test=1 ;;
  *.rs) input=${args[$i]} ;;
  esac
done

documented=0
case $crate_type in
lib | proc-macro) documented=1 ;;
esac
# Probes (`rustc - --crate-name ___ --print ...`), test harnesses and the vendored protocol
# crate (checked where the server uses it) get no pages.
if [ "$test" = 1 ] || [ -z "$input" ] || [ -z "$out_dir" ] || [ "${DOC_CRATES:-1}" = 0 ] ||
  [ "$crate_name" = ___ ] || [ "$crate_name" = steadfast_kafka_protocol ]; then
  documented=0
fi

compile() {
  if [ -n "${LINT_DRIVER:-}" ]; then
    "$LINT_DRIVER" "$rustc" "${args[@]}"
  else
    "$rustc" "${args[@]}"
  fi
}

[ "$documented" = 1 ] || {
  compile
  exit
}

# rustdoc takes the compile's flags but for what only a compile does: what to emit and where,
# codegen options (accepted but meaningless), and artifact notices (cargo reads those of the
# compile). Its diagnostics go to cargo in the same JSON form as the compiler's.
doc_args=()
for ((i = 0; i < ${#args[@]}; i++)); do
  a=${args[$i]}
  case $a in
  --out-dir | -C | --codegen) i=$((i + 1)) ;;
  --emit=* | -C* | --codegen=*) ;;
  --json=*) doc_args+=(--json=diagnostic-rendered-ansi) ;;
  *) doc_args+=("$a") ;;
  esac
done
doc_dir=${out_dir%/*/*}/doc
doc_log=$(mktemp)
trap 'rm -f "$doc_log"' EXIT
rustdoc=${rustc%/*}/rustdoc
[ -x "$rustdoc" ] || rustdoc=rustdoc
[ -n "${COMPILE_TRACE:-}" ] && printf "%q " "$rustdoc" "${doc_args[@]}" >>"$COMPILE_TRACE" && echo >>"$COMPILE_TRACE"
"$rustdoc" "${doc_args[@]}" -o "$doc_dir" --crate-version "${CARGO_PKG_VERSION:-0.0.0}" \
  -D warnings 2>"$doc_log" &
doc_pid=$!
compile
status=$?
wait "$doc_pid"
doc_status=$?
cat "$doc_log" >&2
[ "$status" -ne 0 ] && exit "$status"
exit "$doc_status"
