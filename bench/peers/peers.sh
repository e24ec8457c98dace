#!/usr/bin/env bash
# The peers that bench/compare.sh measures Junction against, from Debian's packages:
# RabbitMQ (AMQP 0-9-1, plus its MQTT and STOMP plugins) and Mosquitto 2, each on loopback
# ports that clash with neither Junction's defaults nor a system-wide RabbitMQ:
#
#   RabbitMQ  AMQP 127.0.0.1:5682  MQTT 127.0.0.1:1893  STOMP 127.0.0.1:61623
#             Erlang distribution 25682, private epmd on 4379, rabbitmqctl 35692-35702
#   Mosquitto MQTT 127.0.0.1:1894
#
# Usage: bench/peers/peers.sh install | start [rabbitmq|mosquitto] | stop [rabbitmq|mosquitto]
#                             | status | pid rabbitmq|mosquitto | ctl ARGS... (rabbitmqctl)
#
# Every command is idempotent: `install` only calls apt-get when a package is missing, `start`
# leaves a running peer alone, `stop` of a stopped peer does nothing. A fresh start wipes the
# peer's state, so each benchmark run begins with empty queues.
#
# State (RabbitMQ's HOME and Erlang cookie, mnesia, logs, plugin list; Mosquitto's log and pid)
# lives under $PEERS_DIR, by default ${TMPDIR:-/tmp}/junction-bench-peers. Neither peer uses
# systemd or the files under /etc, /var/lib or /var/log: RabbitMQ is started through
# /usr/lib/rabbitmq/bin/rabbitmq-server, not the /usr/sbin wrapper, which would switch to the
# rabbitmq user and drop this environment. RabbitMQ runs as whoever calls this (root here).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PEERS_DIR=${PEERS_DIR:-${TMPDIR:-/tmp}/junction-bench-peers}

RABBITMQ_AMQP_PORT=5682
RABBITMQ_MQTT_PORT=1893
RABBITMQ_STOMP_PORT=61623
MOSQUITTO_PORT=1894

rmq_dir=$PEERS_DIR/rabbitmq
mosq_dir=$PEERS_DIR/mosquitto
rmq_bin=/usr/lib/rabbitmq/bin

log() { echo "peers: $*" >&2; }

# True once something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True while the process whose pid is in file $1 is alive.
pidfile_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
install() {
  local missing=()
  for package in rabbitmq-server mosquitto; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package's postinst tries to start the services; without systemd or a runlevel that is
  # refused harmlessly ("policy-rc.d denied execution of start").
  apt-get install -y "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update >/dev/null
    apt-get install -y "${missing[@]}" >/dev/null
  }
  # Keep a system-wide service (if a policy ever lets one start) off our ports anyway: ours
  # are all non-default, so nothing else needs doing.
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ's environment. Erlang needs HOME (for its cookie file); rabbitmqctl must see the
# same cookie, node name and epmd port, so every rabbitmq* command here runs through rmq_env.
rmq_env() {
  env \
    HOME="$rmq_dir/home" \
    RABBITMQ_NODENAME=junction-bench@localhost \
    RABBITMQ_USE_LONGNAME=false \
    RABBITMQ_CONF_ENV_FILE="$rmq_dir/no-rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$rmq_dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$rmq_dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$rmq_dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$rmq_dir/mnesia" \
    RABBITMQ_LOG_BASE="$rmq_dir/log" \
    RABBITMQ_PID_FILE="$rmq_dir/rabbitmq.pid" \
    RABBITMQ_DIST_PORT=25682 \
    RABBITMQ_CTL_DIST_PORT_MIN=35692 \
    RABBITMQ_CTL_DIST_PORT_MAX=35702 \
    ERL_EPMD_PORT=4379 \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    "$@"
}

ctl() { rmq_env "$rmq_bin/rabbitmqctl" "$@"; }

start_rabbitmq() {
  if pidfile_alive "$rmq_dir/rabbitmq.pid" && port_open "$RABBITMQ_AMQP_PORT"; then
    log "RabbitMQ already running (pid $(cat "$rmq_dir/rabbitmq.pid"))"
    return 0
  fi
  stop_rabbitmq
  rm -rf "$rmq_dir"
  mkdir -p "$rmq_dir/home" "$rmq_dir/mnesia" "$rmq_dir/log"
  # A private cookie: Erlang refuses one that others can read.
  head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$rmq_dir/home/.erlang.cookie"
  chmod 400 "$rmq_dir/home/.erlang.cookie"
  cp "$here/rabbitmq.conf" "$rmq_dir/rabbitmq.conf"
  # PEER_TLS_DIR (ca.pem, server.pem, server.key, as junction-test-certs makes them) adds
  # RabbitMQ's TLS listeners: AMQPS on 5681 and MQTTS on 8893.
  if [ -n "${PEER_TLS_DIR:-}" ]; then
    cat >> "$rmq_dir/rabbitmq.conf" <<TLS
listeners.ssl.default = 127.0.0.1:5681
mqtt.listeners.ssl.default = 127.0.0.1:8893
ssl_options.cacertfile = $PEER_TLS_DIR/ca.pem
ssl_options.certfile = $PEER_TLS_DIR/server.pem
ssl_options.keyfile = $PEER_TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
TLS
  fi
  rmq_env "$rmq_bin/rabbitmq-plugins" enable --offline rabbitmq_mqtt rabbitmq_stomp >/dev/null

  # Erlang opens a descriptor per connection; the idle-connection scenario needs thousands.
  ulimit -n "$(ulimit -Hn)"
  log "starting RabbitMQ (logs in $rmq_dir/log)"
  # In its own session, so that a Ctrl-C in the calling terminal leaves it to `stop`.
  (cd "$rmq_dir" && rmq_env setsid "$rmq_bin/rabbitmq-server" \
    > "$rmq_dir/log/console.out" 2>&1 < /dev/null) &
  # await_startup waits for the node to boot fully (plugins included), up to its timeout.
  local deadline=$((SECONDS + 120))
  until ctl await_startup --timeout 10 >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "RabbitMQ did not start; see $rmq_dir/log"
      tail -20 "$rmq_dir/log/console.out" >&2 || true
      return 1
    fi
    sleep 1
  done
  for port in $RABBITMQ_AMQP_PORT $RABBITMQ_MQTT_PORT $RABBITMQ_STOMP_PORT; do
    port_open "$port" || { log "RabbitMQ is up but port $port is closed"; return 1; }
  done
  log "RabbitMQ $(rabbitmq_version) up, pid $(cat "$rmq_dir/rabbitmq.pid")"
}

stop_rabbitmq() {
  if pidfile_alive "$rmq_dir/rabbitmq.pid"; then
    local pid
    pid=$(cat "$rmq_dir/rabbitmq.pid")
    log "stopping RabbitMQ (pid $pid)"
    # `shutdown` returns once the Erlang VM has exited.
    ctl shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # The private epmd that the node started (port 4379) outlives it; end it too.
  if [ -d "$rmq_dir" ]; then
    ERL_EPMD_PORT=4379 epmd -kill >/dev/null 2>&1 || true
  fi
}

rabbitmq_version() {
  dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown
}

# ---------------------------------------------------------------------------------------------
start_mosquitto() {
  if pidfile_alive "$mosq_dir/mosquitto.pid" && port_open "$MOSQUITTO_PORT"; then
    log "Mosquitto already running (pid $(cat "$mosq_dir/mosquitto.pid"))"
    return 0
  fi
  stop_mosquitto
  rm -rf "$mosq_dir"
  mkdir -p "$mosq_dir"
  ulimit -n "$(ulimit -Hn)"
  log "starting Mosquitto"
  setsid mosquitto -c "$here/mosquitto.conf" > "$mosq_dir/mosquitto.log" 2>&1 < /dev/null &
  echo $! > "$mosq_dir/mosquitto.pid"
  for _ in $(seq 1 100); do port_open "$MOSQUITTO_PORT" && break; sleep 0.1; done
  port_open "$MOSQUITTO_PORT" || {
    log "Mosquitto did not start"
    cat "$mosq_dir/mosquitto.log" >&2
    return 1
  }
  log "Mosquitto $(mosquitto_version) up, pid $(cat "$mosq_dir/mosquitto.pid")"
}

stop_mosquitto() {
  if pidfile_alive "$mosq_dir/mosquitto.pid"; then
    local pid
    pid=$(cat "$mosq_dir/mosquitto.pid")
    log "stopping Mosquitto (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$mosq_dir/mosquitto.pid"
}

mosquitto_version() {
  dpkg-query -W -f='${Version}' mosquitto 2>/dev/null || echo unknown
}

# ---------------------------------------------------------------------------------------------
status() {
  if pidfile_alive "$rmq_dir/rabbitmq.pid"; then
    echo "rabbitmq $(rabbitmq_version) running pid $(cat "$rmq_dir/rabbitmq.pid")" \
      "amqp $RABBITMQ_AMQP_PORT mqtt $RABBITMQ_MQTT_PORT stomp $RABBITMQ_STOMP_PORT"
  else
    echo "rabbitmq stopped"
  fi
  if pidfile_alive "$mosq_dir/mosquitto.pid"; then
    echo "mosquitto $(mosquitto_version) running pid $(cat "$mosq_dir/mosquitto.pid")" \
      "mqtt $MOSQUITTO_PORT"
  else
    echo "mosquitto stopped"
  fi
}

pid_of() {
  case "$1" in
    rabbitmq) pidfile_alive "$rmq_dir/rabbitmq.pid" && cat "$rmq_dir/rabbitmq.pid" ;;
    mosquitto) pidfile_alive "$mosq_dir/mosquitto.pid" && cat "$mosq_dir/mosquitto.pid" ;;
    *) echo "pid: rabbitmq or mosquitto" >&2; return 2 ;;
  esac
}

command=${1:-status}
which=${2:-all}
case "$command" in
  install) install ;;
  start)
    install
    case "$which" in
      rabbitmq) start_rabbitmq ;;
      mosquitto) start_mosquitto ;;
      all) start_rabbitmq; start_mosquitto ;;
      *) echo "start: rabbitmq, mosquitto or all" >&2; exit 2 ;;
    esac
    ;;
  stop)
    case "$which" in
      rabbitmq) stop_rabbitmq ;;
      mosquitto) stop_mosquitto ;;
      all) stop_rabbitmq; stop_mosquitto ;;
      *) echo "stop: rabbitmq, mosquitto or all" >&2; exit 2 ;;
    esac
    ;;
  status) status ;;
  pid) pid_of "$which" ;;
  version)
    case "$which" in
      rabbitmq) rabbitmq_version ;;
      mosquitto) mosquitto_version ;;
      *) echo "rabbitmq-server $(rabbitmq_version), mosquitto $(mosquitto_version)" ;;
    esac
    ;;
  ctl) shift; ctl "$@" ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
