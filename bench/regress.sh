#!/usr/bin/env bash
# Before/after benchmark: two Junction binaries, the same junction-perf scenarios, run
# alternately (A, B, A, B, ...) so that the machine's drift falls on both. Prints each run and
# the medians of received msg/s with the broker's peak resident memory (VmHWM), and the ratio
# B / A. Use it to check that a change did not cost the hot path what bench/compare.sh measured.
#
# Usage: bench/regress.sh OLD_JUNCTION NEW_JUNCTION [JUNCTION_PERF]
#   JUNCTION_PERF defaults to target/release/junction-perf (built if missing).
# Environment: DURATION [10] seconds per run, DRAIN [10] seconds a run may drain after
#   publishing (a run that has not delivered everything by then still reports its rate, as
#   messages received per second until the last), ROUNDS [3] runs per binary and scenario,
#   SCENARIOS [amqp-transient amqp-ack amqp-persistent mqtt-qos1 stomp].
# Every broker it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

old=${1:?usage: bench/regress.sh OLD_JUNCTION NEW_JUNCTION [JUNCTION_PERF]}
new=${2:?usage: bench/regress.sh OLD_JUNCTION NEW_JUNCTION [JUNCTION_PERF]}
perf=${3:-target/release/junction-perf}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
DRAIN=${DRAIN:-10}
SCENARIOS=${SCENARIOS:-amqp-transient amqp-ack amqp-persistent mqtt-qos1 stomp}
if [ ! -x "$perf" ]; then
  cargo build --release --locked -p junction-perf
fi

work=$(mktemp -d)
broker_pid=""
cleanup() {
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# start BINARY: a broker on free loopback ports; sets broker_pid and the port_* variables.
start() {
  local data=$work/data-$RANDOM
  mkdir -p "$data"
  # Builds before the Prometheus listener existed do not know its flag.
  local extra=()
  if "$1" --help | grep -q -- --prometheus; then extra=(--prometheus off); fi
  "$1" --data-dir "$data/d" --amqp 127.0.0.1:0 --mqtt 127.0.0.1:0 --stomp 127.0.0.1:0 \
    --http off --web-stomp off --web-mqtt off "${extra[@]}" > "$data/out" 2> "$data/log" < /dev/null &
  broker_pid=$!
  for _ in $(seq 1 300); do
    grep -q '^ready$' "$data/out" 2>/dev/null && break
    sleep 0.1
  done
  port() { awk -v l="$1" '$1 == "listening" && $2 == l {n = split($3, a, ":"); print a[n]}' "$data/out"; }
  port_amqp=$(port amqp)
  port_mqtt=$(port mqtt)
  port_stomp=$(port stomp)
}

stop() {
  kill "$broker_pid"
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
}

# scenario NAME: the junction-perf arguments of a scenario (as in bench/compare.sh).
scenario() {
  case $1 in
    amqp-transient) echo "amqp --port $port_amqp --producers 1 --consumers 1 --queues 1 --size 16 --auto-ack" ;;
    amqp-ack) echo "amqp --port $port_amqp --producers 1 --consumers 1 --queues 1 --size 16 --prefetch 100" ;;
    amqp-persistent) echo "amqp --port $port_amqp --producers 1 --consumers 1 --queues 1 --size 1024 --persistent --confirm 512 --prefetch 100" ;;
    mqtt-qos1) echo "mqtt --port $port_mqtt --producers 10 --consumers 1 --size 64 --qos 1" ;;
    stomp) echo "stomp --port $port_stomp --producers 1 --consumers 1 --size 16 --prefetch 100" ;;
    *) echo "unknown scenario $1" >&2; exit 1 ;;
  esac
}

results=$work/results
: > "$results"
for name in $SCENARIOS; do
  for round in $(seq 1 "$ROUNDS"); do
    for which in old new; do
      bin=$old
      [ "$which" = new ] && bin=$new
      start "$bin"
      # shellcheck disable=SC2046
      json=$({ "$perf" $(scenario "$name") --duration "$DURATION" --drain "$DRAIN" --quiet \
        2>/dev/null || true; } | sed -n 's/^JSON //p' | tail -1)
      hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$broker_pid/status")
      stop
      rate=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1] or "{}").get("received_per_s", 0))' "$json")
      printf '%s %s %s %s\n' "$name" "$which" "$rate" "$hwm" >> "$results"
      printf '%-16s round %s %-3s %12.0f msg/s  VmHWM %6d KiB\n' "$name" "$round" "$which" "$rate" "$hwm"
    done
  done
done

python3 - "$results" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, which, rate, hwm = line.split()
    runs.setdefault(name, {}).setdefault(which, []).append((float(rate), int(hwm)))
print(f"\n{'scenario':16} {'old msg/s':>12} {'new msg/s':>12} {'new/old':>8} {'old VmHWM':>10} {'new VmHWM':>10}")
for name, by in runs.items():
    o = statistics.median(r for r, _ in by["old"]); n = statistics.median(r for r, _ in by["new"])
    oh = max(h for _, h in by["old"]); nh = max(h for _, h in by["new"])
    print(f"{name:16} {o:12,.0f} {n:12,.0f} {n / o if o else 0:8.2f} {oh / 1024:8.1f} MiB {nh / 1024:8.1f} MiB")
EOF
