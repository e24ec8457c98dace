# Shared by bench/stalled.sh and bench/transient_backlog.sh (sourced, not run): start a fresh
# broker (Junction on free loopback ports with its own data directory, or a peer from
# bench/peers/peers.sh), find its ports and process id, read its resident memory, stop it.
#
# The caller sets `work` (a scratch directory) and traps EXIT to call `overload_cleanup`.

peers=bench/peers/peers.sh
perf=target/release/junction-perf
junction_pid=""
running_peer=""

say() { printf '[%s %s] %s\n' "$(basename "$0" .sh)" "$(date +%T)" "$*" >&2; }

stop_pid() {
  local pid=$1
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}

# start_broker BROKER: junction, rabbitmq or mosquitto, fresh (empty queues, new process, so
# that VmHWM is this run's peak). Sets broker_pid and the ports amqp_port, mqtt_port,
# stomp_port (empty where the broker has no such listener).
start_broker() {
  stop_broker
  case "$1" in
    junction)
      local data=$work/junction-$RANDOM
      mkdir -p "$data"
      target/release/junction --data-dir "$data/data" --amqp 127.0.0.1:0 --mqtt 127.0.0.1:0 \
        --stomp 127.0.0.1:0 --http off --web-stomp off --web-mqtt off --prometheus off \
        > "$data/broker.out" 2> "$data/broker.log" < /dev/null &
      junction_pid=$!
      for _ in $(seq 1 300); do
        grep -q '^ready$' "$data/broker.out" 2>/dev/null && break
        sleep 0.1
      done
      grep -q '^ready$' "$data/broker.out" || { say "Junction did not start"; tail -20 "$data/broker.log" >&2; exit 1; }
      port_of() { awk -v l="$1" '$1 == "listening" && $2 == l {n = split($3, a, ":"); print a[n]}' \
        "$data/broker.out"; }
      amqp_port=$(port_of amqp)
      mqtt_port=$(port_of mqtt)
      stomp_port=$(port_of stomp)
      broker_pid=$junction_pid
      ;;
    rabbitmq)
      "$peers" stop rabbitmq
      "$peers" start rabbitmq
      running_peer=rabbitmq
      amqp_port=5682 mqtt_port=1893 stomp_port=61623
      broker_pid=$("$peers" pid rabbitmq)
      ;;
    mosquitto)
      "$peers" stop mosquitto
      "$peers" start mosquitto
      running_peer=mosquitto
      amqp_port="" mqtt_port=1894 stomp_port=""
      broker_pid=$("$peers" pid mosquitto)
      ;;
    *) say "unknown broker $1"; exit 2 ;;
  esac
  say "$1 up, pid $broker_pid (AMQP ${amqp_port:--}, MQTT ${mqtt_port:--}, STOMP ${stomp_port:--})"
}

stop_broker() {
  stop_pid "$junction_pid"
  junction_pid=""
  if [ -n "$running_peer" ]; then
    "$peers" stop "$running_peer" || true
    running_peer=""
  fi
}

# kib FIELD PID: a kB field of /proc/PID/status (VmRSS, VmHWM).
kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$2/status"; }

overload_cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_broker
  if [ "${KEEP_WORK:-0}" = 1 ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
  exit "$status"
}
