#!/usr/bin/env bash
# The bindings scenario of issue 13 (defect 4), against the release build:
#  1. N MQTT subscriptions on amq.topic (default 100,000: 10 connections, one filter per
#     SUBSCRIBE, each waiting for its SUBACK), timed in total (target: under 10 s);
#  2. N durable AMQP bindings on amq.topic (100 durable queues), then a clean stop and a
#     restart timed from the start of the process to its `ready` line (target: under 5 s).
# Prints the figures and the broker's resident memory. Results go to bench/RESULTS.md.
# The data directory is a fresh temporary directory unless DATA_DIR names one.
# Usage: bench/bindings.sh [N]         (not part of the test run)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-100000}
data=${DATA_DIR:-$(mktemp -d)}
cargo build --release -q -p junction -p junction-perf

broker=
start_broker() {
  : > "$data/broker.out"
  local started
  started=$(date +%s.%N)
  target/release/junction --data-dir "$data" --amqp 127.0.0.1:0 --mqtt 127.0.0.1:0 --stomp off \
    --http off --web-stomp off --web-mqtt off --prometheus off > "$data/broker.out" 2>> "$data/broker.log" &
  broker=$!
  for _ in $(seq 1 6000); do
    if grep -q '^ready$' "$data/broker.out" 2>/dev/null; then
      ready_seconds=$(echo "$(date +%s.%N) - $started" | bc)
      amqp_port=$(awk '$2 == "amqp" {split($3, a, ":"); print a[2]}' "$data/broker.out")
      mqtt_port=$(awk '$2 == "mqtt" {split($3, a, ":"); print a[2]}' "$data/broker.out")
      return
    fi
    sleep 0.01
  done
  echo "broker did not start" >&2; exit 1
}
stop_broker() { kill "$broker"; wait "$broker" 2>/dev/null || true; }
rss() { awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$broker/status"; }
trap 'kill "$broker" 2>/dev/null || true; [ -n "${DATA_DIR:-}" ] || rm -rf "$data"' EXIT

echo "== $count MQTT subscriptions on amq.topic"
start_broker
echo "resident memory before: $(rss)"
target/release/junction-perf bindings --phase subscribe --port "$mqtt_port" --count "$count"
echo "resident memory with $count bindings: $(rss)"
stop_broker

echo "== $count durable bindings, then a restart"
rm -rf "$data"/definitions.redb "$data"/messages
start_broker
target/release/junction-perf bindings --phase durable --port "$amqp_port" --count "$count"
stop_broker
echo "definitions store: $(du -h "$data/definitions.redb" | cut -f1)"
start_broker
echo "restart with $count durable bindings: ready after ${ready_seconds} s, resident memory $(rss)"
stop_broker
