"""Issue 14: a consumer that stops reading holds a bounded amount of broker memory.

A durable queue holds a backlog of persistent 2 KiB messages, paged out to the message log
(the broker keeps at most 1 MiB of bodies in memory per queue here). Then one consumer that
never reads its socket attaches: pika with ``auto_ack`` that stops running its I/O loop,
stomp.py with ``ack:auto`` whose listener blocks, and a raw MQTT client resuming a session
subscribed at QoS 0 or 1 that reads nothing after CONNACK. The queue may hand that connection
only its delivery budget (``[flow] delivery_budget``, 1 MiB by default), so the broker's
resident memory (VmRSS, read from /proc) grows by a few MiB, not by the backlog, and the rest
of the backlog stays in the queue. Before the budget, the whole backlog was read back from
disk into the connection's delivery channel.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pika
import pytest

from mqtt_raw import PUBACK, RawClient, packet, publish_packet
from stomp_clients import StompClient

#: Messages in the backlog, of BODY_SIZE bytes each: 64 MiB in all.
BACKLOG = 32768
BODY_SIZE = 2048
#: What the broker may grow by while the stalled consumer is attached.
GROWTH_LIMIT = 24 * 1024 * 1024
#: Seconds to wait for the broker to settle into the stall.
SETTLE = 30.0

CONFIG = "[storage]\nmax_loaded_bytes_per_queue = 1048576\n"


def vm_rss(pid: int) -> int:
    """The process's resident memory, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def start(start_broker, tmp_path: Path):
    config = tmp_path / "stalled.toml"
    config.write_text(CONFIG)
    return start_broker(extra_args=["--config", str(config)])


def fill(broker, exchange: str, routing_key: str, queue: str | None = None) -> None:
    """Publishes the backlog (persistent) and waits until ``queue`` (if named) holds it all."""
    connection = pika.BlockingConnection(broker.pika_parameters())
    try:
        channel = connection.channel()
        if queue is not None:
            channel.queue_declare(queue, durable=True)
        body = b"x" * BODY_SIZE
        persistent = pika.BasicProperties(delivery_mode=2)
        for _ in range(BACKLOG):
            channel.basic_publish(exchange, routing_key, body, persistent)
    finally:
        connection.close()


def ready(broker, queue: str) -> int:
    """The queue's ready count, as a passive declare reports it."""
    connection = pika.BlockingConnection(broker.pika_parameters())
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def wait_for_ready(broker, queue: str, predicate, what: str) -> int:
    deadline = time.monotonic() + SETTLE
    while True:
        count = ready(broker, queue)
        if predicate(count):
            return count
        assert time.monotonic() < deadline, f"{what}: the queue still has {count} ready"
        time.sleep(0.1)


def settle(broker, queue: str) -> int:
    """Waits until the queue's ready count has stopped falling for a second (the stalled
    consumer's connection is full); returns it."""
    deadline = time.monotonic() + SETTLE
    last, since = ready(broker, queue), time.monotonic()
    while time.monotonic() - since < 1.0:
        assert time.monotonic() < deadline, "the queue kept draining into a stalled consumer"
        time.sleep(0.1)
        count = ready(broker, queue)
        if count != last:
            last, since = count, time.monotonic()
    return last


def assert_bounded(broker, queue: str, attach_stalled_consumer) -> None:
    """Measures the broker before and after a stalled consumer attaches to ``queue``."""
    wait_for_ready(broker, queue, lambda n: n == BACKLOG, "the backlog never arrived")
    pid = broker.process.pid
    before = vm_rss(pid)
    stalled = attach_stalled_consumer()
    try:
        left = settle(broker, queue)
        growth = vm_rss(pid) - before
        assert growth < GROWTH_LIMIT, (
            f"the broker grew by {growth / 2**20:.1f} MiB for a consumer that does not read"
        )
        assert left > BACKLOG // 2, f"only {left} of {BACKLOG} stayed in the queue"
    finally:
        stalled()


def small_buffer_socket(listener: tuple[str, int]) -> socket.socket:
    """A socket with a small receive buffer, so the kernel holds little for the stall."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(listener)
    return sock


def test_an_auto_ack_amqp_consumer_that_stops_reading_holds_only_its_budget(
    start_broker, tmp_path
):
    broker = start(start_broker, tmp_path)
    fill(broker, "", "stalled-amqp", queue="stalled-amqp")

    def attach():
        connection = pika.BlockingConnection(broker.pika_parameters())
        channel = connection.channel()
        channel.basic_consume("stalled-amqp", lambda *_: None, auto_ack=True)
        # From here on nothing runs pika's I/O loop: the socket is not read. The connection
        # ends with the broker.
        return lambda: None

    assert_bounded(broker, "stalled-amqp", attach)


def test_a_stomp_auto_ack_subscriber_that_stops_reading_holds_only_its_budget(
    start_broker, tmp_path
):
    broker = start(start_broker, tmp_path)
    fill(broker, "", "stalled-stomp", queue="stalled-stomp")
    release = threading.Event()

    class Stall:
        """Blocks stomp.py's receiver thread on the first message: it reads no more."""

        def on_message(self, frame) -> None:
            release.wait(SETTLE * 2)

    def attach():
        client = StompClient(broker.listeners["stomp"])
        client.conn.set_listener("stall", Stall())
        client.connect()
        client.conn.subscribe("/queue/stalled-stomp", id="s", ack="auto")

        def stop():
            release.set()
            client.conn.disconnect()

        return stop

    assert_bounded(broker, "stalled-stomp", attach)


@pytest.mark.parametrize("qos", [0, 1])
def test_an_mqtt_subscriber_that_stops_reading_holds_only_its_budget(
    start_broker, tmp_path, qos
):
    broker = start(start_broker, tmp_path)
    client_id = f"stalled-{qos}"
    session_queue = f"mqtt-subscription-{client_id}"
    # A kept session subscribed to the topic: its queue is durable and takes the backlog
    # while the client is away.
    first = RawClient(broker.listeners["mqtt"])
    first.connect(client_id, clean_session=False)
    first.subscribe(f"stalled/{qos}/#", qos)
    first.close()
    fill(broker, "amq.topic", f"stalled.{qos}.reading")

    def attach():
        stalled = RawClient.__new__(RawClient)
        super(RawClient, stalled).__init__()
        stalled.sock = small_buffer_socket(broker.listeners["mqtt"])
        assert stalled.connect(client_id, clean_session=False), "the session was not kept"
        # From here on nothing is read.
        return stalled.close

    assert_bounded(broker, session_queue, attach)


def test_qos0_messages_beyond_the_session_bound_are_dropped_and_qos1_ones_never(
    start_broker, tmp_path
):
    config = tmp_path / "qos0.toml"
    config.write_text("[mqtt]\nmax_queued_qos0 = 100\n")
    broker = start_broker(extra_args=["--config", str(config)])
    subscriber = RawClient.__new__(RawClient)
    super(RawClient, subscriber).__init__()
    subscriber.sock = small_buffer_socket(broker.listeners["mqtt"])
    subscriber.connect("slow-reader", clean_session=False)
    subscriber.subscribe("bound/#", 1)
    # From here on the subscriber reads nothing.
    session_queue = "mqtt-subscription-slow-reader"

    publisher = RawClient(broker.listeners["mqtt"])
    publisher.connect("fast-writer")
    body = b"q" * 64
    for _ in range(20):
        publisher.send(b"".join(publish_packet("bound/zero", body) for _ in range(1000)))
    publisher.send(packet(0xC0))
    assert publisher.read_packet() == (0xD0, b""), "PINGRESP after the QoS 0 burst"
    # The subscriber's connection takes its budget's worth; of the rest, at most the bound
    # waits in its queue.
    settled = settle(broker, session_queue)
    assert settled <= 100, f"{settled} QoS 0 messages queued beyond the bound of 100"

    publisher.send(
        b"".join(publish_packet("bound/one", body, qos=1, packet_id=i) for i in range(1, 501))
    )
    for packet_id in range(1, 501):
        assert publisher.expect_ack(PUBACK) == packet_id
    # Up to max_inflight (32) of them may have gone to the subscriber's connection before
    # it filled up; every other one waits in the queue, far beyond the QoS 0 bound.
    count = wait_for_ready(
        broker, session_queue, lambda n: n >= settled + 500 - 32, "QoS 1 messages were dropped"
    )
    assert count <= settled + 500
    publisher.close()
    subscriber.close()
