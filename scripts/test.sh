#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine and runs them all:
#   - Rust: unit tests, and end-to-end tests that drive the real binary with lapin;
#   - Python: pika, paho-mqtt and stomp.py tests, in a virtualenv at .venv, and
#     mosquitto_pub/sub (Debian's mosquitto-clients, installed with apt-get when missing);
#   - Node: amqplib, MQTT.js and @stomp/stompjs tests, with packages from
#     tests/interop/node/package-lock.json, and the browser demo driven by playwright-core in
#     Debian's Chromium (installed with apt-get when missing);
#   - Debian's prometheus server, which scrapes the broker in a test (installed when missing);
#   - rabbitmqadmin v2 (cargo install), which the management API tests drive;
#   - last, the adversarial suite (scripts/adversarial.sh): attacks on the release binary while
#     a canary client per protocol keeps working.
# Usage: scripts/test.sh            (from anywhere; it works from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "Python clients (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/interop/python/requirements.txt

step "Debian packages: mosquitto-clients, chromium, prometheus"
missing=()
command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v prometheus >/dev/null || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The browser test must run here, not skip.
export JUNCTION_REQUIRE_BROWSER=1

step "rabbitmqadmin v2 (cargo install, kept in cargo's bin directory between runs)"
# The management API's tests drive RabbitMQ's own CLI unchanged; cargo install does nothing
# when this version is installed already.
cargo install --locked --quiet rabbitmqadmin@2.35.0
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

step "Node clients (tests/interop/node)"
(cd tests/interop/node && npm ci --no-audit --no-fund --loglevel=error)

step "Build"
cargo build --locked --workspace --all-targets
export JUNCTION_BIN="$root/target/debug/junction"

step "Rust tests (unit + end-to-end with lapin)"
cargo test --locked --workspace

step "Python tests (pika, paho-mqtt, stomp.py, mosquitto clients)"
.venv/bin/python -m pytest tests/interop/python -q

step "Node tests (amqplib, MQTT.js, @stomp/stompjs, Chromium)"
(cd tests/interop/node && npm test)

step "Adversarial suite (release binary)"
scripts/adversarial.sh

step "All tests passed"
