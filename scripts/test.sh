#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian 12 machine it first installs what the
# tests talk to (curl, openssl, nginx, HAProxy, wrk, h2load) and cargo-nextest, when
# they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v cmake >/dev/null || missing+=(cmake)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
  # Debian's nginx and HAProxy packages start system instances; the tests start their own.
  for service in nginx haproxy; do
    $sudo systemctl stop $service 2>/dev/null || $sudo service $service stop 2>/dev/null || true
  done
fi
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

cargo nextest run --workspace "$@"
