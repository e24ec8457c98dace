#!/usr/bin/env bash
# Side-by-side benchmark (issue 7): Junction against RabbitMQ (AMQP 0-9-1, STOMP), Mosquitto
# (MQTT) and a plain TCP relay (the physical limit), on this machine, over loopback.
#
# What it does:
#   1. installs rabbitmq-server and mosquitto from Debian if missing (bench/peers/peers.sh),
#      and pika into .venv for the idle-connection client;
#   2. builds junction, junction-perf, tcp_relay and mqtt_idle (release);
#   3. starts the peers on their own loopback ports (RabbitMQ AMQP 5682, MQTT 1893, STOMP
#      61623; Mosquitto 1894), Junction on free loopback ports with a fresh data directory,
#      and the relay;
#   4. runs every scenario ROUNDS times, Junction and the peer alternately (J, P, J, P, ...),
#      with the same junction-perf command line, and keeps each run's `JSON ` line;
#   5. prints the medians and the ratio Junction / peer per scenario, and appends them as a
#      new dated section to bench/RESULTS.md.
# Every broker it started is stopped on exit, whatever the exit.
#
# Usage: bench/compare.sh
# Environment (defaults in brackets):
#   DURATION [10]  seconds each run publishes      ROUNDS [3]  runs per broker and scenario
#   DRAIN [10]     seconds a run may drain after publishing (junction-perf --drain)
#   SCENARIOS      space-separated subset of: amqp-idle mqtt-idle amqp-transient amqp-ack
#                  amqp-persistent amqp-fanout amqp-latency mqtt-qos0 mqtt-qos1 stomp relay
#                  relay-unbatched overload-mqtt-qos0 overload-mqtt-qos1 overload-amqp
#                  overload-stomp
#   OVERLOAD_DRAIN [60]   --drain of the overload scenarios (issue 14): flat out for DURATION
#                  s against a freshly started broker each (so its VmHWM is that run's peak),
#                  then up to this long to deliver what the broker accepted. Each reports
#                  accepted msg/s (written, or acknowledged with QoS 1), delivered msg/s,
#                  messages lost where delivery is guaranteed, and the broker's VmHWM:
#                    overload-mqtt-qos0  10 publishers -> 1 subscriber, 64 B, QoS 0
#                    overload-mqtt-qos1  the same with QoS 1 (publish and subscription)
#                      (both against Junction, Mosquitto and RabbitMQ's MQTT plugin)
#                    overload-amqp       1 -> 1, 16 B transient, auto-ack, no confirms
#                    overload-stomp      1 -> 1, 16 B, ack:auto, no receipts
#                      (both against Junction and RabbitMQ)
#   AMQP_IDLE [1000] / MQTT_IDLE [10000]   idle connections in the memory scenarios (MQTT
#                  idle connections are cheap: with fewer, the freed memory of the connect
#                  burst weighs on the per-connection figure)
#   IDLE_HOLD [5]  seconds the idle connections are held (memory is sampled 2 s in)
#   CONFIRM_WINDOW [512]   outstanding publisher confirms in the persistent scenario
#   LATENCY_RATE   msg/s of the latency scenario [half RabbitMQ's median in amqp-transient]
#   RESULTS [bench/RESULTS.md]   where the section is appended; `-` appends nowhere
#   KEEP_WORK [0]  1 keeps the work directory (logs of every run, runs.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
DRAIN=${DRAIN:-10}
AMQP_IDLE=${AMQP_IDLE:-1000}
MQTT_IDLE=${MQTT_IDLE:-10000}
IDLE_HOLD=${IDLE_HOLD:-5}
CONFIRM_WINDOW=${CONFIRM_WINDOW:-512}
LATENCY_RATE=${LATENCY_RATE:-}
RESULTS=${RESULTS:-bench/RESULTS.md}
KEEP_WORK=${KEEP_WORK:-0}
ALL_SCENARIOS="amqp-idle mqtt-idle amqp-transient amqp-ack amqp-persistent amqp-fanout \
amqp-latency mqtt-qos0 mqtt-qos1 stomp relay relay-unbatched overload-mqtt-qos0 \
overload-mqtt-qos1 overload-amqp overload-stomp"
OVERLOAD_DRAIN=${OVERLOAD_DRAIN:-60}
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}

peers=bench/peers/peers.sh
perf=target/release/junction-perf
relay=target/release/tcp_relay
mqtt_idle=target/release/mqtt_idle
python=.venv/bin/python

work=$(mktemp -d "${TMPDIR:-/tmp}/junction-compare.XXXXXX")
runs=$work/runs.jsonl            # one line per run (see bench/compare_report.py)
scenarios_file=$work/scenarios.jsonl
mkdir -p "$work/logs"
: > "$runs"
: > "$scenarios_file"

say() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Processes this script starts, and their cleanup.
junction_pid=""
relay_pid=""

stop_pid() {
  local pid=$1
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  say "stopping the brokers"
  stop_pid "$junction_pid"
  stop_pid "$relay_pid"
  "$peers" stop all || true
  if [ "$KEEP_WORK" = 1 ]; then
    say "work directory kept: $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Descriptors for thousands of connections, inherited by every broker and client started here.
ulimit -n "$(ulimit -Hn)"

# Junction, on free loopback ports, with a fresh data directory under $work/NAME.
# Sets junction_pid, junction_amqp, junction_mqtt, junction_stomp.
start_junction() {
  local data=$work/$1
  rm -rf "$data"
  mkdir -p "$data"
  target/release/junction --data-dir "$data/data" --amqp 127.0.0.1:0 --mqtt 127.0.0.1:0 \
    --stomp 127.0.0.1:0 --http off --web-stomp off --web-mqtt off --prometheus off \
    > "$data/broker.out" 2> "$data/broker.log" < /dev/null &
  junction_pid=$!
  for _ in $(seq 1 300); do
    grep -q '^ready$' "$data/broker.out" 2>/dev/null && break
    sleep 0.1
  done
  if ! grep -q '^ready$' "$data/broker.out"; then
    say "Junction did not start:"
    tail -20 "$data/broker.log" >&2
    exit 1
  fi
  port_of() { awk -v l="$1" '$1 == "listening" && $2 == l {n = split($3, a, ":"); print a[n]}' \
    "$data/broker.out"; }
  junction_amqp=$(port_of amqp)
  junction_mqtt=$(port_of mqtt)
  junction_stomp=$(port_of stomp)
  say "Junction pid $junction_pid: AMQP $junction_amqp, MQTT $junction_mqtt, STOMP $junction_stomp"
}

stop_junction() {
  stop_pid "$junction_pid"
  junction_pid=""
}

# The port and the process id of BROKER for PROTOCOL, as "PORT PID".
target_of() {
  case "$1:$2" in
    junction:amqp) echo "$junction_amqp $junction_pid" ;;
    junction:mqtt) echo "$junction_mqtt $junction_pid" ;;
    junction:stomp) echo "$junction_stomp $junction_pid" ;;
    rabbitmq:amqp) echo "5682 $("$peers" pid rabbitmq)" ;;
    rabbitmq:mqtt) echo "1893 $("$peers" pid rabbitmq)" ;;
    rabbitmq:stomp) echo "61623 $("$peers" pid rabbitmq)" ;;
    mosquitto:mqtt) echo "1894 $("$peers" pid mosquitto)" ;;
    *) say "no $2 on $1"; exit 1 ;;
  esac
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------------------
# Recording runs.

# record SCENARIO BROKER ROUND RC FIGURES_JSON: appends one run to $runs.
record() {
  python3 -c '
import json, sys
scenario, broker, round_, rc, figures = sys.argv[1:6]
try:
    figures = json.loads(figures) if figures else None
except ValueError:
    figures = None
print(json.dumps({"scenario": scenario, "broker": broker, "round": int(round_),
                  "rc": int(rc), "figures": figures}))' "$@" >> "$runs"
}

# describe NAME TITLE PEER PEER_TITLE METRIC UNIT BETTER COMMAND_TEXT [EXTRA]: one scenario's
# line in the report.
describe() {
  python3 -c '
import json, sys
keys = ["name", "title", "peer", "peer_title", "metric", "unit", "better", "command", "extra"]
print(json.dumps(dict(zip(keys, sys.argv[1:]))))' "$@" >> "$scenarios_file"
}

# One line about a finished run, from its JSON figures.
summarize() {
  python3 -c '
import json, sys
f = json.loads(sys.argv[1]) if sys.argv[1] else {}
def g(*names):
    for n in names:
        if isinstance(f.get(n), (int, float)) and not isinstance(f.get(n), bool):
            return f[n]
    return None
parts = []
r = g("received_per_s", "received_rate")
if r is not None: parts.append(f"received {r:,.0f}/s")
p = g("latency_p99_us")
if p is None and isinstance(f.get("latency_us"), dict): p = f["latency_us"].get("p99")
if p is not None: parts.append(f"p99 {p:,.0f} us")
c = g("broker_cpu_s")
if c is not None: parts.append(f"broker CPU {c:.2f} s")
k = g("kib_per_connection")
if k is not None: parts.append(f"{k:.1f} KiB per connection")
if f.get("complete") is False: parts.append("INCOMPLETE")
print(", ".join(parts) or "no figures")' "$1"
}

# run_tool SCENARIO BROKER ROUND COMMAND...: runs one measurement, keeps its log and JSON line.
run_tool() {
  local scenario=$1 broker=$2 round=$3
  shift 3
  local log=$work/logs/$scenario-$broker-$round.log rc=0
  echo "\$ $*" > "$log"
  "$@" >> "$log" 2>&1 || rc=$?
  local json
  json=$(sed -n 's/^JSON //p' "$log" | tail -1)
  record "$scenario" "$broker" "$round" "$rc" "$json"
  say "  $scenario round $round $broker: $(summarize "$json")$([ "$rc" = 0 ] || echo " (exit $rc)")"
  if [ -z "$json" ]; then
    tail -5 "$log" | sed 's/^/    /' >&2
  fi
  # A STOMP run leaves its durable queue behind; delete it so that no backlog lingers.
  if [ "$scenario" = stomp ] && [ -n "$json" ]; then
    local run_id port
    run_id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("run_id",""))' "$json")
    port=$(target_of "$broker" amqp | cut -d' ' -f1)
    [ -n "$run_id" ] && delete_queue "$port" "perf-$run_id"
  fi
}

delete_queue() {
  "$python" - "$1" "$2" <<'EOF' >/dev/null 2>&1 || true
import sys, pika
connection = pika.BlockingConnection(pika.ConnectionParameters(
    host="127.0.0.1", port=int(sys.argv[1]), credentials=pika.PlainCredentials("guest", "guest")))
connection.channel().queue_delete(sys.argv[2])
connection.close()
EOF
}

# compare NAME TITLE PEER PEER_TITLE METRIC UNIT BETTER PROTOCOL PERF_ARGS...: ROUNDS rounds of
# Junction then the peer, each `junction-perf PROTOCOL PERF_ARGS` against that broker (or, for
# the peer `relay`, `tcp_relay bench` with the same --size, and --batch $relay_batch if set).
relay_batch=""
compare() {
  local name=$1 title=$2 peer=$3 peer_title=$4 metric=$5 unit=$6 better=$7 protocol=$8
  shift 8
  local args=("$@")
  describe "$name" "$title" "$peer" "$peer_title" "$metric" "$unit" "$better" \
    "junction-perf $protocol ${args[*]} --duration $DURATION"
  say "$title: Junction vs $peer_title, $ROUNDS rounds of $DURATION s"
  local round broker port pid size
  for round in $(seq 1 "$ROUNDS"); do
    for broker in junction "$peer"; do
      if [ "$broker" = relay ]; then
        size=16
        for ((i = 0; i < ${#args[@]}; i++)); do
          [ "${args[i]}" = --size ] && size=${args[i + 1]}
        done
        run_tool "$name" relay "$round" "$relay" bench --port "$relay_port" --size "$size" \
          --duration "$DURATION" --broker-pid "$relay_pid" ${relay_batch:+--batch "$relay_batch"}
      else
        read -r port pid < <(target_of "$broker" "$protocol")
        run_tool "$name" "$broker" "$round" "$perf" "$protocol" --port "$port" \
          --broker-pid "$pid" --duration "$DURATION" --drain "$DRAIN" --quiet "${args[@]}"
      fi
    done
  done
}

# idle_round NAME BROKER ROUND PROTOCOL N: the broker's resident memory before and with N idle
# connections of PROTOCOL; records kib_per_connection.
idle_round() {
  local name=$1 broker=$2 round=$3 protocol=$4 connections=$5
  local port pid log=$work/logs/$name-$broker-$round.log
  read -r port pid < <(target_of "$broker" "$protocol")
  # One connection first, then 2 s to settle (Junction hands the memory of an Argon2 check
  # back 1.2 s after it): what the first login costs once (its code paged in, the check's
  # thread) is not a cost per connection. Every broker gets the same warm-up.
  if [ "$protocol" = amqp ]; then
    "$python" bench/amqp_idle.py --port "$port" --connections 1 --hold 0 > /dev/null 2>&1 || true
  else
    "$mqtt_idle" --port "$port" --connections 1 --keep-alive 30 --hold 0 > /dev/null 2>&1 || true
  fi
  sleep 2
  local before after client rc=0 connected=""
  before=$(rss_kib "$pid")
  # The log exists before the client starts: the loop below reads it at once.
  : > "$log"
  if [ "$protocol" = amqp ]; then
    "$python" bench/amqp_idle.py --port "$port" --connections "$connections" \
      --hold "$IDLE_HOLD" > "$log" 2>&1 &
  else
    "$mqtt_idle" --port "$port" --connections "$connections" --keep-alive 30 \
      --hold "$IDLE_HOLD" > "$log" 2>&1 &
  fi
  client=$!
  # Sample once every connection is up and has settled for 2 s.
  while kill -0 "$client" 2>/dev/null; do
    connected=$(sed -n 's/^all connected: [0-9]* in \([0-9.]*\) s.*/\1/p' "$log" || true)
    [ -n "$connected" ] && break
    sleep 0.1
  done
  if [ -n "$connected" ]; then
    sleep 2
    after=$(rss_kib "$pid")
  fi
  wait "$client" || rc=$?
  local json=""
  if [ -n "$connected" ]; then
    json=$(python3 -c '
import json, sys
before, after, n, took = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
print(json.dumps({"connections": n, "rss_before_kib": before, "rss_after_kib": after,
                  "kib_per_connection": round((after - before) / n, 2), "connect_s": took}))' \
      "$before" "$after" "$connections" "$connected")
  fi
  record "$name" "$broker" "$round" "$rc" "$json"
  say "  $name round $round $broker: $(summarize "$json")$([ "$rc" = 0 ] || echo " (exit $rc)")"
  [ -n "$json" ] || tail -5 "$log" | sed 's/^/    /' >&2
}

# compare_idle NAME TITLE PEER PEER_TITLE PROTOCOL N: ROUNDS rounds, alternating. Every broker
# is started afresh for every round, so that memory an earlier round freed but kept (RabbitMQ
# measured 81 KiB per connection on a fresh node, then 60 and 58 on the same node) cannot
# hide the cost of new connections.
compare_idle() {
  local name=$1 title=$2 peer=$3 peer_title=$4 protocol=$5 connections=$6
  local client=mqtt_idle
  [ "$protocol" = amqp ] && client=bench/amqp_idle.py
  describe "$name" "$title" "$peer" "$peer_title" kib_per_connection KiB lower \
    "$client --connections $connections --hold $IDLE_HOLD"
  say "$title: Junction vs $peer_title, $ROUNDS rounds of $connections connections"
  local round
  for round in $(seq 1 "$ROUNDS"); do
    start_junction "idle-$name-$round"
    idle_round "$name" junction "$round" "$protocol" "$connections"
    stop_junction
    "$peers" stop "$peer"
    "$peers" start "$peer"
    idle_round "$name" "$peer" "$round" "$protocol" "$connections"
  done
}

# overload NAME TITLE BROKERS PROTOCOL PERF_ARGS...: ROUNDS rounds over the space-separated
# BROKERS (junction first), each run against a freshly started broker, so that the VmHWM
# junction-perf reads at the end is that run's peak. Junction is stopped afterwards.
overload() {
  local name=$1 title=$2 brokers=$3 protocol=$4
  shift 4
  local args=("$@") peer_list=${brokers#junction }
  describe "$name" "$title" "$peer_list" "$peer_list" overload "msg/s" higher \
    "junction-perf $protocol ${args[*]} --duration $DURATION --drain $OVERLOAD_DRAIN"
  say "$title: $brokers, $ROUNDS rounds of $DURATION s, fresh brokers"
  local round broker port pid
  for round in $(seq 1 "$ROUNDS"); do
    for broker in $brokers; do
      if [ "$broker" = junction ]; then
        stop_junction
        start_junction "$name-$round"
      else
        "$peers" stop "$broker"
        "$peers" start "$broker"
      fi
      read -r port pid < <(target_of "$broker" "$protocol")
      run_tool "$name" "$broker" "$round" "$perf" "$protocol" --port "$port" \
        --broker-pid "$pid" --duration "$DURATION" --drain "$OVERLOAD_DRAIN" --quiet "${args[@]}"
      if [ "$broker" = junction ]; then
        stop_junction
      else
        "$peers" stop "$broker"
      fi
    done
  done
}

# ---------------------------------------------------------------------------------------------
say "installing the peers (if missing) and building"
"$peers" install
if ! "$python" -c 'import pika' 2>/dev/null; then
  [ -x "$python" ] || python3 -m venv .venv
  "$python" -m pip install --quiet --disable-pip-version-check 'pika>=1.3,<2'
fi
cargo build --release -q -p junction -p junction-perf -p junction-examples

# Another load running on this machine (two cores shared by brokers and clients) would skew
# every figure; say so, since it shows nowhere else.
if pgrep -f 'release/junction-perf' > /dev/null; then
  say "WARNING: another junction-perf is running on this machine; the figures will suffer"
fi

say "starting the peers (fresh state)"
"$peers" stop all
"$peers" start all

say "starting the TCP relay"
"$relay" serve --listen 127.0.0.1:0 > "$work/relay.out" 2> "$work/relay.log" < /dev/null &
relay_pid=$!
for _ in $(seq 1 50); do grep -q '^ready$' "$work/relay.out" 2>/dev/null && break; sleep 0.1; done
relay_port=$(awk '$1 == "listening" {n = split($3, a, ":"); print a[n]}' "$work/relay.out")
[ -n "$relay_port" ] || { say "the relay did not start"; exit 1; }

# Memory per idle connection first, while every broker is fresh.
if wants amqp-idle; then
  compare_idle amqp-idle "AMQP resident memory per idle connection" rabbitmq RabbitMQ \
    amqp "$AMQP_IDLE"
fi
if wants mqtt-idle; then
  compare_idle mqtt-idle "MQTT resident memory per idle connection" mosquitto Mosquitto \
    mqtt "$MQTT_IDLE"
fi

start_junction main

transient=(--producers 1 --consumers 1 --queues 1 --size 16 --auto-ack)
if wants amqp-transient; then
  compare amqp-transient "AMQP 1 pub 1 con 1 queue, 16 B transient, auto-ack (msg/s)" \
    rabbitmq RabbitMQ received_per_s "msg/s" higher amqp "${transient[@]}"
fi
if wants amqp-ack; then
  compare amqp-ack "AMQP 1 pub 1 con, 16 B transient, manual acks prefetch 100 (msg/s)" \
    rabbitmq RabbitMQ received_per_s "msg/s" higher amqp \
    --producers 1 --consumers 1 --queues 1 --size 16 --prefetch 100
fi
if wants amqp-persistent; then
  compare amqp-persistent \
    "AMQP 1 KiB persistent, confirms ($CONFIRM_WINDOW), durable queue (msg/s)" \
    rabbitmq RabbitMQ received_per_s "msg/s" higher amqp \
    --producers 1 --consumers 1 --queues 1 --size 1024 --persistent --confirm "$CONFIRM_WINDOW" \
    --prefetch 100
fi
if wants amqp-fanout; then
  compare amqp-fanout "AMQP fanout, 1 pub to 10 queues, a consumer each (deliveries/s)" \
    rabbitmq RabbitMQ received_per_s "deliveries/s" higher amqp \
    --producers 1 --consumers 10 --queues 10 --size 16 --exchange-type fanout --auto-ack
fi
if wants amqp-latency; then
  if [ -z "$LATENCY_RATE" ]; then
    max=$(python3 bench/compare_report.py median "$runs" amqp-transient rabbitmq received_per_s)
    if [ -z "$max" ]; then
      # amqp-transient was not run: measure RabbitMQ's maximum once.
      run_tool calibrate rabbitmq 1 "$perf" amqp --port 5682 --duration "$DURATION" \
        --drain "$DRAIN" --quiet "${transient[@]}"
      max=$(python3 bench/compare_report.py median "$runs" calibrate rabbitmq received_per_s)
    fi
    LATENCY_RATE=$(python3 -c 'import sys; print(max(1, round(float(sys.argv[1]) / 2)))' "$max")
  fi
  compare amqp-latency "AMQP p99 latency at $LATENCY_RATE msg/s (half RabbitMQ's max), 16 B" \
    rabbitmq RabbitMQ latency_p99_us "µs" lower amqp "${transient[@]}" --rate "$LATENCY_RATE"
fi
if wants mqtt-qos0; then
  compare mqtt-qos0 "MQTT QoS 0, 10 publishers to 1 subscriber, 64 B (msg/s)" \
    mosquitto Mosquitto received_per_s "msg/s" higher mqtt \
    --producers 10 --consumers 1 --size 64 --qos 0
fi
if wants mqtt-qos1; then
  compare mqtt-qos1 "MQTT QoS 1, 10 publishers to 1 subscriber, 64 B (msg/s)" \
    mosquitto Mosquitto received_per_s "msg/s" higher mqtt \
    --producers 10 --consumers 1 --size 64 --qos 1
fi
if wants stomp; then
  compare stomp "STOMP 1 producer 1 consumer, 16 B, client acks prefetch 100 (msg/s)" \
    rabbitmq "RabbitMQ STOMP" received_per_s "msg/s" higher stomp \
    --producers 1 --consumers 1 --size 16 --prefetch 100
fi
# The relay twice: writing 64 KiB at a time (what loopback TCP can carry at all), and one
# write per message (what it costs just to make a system call per message).
if wants relay; then
  relay_batch=""
  compare relay "AMQP transient 16 B (as above) vs a TCP relay, 64 KiB writes (msg/s)" \
    relay "TCP relay" received_per_s "msg/s" higher amqp "${transient[@]}"
fi
if wants relay-unbatched; then
  relay_batch=1
  compare relay-unbatched "AMQP transient 16 B vs a TCP relay, one write per message (msg/s)" \
    relay "TCP relay" received_per_s "msg/s" higher amqp "${transient[@]}"
fi

# The overload scenarios (issue 14), each broker started afresh for every run; the peers are
# left running afterwards, as the report reads their versions.
if wants overload-mqtt-qos0 || wants overload-mqtt-qos1 || wants overload-amqp \
  || wants overload-stomp; then
  stop_junction
fi
overload_mqtt=(--producers 10 --consumers 1 --size 64)
if wants overload-mqtt-qos0; then
  overload overload-mqtt-qos0 "Overload: MQTT QoS 0, 10 publishers to 1 subscriber, 64 B" \
    "junction mosquitto rabbitmq" mqtt "${overload_mqtt[@]}" --qos 0
fi
if wants overload-mqtt-qos1; then
  overload overload-mqtt-qos1 "Overload: MQTT QoS 1, 10 publishers to 1 subscriber, 64 B" \
    "junction mosquitto rabbitmq" mqtt "${overload_mqtt[@]}" --qos 1
fi
if wants overload-amqp; then
  overload overload-amqp "Overload: AMQP 1 pub 1 con, 16 B transient, auto-ack, no confirms" \
    "junction rabbitmq" amqp --producers 1 --consumers 1 --queues 1 --size 16 --auto-ack
fi
if wants overload-stomp; then
  overload overload-stomp "Overload: STOMP 1 producer 1 consumer, 16 B, ack:auto" \
    "junction rabbitmq" stomp --producers 1 --consumers 1 --size 16 --auto-ack
fi
for peer in rabbitmq mosquitto; do "$peers" start "$peer" > /dev/null 2>&1 || true; done

# ---------------------------------------------------------------------------------------------
# The report.
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD 2>/dev/null || commit="$commit, with uncommitted changes"
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
ram=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
section=$work/section.md
{
  echo
  echo "## $(date +%F): side by side with RabbitMQ, Mosquitto and a TCP relay (issue 7)"
  echo
  echo "Command: \`DURATION=$DURATION ROUNDS=$ROUNDS DRAIN=$DRAIN AMQP_IDLE=$AMQP_IDLE" \
    "MQTT_IDLE=$MQTT_IDLE bench/compare.sh\` (commit $commit)."
  echo "Machine: $(nproc) cores ($cpu), $ram RAM; brokers and load generator share it, over"
  echo "loopback. Peers from Debian $(cat /etc/debian_version) packages: RabbitMQ" \
    "$("$peers" version rabbitmq) (Erlang $(dpkg-query -W -f='${Version}' erlang-base))" \
    "with its MQTT and STOMP plugins, Mosquitto $("$peers" version mosquitto)."
  echo "Each figure is the median of $ROUNDS runs of $DURATION s, Junction and the peer"
  echo "alternating, all driven by the same \`junction-perf\` command line (release build);"
  echo "throughput is messages received per second (deliveries for fanout). Memory per idle"
  echo "connection is (resident memory with N connections - before) / N, before sampled 2 s"
  echo "after one warm-up connection."
  echo
  python3 bench/compare_report.py table "$runs" "$scenarios_file"
  echo
  if grep -q '"metric": "overload"' "$scenarios_file"; then
    echo "Overload (issue 14): each run flat out for $DURATION s against a freshly started broker,"
    echo "then up to $OVERLOAD_DRAIN s to deliver. Accepted: messages the publishers wrote (QoS 0,"
    echo "transient) or the broker acknowledged (QoS 1), per second of publishing; delivered:"
    echo "messages the subscriber got, per second until the last one; lost: acknowledged but"
    echo "never delivered (where delivery is guaranteed); peak memory: the broker's VmHWM."
    echo
    python3 bench/compare_report.py overload "$runs" "$scenarios_file"
    echo
  fi
  echo "Command lines (each also gets \`--port --broker-pid --drain $DRAIN --quiet\`):"
  echo
  # shellcheck disable=SC2016 # backquotes for Markdown, not for the shell
  python3 -c '
import json, sys
for line in open(sys.argv[1]):
    s = json.loads(line)
    print("- %s: `%s`" % (s["name"], s["command"]))' "$scenarios_file"
  if wants relay || wants relay-unbatched; then
    echo "- the TCP relay's side: \`tcp_relay bench --size 16 --duration $DURATION\` (relay) and"
    echo "  with \`--batch 1\` (relay-unbatched): one producer writing 16 B messages, 4096 per"
    echo "  write call or one, through \`tcp_relay serve\` (a thread copying 64 KiB reads) to one"
    echo "  consumer."
  fi
} > "$section"

echo
cat "$section"
if [ "$RESULTS" != - ]; then
  cat "$section" >> "$RESULTS"
  say "appended to $RESULTS"
fi
