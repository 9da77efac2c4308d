#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver when either is missing: the console's
# browser test (cli/tests/console.rs) drives headless Chromium through chromedriver. Exits
# non-zero, saying what to install, when they cannot be installed.
set -uo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
echo "chromium or chromedriver is not installed; installing Debian's packages" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no apt-get: install chromium and chromedriver, then run again" >&2
  exit 1
fi
sudo_=""
[ "$(id -u)" -eq 0 ] || sudo_="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo_ apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 ||
  { $sudo_ apt-get update -q >/dev/null 2>&1 &&
    $sudo_ apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || {
  echo "error: could not install chromium and chromium-driver (apt-get install chromium" \
    "chromium-driver); the console's browser test will fail saying so" >&2
  exit 1
}
echo "chromium and chromedriver installed" >&2
