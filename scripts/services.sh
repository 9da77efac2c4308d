#!/usr/bin/env bash
# Makes sure the local PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer,
# starting them if they do not, and installs Debian's kcat when missing. Exits non-zero,
# saying what to start, if the stores stay down.
set -euo pipefail

wait_for() { # name, check command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "error: $name does not answer on 127.0.0.1; start it and run again" >&2
  return 1
}

postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

if ! postgres_up; then
  echo "PostgreSQL is not answering; starting it" >&2
  if [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if ! redis_up; then
  echo "Redis is not answering; starting it" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi
wait_for "PostgreSQL (pg_ctlcluster <version> main start)" postgres_up
wait_for "Redis (redis-server --port 6379)" redis_up
echo "PostgreSQL and Redis are up" >&2

# Debian's kcat (librdkafka 2.0.2): the suite checks that an older client authenticates with
# every SASL mechanism (cli/tests/users.rs). Installed from Debian's packages when missing.
if ! command -v kcat >/dev/null 2>&1; then
  echo "kcat is not installed; installing Debian's package" >&2
  if command -v apt-get >/dev/null 2>&1; then
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get install -y -q kcat >/dev/null 2>&1 ||
      { $sudo_ apt-get update -q >/dev/null 2>&1 && $sudo_ apt-get install -y -q kcat >/dev/null 2>&1; } ||
      echo "warning: could not install kcat (apt-get install kcat); its test will fail saying so" >&2
  fi
fi
