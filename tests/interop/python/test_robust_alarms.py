"""Issue 13, defects 11, 18 and 19, against the real binary.

* 11: during a resource alarm a FRESH MQTT or STOMP connection's first PUBLISH or SEND (over
  TCP and over WebSocket) is held back like later ones: not routed while the alarm holds,
  routed once it clears (the disk alarm on a small tmpfs the test mounts, root only), and a
  stream of fresh connections each sending one large message does not grow the broker.
* 18: a blocked publisher that keeps sending heart-beats (STOMP) or PINGREQs (MQTT) is not
  closed for silence while the broker is the one not reading, and the broker's own STOMP
  heart-beats keep coming. AMQP is covered over a raw socket in tests/tests/robust_alarms.rs.
* 19: a user name, client id or destination with a newline does not write a forged log line.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

from mqtt_raw import PUBACK, RawClient, RawWebSocket, connect_packet, packet, publish_packet
from stomp_clients import RawStomp, RawStompConnection, RawStompWebSocket

#: A memory watermark of one byte: the alarm is raised at start and never clears.
ALWAYS_OVER_THE_WATERMARK = "[alarms]\nmemory_high_watermark_bytes = 1\ncheck_interval_ms = 20\n"
#: How long a test watches for something that must not happen while the alarm holds.
HOLD_WATCH = 1.5
#: Seconds a test waits for something the broker should do promptly.
WAIT = 10.0
#: The queue every publication of these tests is routed to, through amq.topic.
TOPIC_KEY = "alarm.#"


def start_over_the_watermark(start_broker, tmp_path: Path, more_config: str = ""):
    config = tmp_path / "alarm.toml"
    config.write_text(ALWAYS_OVER_THE_WATERMARK + more_config)
    return start_broker(extra_args=["--config", str(config)])


def wait_for_log(broker, text: str, timeout: float = WAIT) -> str:
    """Polls the broker's log until ``text`` appears; returns the log."""
    deadline = time.monotonic() + timeout
    while True:
        log = broker.log_path.read_text(errors="replace")
        if text in log:
            return log
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout} s:\n{log[-3000:]}"
        time.sleep(0.05)


def bound_queue(broker, name: str) -> tuple[pika.BlockingConnection, object]:
    """A pika connection that only consumes (never blocked) and a queue bound to amq.topic
    with ``alarm.#``."""
    connection = pika.BlockingConnection(broker.pika_parameters())
    channel = connection.channel()
    channel.queue_declare(name)
    channel.queue_bind(name, "amq.topic", TOPIC_KEY)
    return connection, channel


def drain(channel, queue: str) -> list[bytes]:
    """Every message ready in ``queue`` now."""
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def assert_nothing_routed(channel, queue: str) -> None:
    """Watches ``queue`` for HOLD_WATCH seconds: nothing may arrive."""
    watch_until = time.monotonic() + HOLD_WATCH
    while time.monotonic() < watch_until:
        routed = drain(channel, queue)
        assert routed == [], f"routed during the alarm: {routed}"
        channel.connection.process_data_events(time_limit=0.1)


class FreshPublishers:
    """One fresh connection per protocol and transport, each sending its first publication:
    MQTT over TCP at QoS 0 and 1, MQTT over WebSocket at QoS 1, STOMP over TCP and over
    WebSocket with a receipt, and (optionally) AMQP with pika."""

    def __init__(self, broker, *, amqp: bool = False) -> None:
        self.mqtt_q0 = RawClient(broker.listeners["mqtt"])
        self.mqtt_q1 = RawClient(broker.listeners["mqtt"])
        self.mqtt_ws = RawWebSocket(broker.listeners["web-mqtt"])
        self.stomp = RawStomp(broker.listeners["stomp"])
        self.stomp_ws = RawStompWebSocket(broker.listeners["web-stomp"])
        self.amqp = pika.BlockingConnection(broker.pika_parameters()) if amqp else None
        self.expected = {b"mqtt-q0", b"mqtt-q1", b"mqtt-ws", b"stomp", b"stomp-ws"}
        if amqp:
            self.expected.add(b"amqp")

    def publish(self) -> None:
        self.mqtt_q0.connect("fresh-q0")
        self.mqtt_q0.send(publish_packet("alarm/mqtt", b"mqtt-q0", qos=0))
        self.mqtt_q1.connect("fresh-q1")
        self.mqtt_q1.send(publish_packet("alarm/mqtt", b"mqtt-q1", qos=1, packet_id=7))
        self.mqtt_ws.connect("fresh-ws")
        self.mqtt_ws.send(publish_packet("alarm/mqtt", b"mqtt-ws", qos=1, packet_id=8))
        for client, body in ((self.stomp, "stomp"), (self.stomp_ws, "stomp-ws")):
            client.connect()
            client.send_frame(
                "SEND", [("destination", "/topic/alarm.stomp"), ("receipt", body)], body
            )
        if self.amqp is not None:
            self.amqp.channel().basic_publish("amq.topic", "alarm.amqp", b"amqp")

    def assert_not_acknowledged(self) -> None:
        for client in (self.mqtt_q1, self.mqtt_ws):
            with pytest.raises(AssertionError, match="no packet"):
                client.read_packet(timeout=0.2)
        for client in (self.stomp, self.stomp_ws):
            with pytest.raises(AssertionError, match="no frame"):
                client.read_frame(timeout=0.2)

    def assert_acknowledged(self) -> None:
        assert self.mqtt_q1.expect_ack(PUBACK) == 7
        assert self.mqtt_ws.expect_ack(PUBACK) == 8
        for client, receipt in ((self.stomp, "stomp"), (self.stomp_ws, "stomp-ws")):
            assert client.expect_frame("RECEIPT")["receipt-id"] == receipt

    def close(self) -> None:
        for client in (self.mqtt_q0, self.mqtt_q1, self.mqtt_ws, self.stomp, self.stomp_ws):
            client.close()
        if self.amqp is not None and self.amqp.is_open:
            try:
                self.amqp.close()
            except pika.exceptions.AMQPError:
                pass


def test_fresh_connections_first_publications_are_not_routed_during_an_alarm(
    start_broker, tmp_path
):
    broker = start_over_the_watermark(start_broker, tmp_path)
    consumer, channel = bound_queue(broker, "held")
    publishers = FreshPublishers(broker)
    try:
        publishers.publish()
        assert_nothing_routed(channel, "held")
        publishers.assert_not_acknowledged()
        # The consumer's connection is served throughout.
        assert channel.queue_declare("held", passive=True).method.message_count == 0
    finally:
        publishers.close()
        consumer.close()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 32 MiB tmpfs mounted under ``tmp_path`` (root only; skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs for the disk alarm needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_held_first_publications_are_routed_once_the_disk_alarm_clears(
    start_broker, tmp_path, small_disk
):
    config = tmp_path / "disk-alarm.toml"
    # 24 MiB must stay free on a 32 MiB disk: a 16 MiB file raises the alarm.
    config.write_text(f"[alarms]\ndisk_free_limit = {24 * 1024 * 1024}\ncheck_interval_ms = 20\n")
    broker = start_broker(data_dir=small_disk / "data", extra_args=["--config", str(config)])
    consumer, channel = bound_queue(broker, "held-until-clear")
    publishers = FreshPublishers(broker, amqp=True)
    filler = small_disk / "filler"
    try:
        filler.write_bytes(b"\0" * (16 * 1024 * 1024))
        wait_for_log(broker, 'alarm raised: blocking publishers resource="disk"')
        publishers.publish()
        assert_nothing_routed(channel, "held-until-clear")
        publishers.assert_not_acknowledged()

        filler.unlink()
        wait_for_log(broker, 'alarm cleared resource="disk"')
        routed: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while set(routed) != publishers.expected and time.monotonic() < deadline:
            routed += drain(channel, "held-until-clear")
            consumer.process_data_events(time_limit=0.05)
        assert sorted(routed) == sorted(publishers.expected), "each held message once"
        publishers.assert_acknowledged()
    finally:
        publishers.close()
        consumer.close()
        broker.stop()


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def push(sock: socket.socket, data: bytes, quiet_for: float = 0.5) -> int:
    """Sends as much of ``data`` as the broker takes until it takes nothing for ``quiet_for``
    seconds; returns how much was sent."""
    sock.setblocking(False)
    sent = 0
    last_progress = time.monotonic()
    while sent < len(data) and time.monotonic() - last_progress < quiet_for:
        try:
            n = sock.send(data[sent : sent + 65536])
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        last_progress = time.monotonic()
    return sent


def test_fresh_connections_each_sending_one_large_message_do_not_grow_the_broker(
    start_broker, tmp_path
):
    """The issue's attack: many fresh connections, each with one big first message, during
    the memory alarm (374 x 8 MiB reached 6 times the watermark). Here 24 MQTT and 24 STOMP
    connections with 4 MiB each: 192 MiB if they were taken; held back, each connection holds
    at most one read's worth."""
    broker = start_over_the_watermark(start_broker, tmp_path)
    consumer, channel = bound_queue(broker, "large")
    body = b"x" * (4 * 1024 * 1024)
    before = vm_rss_bytes(broker.process.pid)
    clients: list[socket.socket] = []
    try:
        for n in range(24):
            mqtt = RawClient(broker.listeners["mqtt"])
            clients.append(mqtt.sock)
            mqtt.connect(f"large-{n}")
            push(mqtt.sock, publish_packet("alarm/large", body, qos=0))
            stomp = RawStomp(broker.listeners["stomp"])
            clients.append(stomp.sock)
            stomp.connect()
            frame = (
                f"SEND\ndestination:/topic/alarm.large\ncontent-length:{len(body)}\n\n".encode()
                + body
                + b"\0"
            )
            push(stomp.sock, frame)
        grown = vm_rss_bytes(broker.process.pid) - before
        assert grown < 48 * 1024 * 1024, f"the broker grew by {grown / 2**20:.0f} MiB"
        assert drain(channel, "large") == []
    finally:
        for sock in clients:
            sock.close()
        consumer.close()


def keep_talking(connection, beat: bytes, seconds: float) -> bytes:
    """Sends ``beat`` four times a second for ``seconds`` and returns what the broker sent;
    fails if the broker ends the connection meanwhile."""
    started = time.monotonic()
    received = b""
    while time.monotonic() - started < seconds:
        connection.send(beat)
        data = connection._receive(0.25)
        assert data != b"", (
            f"the blocked publisher was disconnected after {time.monotonic() - started:.1f} s"
        )
        received += data or b""
    return received


def test_a_blocked_stomp_publisher_sending_heart_beats_is_kept_and_still_gets_ours(
    start_broker, tmp_path
):
    broker = start_over_the_watermark(start_broker, tmp_path, "[stomp]\nheartbeat_ms = 1000\n")
    publisher: RawStompConnection = RawStomp(broker.listeners["stomp"])
    try:
        # The broker sends every second and expects one at least every second (it allows two).
        connected = publisher.connect(heart_beat="1000,1000")
        assert connected["heart-beat"] == "1000,1000"
        for n in range(2):
            publisher.send_frame("SEND", [("destination", "/topic/alarm.hb")], f"held {n}")
        received = keep_talking(publisher, b"\n", seconds=5)
        assert received.count(b"\n") >= 3, f"heart-beats from the broker: {received!r}"
    finally:
        publisher.close()


def test_a_blocked_mqtt_publisher_sending_pings_is_kept(start_broker, tmp_path):
    """Verifies MQTT's keep-alive does not count the time the broker does not read."""
    broker = start_over_the_watermark(start_broker, tmp_path)
    publisher = RawClient(broker.listeners["mqtt"])
    try:
        publisher.connect("blocked-pinger", keepalive=1)
        for n in range(2):
            publisher.send(publish_packet("alarm/ping", f"held {n}".encode(), qos=0))
        keep_talking(publisher, packet(0xC0), seconds=5)
    finally:
        publisher.close()


#: What a forged log line would start with. No colon: an MQTT user name "vhost:user" is split
#: at the first one.
FORGED = "2026-01-01T00.00.00.000000Z ERROR junction FORGED"


def test_client_strings_with_newlines_do_not_forge_log_lines(start_broker):
    broker = start_broker()
    # AMQP PLAIN user name.
    with pytest.raises(pika.exceptions.AMQPError):
        pika.BlockingConnection(
            broker.pika_parameters(credentials=pika.PlainCredentials(f"amqp\n{FORGED}", "x"))
        )
    # MQTT user name (refused) and client id (taken over, which is logged with the id).
    refused = RawClient(broker.listeners["mqtt"])
    refused.send(connect_packet("who", username=f"mqtt\n{FORGED}", password="x"))
    assert refused.read_packet() == (0x20, b"\x00\x04")
    refused.close()
    first = RawClient(broker.listeners["mqtt"])
    first.connect(f"device\n{FORGED}")
    second = RawClient(broker.listeners["mqtt"])
    second.connect(f"device\n{FORGED}")
    first.wait_closed()
    second.close()
    # A STOMP destination (a header, unescaped from \\n as STOMP 1.2 says).
    stomp = RawStomp(broker.listeners["stomp"])
    stomp.connect()
    stomp.send_frame("SEND", [("destination", f"/nowhere\n{FORGED}")], "x", version="1.2")
    stomp.expect_error_and_close()
    stomp.close()

    log = wait_for_log(broker, r"amqp\n" + FORGED)
    for text in (r"mqtt\n" + FORGED, r"device\n" + FORGED, r"/nowhere\n" + FORGED):
        log = wait_for_log(broker, text)
    forged = [line for line in log.splitlines() if line.startswith(FORGED)]
    assert forged == [], f"forged log lines: {forged}"
