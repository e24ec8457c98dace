#!/usr/bin/env bash
# The storage scenario of issue 3: a durable queue with N persistent 1 KiB messages (default
# 10 million), published with confirms; the broker is killed with SIGKILL, restarted, and the
# backlog drained in order. Prints confirmed msgs/s, resident memory at each step, recovery
# time and drain rate. Needs about 1.3 GB of disk per million messages under $DATA_DIR.
# Usage: bench/backlog.sh [N]         (not part of the test run; results go to bench/RESULTS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000000}
data=${DATA_DIR:-$(mktemp -d)}
port=${PORT:-25672}
cargo build --release -q -p junction -p junction-examples
export AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2f"

start_broker() {
  target/release/junction --data-dir "$data" --amqp "127.0.0.1:$port" --mqtt off --stomp off \
    --http off --web-stomp off --web-mqtt off --prometheus off > "$data/broker.out" 2>> "$data/broker.log" &
  broker=$!
  for _ in $(seq 1 600); do grep -q '^ready$' "$data/broker.out" 2>/dev/null && return; sleep 0.2; done
  echo "broker did not start" >&2; exit 1
}
rss() { awk '/VmRSS/ {printf "%.0f MB", $2/1024}' "/proc/$broker/status"; }

start_broker
target/release/backlog publish "$count"
echo "resident memory with the backlog: $(rss)"
kill -9 "$broker"; wait "$broker" 2>/dev/null || true
echo "log size: $(du -sh "$data/messages" | cut -f1)"
start_broker
grep 'message log recovered' "$data/broker.log" | tail -1
echo "resident memory after recovery: $(rss)"
target/release/backlog drain "$count"
echo "resident memory after draining: $(rss)"
kill "$broker"; wait "$broker" 2>/dev/null || true
echo "log size after draining: $(du -sh "$data/messages" | cut -f1)"
