#!/usr/bin/env bash
# TLS throughput (issue 18): Junction's AMQPS and MQTTS listeners against RabbitMQ's, on this
# machine over loopback, in the same run, with the same junction-perf command lines (its
# clients use rustls, trusting a throwaway CA made by junction-test-certs for the run).
# Prints each run and the medians of received msg/s with each broker's peak resident memory
# (VmHWM) and the broker's CPU seconds, and the ratio Junction / RabbitMQ.
#
# Usage: bench/tls.sh
# Environment: DURATION [10] seconds per run, DRAIN [10], ROUNDS [3] runs per broker and
#   scenario, SCENARIOS [amqps-transient amqps-ack mqtts-qos1].
# RabbitMQ is Debian's rabbitmq-server, started by bench/peers/peers.sh with TLS listeners
# (AMQPS 5681, MQTTS 8893); every broker this starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
DRAIN=${DRAIN:-10}
SCENARIOS=${SCENARIOS:-amqps-transient amqps-ack mqtts-qos1}

bench/peers/peers.sh install
cargo build --release --locked -p junction -p junction-perf
cargo build --release --locked -p junction-tests --bin junction-test-certs
perf=target/release/junction-perf

work=$(mktemp -d)
junction_pid=""
cleanup() {
  if [ -n "$junction_pid" ]; then kill "$junction_pid" 2>/dev/null || true; wait "$junction_pid" 2>/dev/null || true; fi
  bench/peers/peers.sh stop rabbitmq || true
  rm -rf "$work"
}
trap cleanup EXIT

target/release/junction-test-certs "$work/certs"
cat > "$work/junction.toml" <<TOML
[tls]
certfile = "$work/certs/server.pem"
keyfile = "$work/certs/server.key"
TOML
PEER_TLS_DIR="$work/certs" bench/peers/peers.sh start rabbitmq
rabbit_pid=$(bench/peers/peers.sh pid rabbitmq)

start_junction() {
  local data=$work/data-$RANDOM
  mkdir -p "$data"
  target/release/junction --config "$work/junction.toml" --data-dir "$data/d" \
    --amqp off --mqtt off --stomp off --http off --web-stomp off --web-mqtt off --prometheus off \
    --amqps 127.0.0.1:0 --mqtts 127.0.0.1:0 --stomps off --https off --web-stomps off --web-mqtts off \
    > "$data/out" 2> "$data/log" < /dev/null &
  junction_pid=$!
  for _ in $(seq 1 300); do
    grep -q '^ready$' "$data/out" 2>/dev/null && break
    sleep 0.1
  done
  port() { awk -v l="$1" '$1 == "listening" && $2 == l {n = split($3, a, ":"); print a[n]}' "$data/out"; }
  port_amqps=$(port amqps)
  port_mqtts=$(port mqtts)
}

stop_junction() {
  kill "$junction_pid"
  wait "$junction_pid" 2>/dev/null || true
  junction_pid=""
}

# scenario NAME AMQPS_PORT MQTTS_PORT: the junction-perf arguments (host localhost: the
# certificate names it).
scenario() {
  local common="--host localhost --cacert $work/certs/ca.pem"
  case $1 in
    amqps-transient) echo "amqp $common --port $2 --producers 1 --consumers 1 --queues 1 --size 16 --auto-ack" ;;
    amqps-ack) echo "amqp $common --port $2 --producers 1 --consumers 1 --queues 1 --size 1024 --prefetch 100" ;;
    mqtts-qos1) echo "mqtt $common --port $3 --producers 10 --consumers 1 --size 64 --qos 1" ;;
    *) echo "unknown scenario $1" >&2; exit 1 ;;
  esac
}

results=$work/results
: > "$results"
for name in $SCENARIOS; do
  for round in $(seq 1 "$ROUNDS"); do
    for which in junction rabbitmq; do
      if [ "$which" = junction ]; then
        start_junction
        pid=$junction_pid
        args=$(scenario "$name" "$port_amqps" "$port_mqtts")
      else
        pid=$rabbit_pid
        args=$(scenario "$name" 5681 8893)
      fi
      # shellcheck disable=SC2086
      json=$({ "$perf" $args --duration "$DURATION" --drain "$DRAIN" --broker-pid "$pid" --quiet \
        2>/dev/null || true; } | sed -n 's/^JSON //p' | tail -1)
      hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
      [ "$which" = junction ] && stop_junction
      read -r rate cpu < <(python3 -c 'import json,sys; j=json.loads(sys.argv[1] or "{}"); print(j.get("received_per_s") or 0, j.get("broker_cpu_s") or 0)' "$json")
      printf '%s %s %s %s %s\n' "$name" "$which" "$rate" "$hwm" "$cpu" >> "$results"
      printf '%-16s round %s %-8s %12.0f msg/s  VmHWM %7d KiB  broker CPU %6.1f s\n' "$name" "$round" "$which" "$rate" "$hwm" "$cpu"
    done
  done
done

python3 - "$results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, which, rate, hwm, cpu = line.split()
    runs.setdefault(name, {}).setdefault(which, []).append((float(rate), int(hwm), float(cpu)))
print(f"\n{'scenario':16} {'Junction msg/s':>15} {'RabbitMQ msg/s':>15} {'J/R':>6} {'J VmHWM':>10} {'R VmHWM':>10}")
for name, by in runs.items():
    j = statistics.median(r for r, _, _ in by["junction"]); r = statistics.median(r for r, _, _ in by["rabbitmq"])
    jh = max(h for _, h, _ in by["junction"]); rh = max(h for _, h, _ in by["rabbitmq"])
    print(f"{name:16} {j:15,.0f} {r:15,.0f} {j / r if r else 0:6.2f} {jh / 1024:7.1f} MiB {rh / 1024:7.1f} MiB")
PY
