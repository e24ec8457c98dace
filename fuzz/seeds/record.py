#!/usr/bin/env python3
"""Regenerates the fuzz seed corpora from real client traffic.

Starts the broker (path in JUNCTION, default target/debug/junction) on free loopback ports,
puts a recording TCP proxy in front of its AMQP, MQTT, STOMP and Web-MQTT listeners, runs
typical sessions with real clients (pika, paho-mqtt over TCP and WebSocket, stomp.py, and
mosquitto_pub/mosquitto_sub when installed), and writes what the clients sent (client to
broker only) as seed files under fuzz/corpus/<target>/, in the input format each target reads
(a few mode bytes first; see each target's doc comment). Also seeds config_toml with
config/junction.toml and definitions_json with the broker's own export and a RabbitMQ-style
document.

    python3 fuzz/seeds/record.py            # from the repository root

Needs: pika, paho-mqtt, stomp.py (the repository's .venv has them); optional: mosquitto-clients.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """A TCP proxy that keeps each connection's client-to-broker bytes."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.sessions: list[bytearray] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            record = bytearray()
            with self.lock:
                self.sessions.append(record)
            threading.Thread(target=self._pipe, args=(client, upstream, record), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if record is not None:
                    record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def take(self) -> list[bytes]:
        time.sleep(0.5)
        with self.lock:
            sessions = [bytes(s) for s in self.sessions if s]
            self.sessions.clear()
        return sessions


def write_seed(target: str, data: bytes) -> None:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def amqp_frames(stream: bytes):
    """(type, channel, payload) of each frame after the protocol header."""
    if stream.startswith(b"AMQP"):
        stream = stream[8:]
    while len(stream) >= 8:
        kind, channel, size = struct.unpack(">BHI", stream[:7])
        if len(stream) < size + 8:
            break
        yield kind, channel, stream[7 : 7 + size]
        stream = stream[size + 8 :]


def ws_frames(payload: bytes, opcode: int, chunk: int) -> bytes:
    """`payload` as masked client WebSocket messages of at most `chunk` bytes, with a ping."""
    out = bytearray()
    mask = b"\x37\xfa\x21\x3d"
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] or [b""]
    for n, piece in enumerate(pieces):
        if n == 1:
            out += b"\x89\x80" + mask  # an empty ping between messages
        length = len(piece)
        if length < 126:
            out += bytes([0x80 | opcode, 0x80 | length])
        elif length < 65536:
            out += bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", length)
        else:
            out += bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", length)
        out += mask + bytes(b ^ mask[i % 4] for i, b in enumerate(piece))
    out += b"\x88\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8"))
    return bytes(out)


def amqp_sessions(port: int) -> None:
    import pika

    params = pika.ConnectionParameters("127.0.0.1", port, credentials=pika.PlainCredentials("guest", "guest"))
    # Declare, publish with headers, consume and ack, get, reject.
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.exchange_declare("seed.topic", "topic", durable=False, auto_delete=True)
    channel.queue_declare("seed.q", arguments={"x-max-length": 100, "x-message-ttl": 60000,
                                               "x-dead-letter-exchange": "seed.topic"})
    channel.queue_bind("seed.q", "seed.topic", "a.*.c")
    channel.basic_qos(prefetch_count=10)
    for i in range(3):
        channel.basic_publish("seed.topic", "a.b.c", b"hello %d" % i, pika.BasicProperties(
            content_type="text/plain", delivery_mode=2, priority=1, correlation_id="c%d" % i,
            reply_to="seed.replies", expiration="60000", message_id="m%d" % i,
            timestamp=1700000000, type="t", app_id="seed",
            headers={"k": "v", "n": 1, "big": 2**40, "l": [1, "x", True], "t": {"inner": b"bytes"}}))
    method, _, body = channel.basic_get("seed.q")
    if method:
        channel.basic_reject(method.delivery_tag, requeue=True)
    got = []

    def on_message(ch, m, _p, b):
        got.append(b)
        ch.basic_ack(m.delivery_tag)
    tag = channel.basic_consume("seed.q", on_message, arguments={"x-priority": 5})
    connection.process_data_events(time_limit=0.5)
    channel.basic_cancel(tag)
    channel.queue_unbind("seed.q", "seed.topic", "a.*.c")
    channel.queue_purge("seed.q")
    channel.queue_delete("seed.q")
    connection.close()

    # Transactions, confirms, an exclusive queue, nack and recover, exchange-to-exchange.
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.exchange_declare("seed.fan", "fanout", auto_delete=True)
    channel.exchange_declare("seed.hdr", "headers", auto_delete=True)
    channel.exchange_bind("seed.hdr", "seed.fan")
    channel.queue_bind(q, "seed.hdr", arguments={"x-match": "any", "k": "v"})
    channel.tx_select()
    channel.basic_publish("", q, b"in a transaction")
    channel.tx_commit()
    channel.basic_publish("", q, b"rolled back")
    channel.tx_rollback()
    channel2 = connection.channel()
    channel2.confirm_delivery()
    channel2.basic_publish("seed.fan", "", b"confirmed", pika.BasicProperties(headers={"k": "v"}), mandatory=True)
    method, _, _ = channel2.basic_get(q)
    if method:
        channel2.basic_nack(method.delivery_tag, requeue=True)
    channel2.basic_recover(requeue=True)
    channel2.close()
    channel.close()
    connection.close()


def mqtt_sessions(port: int, ws_port: int) -> None:
    import paho.mqtt.client as mqtt

    def client(name: str, transport: str = "tcp", clean: bool = True):
        try:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=clean,
                            protocol=mqtt.MQTTv311, transport=transport)
        except AttributeError:
            c = mqtt.Client(client_id=name, clean_session=clean, protocol=mqtt.MQTTv311, transport=transport)
        c.username_pw_set("guest", "guest")
        return c

    sub = client("seed-sub", clean=False)
    sub.will_set("seed/will", b"gone", qos=1, retain=True)
    sub.connect("127.0.0.1", port, keepalive=30)
    sub.loop_start()
    sub.subscribe([("seed/+/temp", 1), ("seed/#", 2), ("seed/exact", 0)])
    pub = client("seed-pub")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for qos in (0, 1, 2):
        pub.publish("seed/room/temp", b"21.5 qos %d" % qos, qos=qos).wait_for_publish(2)
    pub.publish("seed/retained", b"kept", qos=1, retain=True).wait_for_publish(2)
    time.sleep(0.5)
    sub.unsubscribe("seed/exact")
    time.sleep(0.2)
    pub.disconnect()
    pub.loop_stop()
    sub.disconnect()
    sub.loop_stop()

    ws = client("seed-ws", transport="websockets")
    ws.ws_set_options(path="/ws")
    ws.connect("127.0.0.1", ws_port)
    ws.loop_start()
    ws.subscribe("seed/ws", 1)
    ws.publish("seed/ws", b"over websocket", qos=1).wait_for_publish(2)
    time.sleep(0.3)
    ws.disconnect()
    ws.loop_stop()

    if shutil.which("mosquitto_pub"):
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", "guest", "-P", "guest",
                        "-q", "2", "-t", "seed/cli", "-m", "from mosquitto_pub", "--will-topic", "seed/w",
                        "--will-payload", "bye", "-i", "seed-cli"], timeout=10, check=False)
        subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", "guest", "-P", "guest",
                        "-q", "1", "-t", "seed/#", "-C", "1", "-W", "2", "-i", "seed-cli-sub"],
                       timeout=10, check=False, capture_output=True)


def stomp_sessions(port: int) -> None:
    import stomp

    class Listener(stomp.ConnectionListener):
        def __init__(self):
            self.messages = []

        def on_message(self, frame):
            self.messages.append(frame)

    for version in ("1.2", "1.1", "1.0"):
        cls = {"1.2": stomp.Connection12, "1.1": stomp.Connection11, "1.0": stomp.Connection10}[version]
        if version == "1.0":
            conn = cls([("127.0.0.1", port)])
        else:
            conn = cls([("127.0.0.1", port)], heartbeats=(0, 0), vhost="/")
        listener = Listener()
        conn.set_listener("l", listener)
        conn.connect("guest", "guest", wait=True)
        if version == "1.0":
            conn.subscribe("/queue/seed-stomp-10", ack="client")
        else:
            conn.subscribe("/queue/seed-stomp", id="s1", ack="client-individual")
        dest = "/queue/seed-stomp" if version != "1.0" else "/queue/seed-stomp-10"
        conn.send(dest, "hello: with\nnewline", headers={"persistent": "true", "x-custom": "a:b\\c",
                                                          "reply-to": "/temp-queue/r"}, receipt="r1")
        conn.begin("tx1")
        conn.send("/topic/seed.t", b"in tx \x00 binary", transaction="tx1", content_type="application/octet-stream")
        conn.commit("tx1")
        conn.send("/exchange/amq.topic/seed.k", "to an exchange")
        time.sleep(0.4)
        for frame in listener.messages:
            if version == "1.2":
                conn.ack(frame.headers.get("ack"))
            elif version == "1.1":
                conn.nack(frame.headers["message-id"], "s1")
            else:
                conn.ack(frame.headers["message-id"])
        if version != "1.0":
            conn.unsubscribe("s1")
        conn.disconnect(receipt="bye")


def main() -> None:
    binary = Path(os.environ.get("JUNCTION", ROOT / "target" / "debug" / "junction"))
    ports = {name: free_port() for name in ("amqp", "mqtt", "stomp", "http", "web_mqtt", "web_stomp", "prometheus")}
    data_dir = tempfile.mkdtemp(prefix="junction-seeds-")
    args = [str(binary), "--data-dir", data_dir]
    for name, port in ports.items():
        args += ["--" + name.replace("_", "-"), f"127.0.0.1:{port}"]
    broker = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", ports["amqp"]), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        recorders = {name: Recorder(ports[name]) for name in ("amqp", "mqtt", "stomp", "web_mqtt")}

        amqp_sessions(recorders["amqp"].port)
        for stream in recorders["amqp"].take():
            write_seed("amqp_connection", stream)
            write_seed("amqp_frame", b"\x02\x00\x40" + stream[8:])
            for kind, _channel, payload in amqp_frames(stream):
                if kind == 1:
                    write_seed("amqp_method", b"\x00" + payload)
                elif kind == 2:
                    write_seed("amqp_method", b"\x01" + payload)

        mqtt_sessions(recorders["mqtt"].port, recorders["web_mqtt"].port)
        for stream in recorders["mqtt"].take():
            write_seed("mqtt_packet", b"\x00\x00\x20" + stream)
            write_seed("mqtt_session", stream)
            write_seed("websocket_bridge", b"\x00" + ws_frames(stream, 2, 37))
        for stream in recorders["web_mqtt"].take():
            head_end = stream.find(b"\r\n\r\n")
            if head_end >= 0:
                write_seed("websocket_bridge", b"\x00" + stream[head_end + 4 :])

        stomp_sessions(recorders["stomp"].port)
        for stream in recorders["stomp"].take():
            write_seed("stomp_frame", b"\x03\x00\x00\x30" + stream)
            write_seed("stomp_frame", b"\x83\x40\x00\x30" + stream)
            write_seed("websocket_bridge", b"\x01" + ws_frames(stream, 1, 64))

        write_seed("config_toml", (ROOT / "config" / "junction.toml").read_bytes())
        write_seed("config_toml", b'[amqp]\nheartbeat = 5\n\n[[users]]\nname = "ops"\npassword = "pw"\n'
                   b'tags = ["administrator"]\n[[users.permissions]]\nvhost = "/"\nconfigure = ".*"\n'
                   b'write = ".*"\nread = "^ops\\\\."\n')

        request = urllib.request.Request(f"http://127.0.0.1:{ports['http']}/api/definitions")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
        with urllib.request.urlopen(request, timeout=5) as response:
            write_seed("definitions_json", response.read())
        write_seed("definitions_json", json.dumps(rabbit_definitions(), indent=1).encode())
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        shutil.rmtree(data_dir, ignore_errors=True)


def rabbit_definitions() -> dict:
    """A RabbitMQ 3.13-style export, as tests/interop's definitions test writes one."""
    salt = b"\x01\x02\x03\x04"
    password_hash = base64.b64encode(salt + hashlib.sha256(salt + b"ops-pw").digest()).decode()
    return {
        "rabbit_version": "3.13.7",
        "users": [{"name": "ops", "password_hash": password_hash,
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator,monitoring"},
                  {"name": "app", "password_hash": password_hash, "tags": ["management"]}],
        "vhosts": [{"name": "/"}, {"name": "prod", "description": "production", "tags": []}],
        "permissions": [{"user": "ops", "vhost": "prod", "configure": ".*", "write": ".*", "read": ".*"}],
        "topic_permissions": [{"user": "ops", "vhost": "prod", "exchange": "orders", "write": "^eu\\.", "read": ".*"}],
        "parameters": [],
        "policies": [{"vhost": "prod", "name": "ttl", "pattern": ".*", "apply-to": "queues",
                      "definition": {"message-ttl": 60000}, "priority": 0}],
        "queues": [{"name": "orders-q", "vhost": "prod", "durable": True, "auto_delete": False,
                    "arguments": {"x-queue-type": "classic", "x-max-length": 1000, "x-dead-letter-exchange": "dlx"}}],
        "exchanges": [{"name": "orders", "vhost": "prod", "type": "topic", "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {}},
                      {"name": "dlx", "vhost": "prod", "type": "fanout", "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {"alternate-exchange": "orders"}}],
        "bindings": [{"source": "orders", "vhost": "prod", "destination": "orders-q", "destination_type": "queue",
                      "routing_key": "eu.#", "arguments": {}},
                     {"source": "orders", "vhost": "prod", "destination": "dlx", "destination_type": "exchange",
                      "routing_key": "", "arguments": {"x-match": "all"}}],
    }


if __name__ == "__main__":
    sys.exit(main())
