#!/usr/bin/env bash
# The adversarial suite (tests/adversarial): crash, freeze, memory, auth and garbage attacks on
# the release binary, each while a canary client per protocol (pika, paho-mqtt over TCP and
# WebSocket, stomp.py over TCP and WebSocket) keeps doing round trips; a test fails if the
# broker dies, a canary stalls for more than 5 s, the broker's resident memory passes 512 MiB,
# or an attack gets what its permissions deny.
# Usage: scripts/adversarial.sh [pytest arguments]   (scripts/test.sh runs it as its last step)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "Python clients (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/interop/python/requirements.txt

step "Build (release)"
cargo build --release --locked -p junction
export JUNCTION_BIN="$root/target/release/junction"

step "Adversarial suite (tests/adversarial, release binary)"
.venv/bin/python -m pytest tests/adversarial -q "$@"
