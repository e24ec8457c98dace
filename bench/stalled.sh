#!/usr/bin/env bash
# A consumer that stops reading its socket, on a queue with a backlog (issue 14): how much does
# the broker's resident memory grow?
#
# For each broker and protocol, on a freshly started broker:
#   1. fill: `junction-perf` publishes BACKLOG_MB of persistent SIZE-byte messages with
#      confirms into a durable queue and keeps it:
#        amqp       queue perf-q-0 (durable), publisher confirms
#        stomp      /queue/stalled (durable on RabbitMQ and Junction), a RECEIPT for each SEND
#        mqtt-qos0  the persistent session perf-stalled-q0 (clean session 0, subscribed to
#        mqtt-qos1  perf/stalled with QoS 0 or 1, then disconnected) gets QoS 1 publishes
#                   (MQTT_FILL_QOS=0: QoS 0 publishes, which Junction and RabbitMQ keep as
#                   transient messages in the session's queue)
#   2. stall: `junction-perf stall` connects one consumer that reads the answer to its
#      subscription and then never reads again (AMQP no-ack basic.consume, STOMP ack:auto,
#      the MQTT session reconnecting), and samples the broker's VmRSS every 50 ms for HOLD s;
#      growth = peak - the resident size just before the consumer connected.
# Mosquitto drops QoS 0 messages for offline sessions (queue_qos0_messages false), so its
# mqtt-qos0 backlog is empty; RabbitMQ and Junction queue them.
#
# Usage: bench/stalled.sh [BROKER...]     BROKER: junction (default), rabbitmq, mosquitto
# Environment (defaults in brackets):
#   PROTOCOLS ["amqp stomp mqtt-qos0 mqtt-qos1"]   BACKLOG_MB [300]   SIZE [2048]   HOLD [12]
#   MQTT_FILL_QOS [1]: the QoS of the publishes that fill an MQTT session
#   BUILD [1]: 0 skips `cargo build --release`      KEEP_WORK [0]: 1 keeps the logs
# Takes about 1-2 min per broker and protocol on the 2-core machine (filling 300 MB with
# confirms is most of it; RabbitMQ also needs ~20 s to boot for each).
# Prints one line per run and a Markdown table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

BROKERS=${*:-junction}
PROTOCOLS=${PROTOCOLS:-amqp stomp mqtt-qos0 mqtt-qos1}
BACKLOG_MB=${BACKLOG_MB:-300}
SIZE=${SIZE:-2048}
HOLD=${HOLD:-12}
MQTT_FILL_QOS=${MQTT_FILL_QOS:-1}
count=$((BACKLOG_MB * 1024 * 1024 / SIZE))

work=$(mktemp -d "${TMPDIR:-/tmp}/junction-stalled.XXXXXX")
# shellcheck source=bench/overload_lib.sh
. bench/overload_lib.sh
trap overload_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release -q -p junction -p junction-perf
fi
if [[ " $BROKERS " != " junction " ]]; then
  "$peers" install
fi

results=$work/results.jsonl
: > "$results"

# run LOG COMMAND...: runs a step, keeps its output, fails loudly.
run() {
  local log=$1
  shift
  echo "\$ $*" > "$log"
  if ! "$@" >> "$log" 2>&1; then
    say "failed: $*"
    tail -5 "$log" | sed 's/^/    /' >&2
    return 1
  fi
}

for broker in $BROKERS; do
  for protocol in $PROTOCOLS; do
    if [ "$broker" = mosquitto ] && [[ "$protocol" != mqtt-* ]]; then
      continue
    fi
    start_broker "$broker"
    log=$work/$broker-$protocol
    common=(--producers 1 --consumers 0 --size "$SIZE" --count "$count" --duration 3600
      --drain 1 --quiet --run-id stalled)
    say "$broker $protocol: filling $count x $SIZE B"
    case "$protocol" in
      amqp)
        run "$log.fill" "$perf" amqp --port "$amqp_port" "${common[@]}" --queues 1 \
          --persistent --confirm 512 --keep
        stall=(--protocol amqp --port "$amqp_port" --queue perf-q-0)
        ;;
      stomp)
        run "$log.fill" "$perf" stomp --port "$stomp_port" "${common[@]}" \
          --destination /queue/stalled --persistent --confirm 512
        stall=(--protocol stomp --port "$stomp_port" --destination /queue/stalled)
        ;;
      mqtt-qos0 | mqtt-qos1)
        qos=${protocol#mqtt-qos}
        session=(--protocol mqtt --port "$mqtt_port" --topic perf/stalled --qos "$qos"
          --client-id "perf-stalled-q$qos")
        run "$log.prepare" "$perf" stall "${session[@]}" --prepare
        run "$log.fill" "$perf" mqtt --port "$mqtt_port" "${common[@]}" --topic perf/stalled \
          --qos "$MQTT_FILL_QOS" --confirm 512
        stall=("${session[@]}" --clean-up)
        ;;
      *) say "unknown protocol $protocol"; exit 2 ;;
    esac
    sed -n 's/^sent /  sent /p' "$log.fill" >&2
    say "$broker $protocol: backlog in place, resident $(( $(kib VmRSS "$broker_pid") / 1024 )) MiB; stalling for $HOLD s"
    run "$log.stall" "$perf" stall "${stall[@]}" --hold "$HOLD" --broker-pid "$broker_pid"
    grep '^memory' "$log.stall" >&2 || true
    json=$(sed -n 's/^JSON //p' "$log.stall" | tail -1)
    python3 -c '
import json, sys
figures = json.loads(sys.argv[3])
figures.update({"broker": sys.argv[1], "case": sys.argv[2], "backlog": int(sys.argv[4]),
                "size": int(sys.argv[5])})
print(json.dumps(figures))' "$broker" "$protocol" "$json" "$count" "$SIZE" >> "$results"
    stop_broker
  done
done

echo
echo "Stalled consumer on a backlog of $count x $SIZE B persistent messages ($BACKLOG_MB MiB),"
echo "held $HOLD s (commit $(git rev-parse --short HEAD), $(date +%F)):"
echo
python3 - "$results" <<'EOF'
import json, sys
print("| broker | consumer | resident before | peak while stalled | growth |")
print("|---|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    mib = lambda k: f"{r[k] / 1024:,.1f} MiB"
    print(f"| {r['broker']} | {r['case']} | {mib('broker_rss_start_kib')} | "
          f"{mib('broker_rss_peak_kib')} | {mib('broker_rss_growth_kib')} |")
EOF
