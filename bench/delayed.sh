#!/usr/bin/env bash
# Delayed messages at scale (issue 16): MESSAGES persistent messages held at once by an
# x-delayed-message exchange, then released over SPREAD seconds. Reports the broker's resident
# memory with every message pending (and VmHWM), the publish rate with confirms, and how late
# each message arrived after its due time (`junction-perf delayed`).
#
# RabbitMQ is not run beside it: its delayed-message exchange is a community plugin that
# Debian's rabbitmq-server does not ship, so there is no same-machine peer for this figure.
#
# Usage: bench/delayed.sh
# Environment (defaults in brackets): MESSAGES [1000000]  HOLD [60]  SPREAD [100]  SIZE [64]
#   BUILD [1]: 0 skips `cargo build --release`
# Takes HOLD + SPREAD seconds and a little more (about 3 minutes with the defaults).
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-1000000}
HOLD=${HOLD:-60}
SPREAD=${SPREAD:-100}
SIZE=${SIZE:-64}

if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release -p junction -p junction-perf
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/junction-delayed.XXXXXX")
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
target/release/junction --data-dir "$work/data" --amqp 127.0.0.1:0 --mqtt off --stomp off \
  --http off --web-stomp off --web-mqtt off --prometheus off >"$work/broker.log" 2>&1 &
pid=$!
port=""
for _ in $(seq 100); do
  port=$(sed -n "s/^listening amqp 127\.0\.0\.1:\([0-9]*\)$/\1/p" "$work/broker.log" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$work/broker.log"; echo "the broker did not start" >&2; exit 1; }
target/release/junction-perf delayed --port "$port" --messages "$MESSAGES" --hold "$HOLD" \
  --spread "$SPREAD" --size "$SIZE" --broker-pid "$pid"
