#!/usr/bin/env bash
# Idle MQTT connections: a release broker on free loopback ports with a fresh data directory,
# and N (default 10000) rumqttc connections from examples/rust's mqtt_idle, each with a
# keep-alive of K seconds (default 10), held for HOLD seconds (default 30) while the clients
# send PINGREQs. Prints the broker's resident memory before (2 s after one warm-up
# connection) and while the connections are held (the first sample 2 s after the last
# CONNACK), the memory per connection, the time to connect them all, and how many survived.
# Usage: bench/mqtt_idle.sh [N [K [HOLD]]]   (not part of the test run; results go to
# bench/RESULTS.md). The open-files hard limit must allow N connections on each side.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-10000}
keep_alive=${2:-10}
hold=${3:-30}
cargo build --release -q -p junction -p junction-examples

data=$(mktemp -d)
broker=""
cleanup() {
  if [ -n "$broker" ] && kill -0 "$broker" 2>/dev/null; then
    kill "$broker"
    wait "$broker" 2>/dev/null || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT

# The broker needs a descriptor per connection too.
ulimit -n "$(ulimit -Hn)"
target/release/junction --data-dir "$data" --amqp off --mqtt 127.0.0.1:0 --stomp off \
  --http off --web-stomp off --web-mqtt off --prometheus off > "$data/broker.out" 2> "$data/broker.log" &
broker=$!
for _ in $(seq 1 300); do grep -q '^ready$' "$data/broker.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready$' "$data/broker.out" || { echo "broker did not start" >&2; exit 1; }
address=$(awk '$1 == "listening" && $2 == "mqtt" {print $3}' "$data/broker.out")
port=${address##*:}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$broker/status"; }
threads() { awk '/^Threads/ {print $2}' "/proc/$broker/status"; }

# One connection first, then 2 s to settle (an Argon2 check's memory goes back 1.2 s after
# it): what the first login costs once is not a cost per connection.
target/release/mqtt_idle --port "$port" --connections 1 --keep-alive "$keep_alive" --hold 0 > /dev/null
sleep 2
before=$(rss_kib)
echo "broker pid $broker, MQTT on $address; resident memory before: $before KiB"

# The tool prints "all connected" once every CONNACK is in; memory is sampled then and a few
# times while the connections are held.
samples=()
status=0
sampler=""
while IFS= read -r line; do
  echo "$line"
  case "$line" in
    "all connected"*)
      # As bench/compare.sh: 2 s later, once the logins' Argon2 memory is handed back.
      sleep 2
      after=$(rss_kib)
      samples+=("$after")
      echo "resident memory with $connections connections: $after KiB ($(threads) threads)"
      (
        for _ in 1 2 3; do
          sleep $(( hold / 4 > 0 ? hold / 4 : 1 ))
          echo "  while held: $(rss_kib) KiB"
        done
      ) &
      sampler=$!
      ;;
    "mqtt_idle exited with "*) status=${line##* } ;;
  esac
done < <(target/release/mqtt_idle --port "$port" --connections "$connections" \
  --keep-alive "$keep_alive" --hold "$hold"; echo "mqtt_idle exited with $?")
if [ -n "$sampler" ]; then wait "$sampler"; fi

if [ ${#samples[@]} -eq 0 ]; then
  echo "the connections were not all established" >&2
  exit 1
fi
echo "resident memory just after the clients exited: $(rss_kib) KiB"
sleep 2
echo "resident memory 2 s later: $(rss_kib) KiB"
awk -v b="$before" -v a="${samples[0]}" -v n="$connections" \
  'BEGIN {printf "per connection: %.1f KiB ((%d - %d) KiB / %d)\n", (a - b) / n, a, b, n}'
grep -c "keep-alive expired" "$data/broker.log" | sed 's/^/broker keep-alive expiries: /' || true
exit "$status"
