#!/usr/bin/env bash
# Issue 14's transient paging target: N transient 1 KiB messages (default 10 million) published
# with confirms to a queue nobody consumes, then drained in order. The queue keeps at most
# [storage] max_loaded_bytes_per_queue of bodies in memory (64 MiB by default) and pages the
# rest to <data dir>/overflow/. Prints the publish and drain rates and the broker's resident
# memory (VmRSS) and peak (VmHWM) after each step. Needs about 1.1 GB of disk per million
# messages under $DATA_DIR.
# Usage: bench/transient_backlog_10m.sh [N]   (not part of the test run)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000000}
data=${DATA_DIR:-$(mktemp -d)}
port=${PORT:-25673}
cargo build --release -q -p junction -p junction-examples
export AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2f"

target/release/junction --data-dir "$data" --amqp "127.0.0.1:$port" --mqtt off --stomp off \
  --http off --web-stomp off --web-mqtt off > "$data/broker.out" 2>> "$data/broker.log" &
broker=$!
trap 'kill "$broker" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do grep -q '^ready$' "$data/broker.out" 2>/dev/null && break; sleep 0.2; done
memory() { awk '/VmRSS|VmHWM/ {printf "%s %.0f MB  ", $1, $2/1024}' "/proc/$broker/status"; echo; }

echo "idle: $(memory)"
target/release/backlog publish-transient "$count"
echo "with the backlog: $(memory)"
echo "overflow on disk: $(du -sh "$data/overflow" | cut -f1)"
target/release/backlog drain "$count"
echo "after draining: $(memory)"
echo "overflow on disk after draining: $(du -sh "$data/overflow" | cut -f1)"
