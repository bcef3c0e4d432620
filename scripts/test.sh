#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian 12 machine it first installs what the
# tests talk to (curl, openssl, nginx) and cargo-nextest, when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

cargo nextest run --workspace "$@"
