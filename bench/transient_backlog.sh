#!/usr/bin/env bash
# A backlog of transient messages that no one consumes (issue 14): publish N transient
# SIZE-byte messages to a queue with no consumer, report the broker's peak resident memory,
# then consume them all and check that every one arrives, in order.
#
# For each broker, freshly started (so VmHWM is this run's peak):
#   1. publish: `junction-perf amqp --producers 1 --consumers 0 --count N --confirm 1000
#      --keep` (one lapin publisher, flat out, publisher confirms so that every message is
#      known to be in the queue: without them RabbitMQ lost the last few dozen when the
#      publisher closed) into perf-q-0 (not durable); every body carries the run tag and a
#      sequence number;
#   2. the broker's VmHWM and VmRSS once the publisher is done;
#   3. drain: `junction-perf amqp --producers 0 --consumers 1 --existing --expect N` (manual
#      acks, prefetch 1000) with the same --run-id; the tool counts sequence numbers that
#      came out of order or were skipped. OK when received = N, none out of order or skipped.
#
# Usage: bench/transient_backlog.sh [N]   (N defaults to 10,000,000)
# Environment: BROKERS ["junction"; add rabbitmq to compare], SIZE [1024], BUILD [1],
#   DRAIN_LIMIT [3600] seconds the drain may take at most, KEEP_WORK [0]
# Takes, for 10M x 1 KiB on the 2-core machine, about 2 x 10M / (the broker's rate): some
# 3-5 minutes for Junction at 60-100k msg/s each way, much longer for RabbitMQ. Needs about
# N x SIZE of free memory or disk, depending on where the broker keeps the backlog.
set -euo pipefail
cd "$(dirname "$0")/.."

count=${1:-10000000}
BROKERS=${BROKERS:-junction}
SIZE=${SIZE:-1024}
DRAIN_LIMIT=${DRAIN_LIMIT:-3600}

work=$(mktemp -d "${TMPDIR:-/tmp}/junction-transient-backlog.XXXXXX")
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

status=0
rows=()
for broker in $BROKERS; do
  start_broker "$broker"
  run_id=backlog$RANDOM
  say "$broker: publishing $count x $SIZE B transient to perf-q-0 (no consumer)"
  "$perf" amqp --port "$amqp_port" --producers 1 --consumers 0 --queues 1 --size "$SIZE" \
    --count "$count" --confirm 1000 --duration 100000 --drain 1 --keep --run-id "$run_id" \
    --broker-pid "$broker_pid" --quiet > "$work/$broker.publish" 2>&1 || {
    say "publishing failed"; tail -5 "$work/$broker.publish" >&2; exit 1; }
  publish=$(sed -n 's/^JSON //p' "$work/$broker.publish")
  confirmed=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["confirmed"])' "$publish")
  [ "$confirmed" = "$count" ] || say "WARNING: only $confirmed of $count publishes were confirmed"
  hwm=$(kib VmHWM "$broker_pid")
  rss=$(kib VmRSS "$broker_pid")
  say "$broker: published; resident $((rss / 1024)) MiB, peak (VmHWM) $((hwm / 1024)) MiB; draining"
  "$perf" amqp --port "$amqp_port" --producers 0 --consumers 1 --queues 1 --existing \
    --expect "$count" --prefetch 1000 --run-id "$run_id" --drain "$DRAIN_LIMIT" --idle 30 \
    --duration 1 --broker-pid "$broker_pid" --quiet > "$work/$broker.drain" 2>&1 || true
  drain=$(sed -n 's/^JSON //p' "$work/$broker.drain")
  [ -n "$drain" ] || { say "draining failed"; tail -5 "$work/$broker.drain" >&2; exit 1; }
  row=$(python3 - "$broker" "$count" "$hwm" "$rss" "$publish" "$drain" <<'EOF'
import json, sys
broker, count, hwm, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
p, d = json.loads(sys.argv[5]), json.loads(sys.argv[6])
ok = d["received"] == count and d["out_of_order"] == 0 and d["skipped"] == 0
verdict = "all in order" if ok else (
    f"NOT OK: received {d['received']}, {d['out_of_order']} out of order, {d['skipped']} skipped")
peak_drain = (d.get("broker_rss_peak_kib") or 0) / 1024
print(f"| {broker} | {count:,} | {p['sent_per_s']:,.0f} | {hwm / 1024:,.0f} MiB | {rss / 1024:,.0f} MiB "
      f"| {d['received_per_s']:,.0f} | {peak_drain:,.0f} MiB | {verdict} |")
sys.exit(0 if ok else 3)
EOF
) || status=3
  echo "$row" >&2
  rows+=("$row")
  stop_broker
done

echo
echo "$count x $SIZE B transient messages to a queue with no consumer, then drained" \
  "(commit $(git rev-parse --short HEAD), $(date +%F)):"
echo
echo "| broker | messages | published msg/s | peak resident (VmHWM) | resident after publishing | drained msg/s | peak resident while draining | check |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit "$status"
