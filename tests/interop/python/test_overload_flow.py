"""Issue 14: credit flow, on every protocol and transport.

The broker runs with small queue mailboxes (``[flow] queue_mailbox = 64``) and logs credit
flow (``junction_core::flow=debug``). A publisher floods one queue with numbered messages, in
bursts written at once, over AMQP, MQTT, STOMP, MQTT over WebSocket and STOMP over
WebSocket: the queue falls behind, the broker stops reading that publisher ("publisher held
by credit flow" names the queue) and reads it again once the queue has caught up, so every
message arrives, in order. A second publisher that sends slowly to another queue at the same
time is never held.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Callable

import pika
import pytest

from amqp_raw import QUEUE_DECLARE_OK, RawAmqp, publish_bytes
from mqtt_raw import RawClient, RawWebSocket, publish_packet
from stomp_clients import RawStomp, RawStompWebSocket, frame_bytes

CONFIG = '[flow]\nqueue_mailbox = 64\n[log]\nlevel = "info,junction_core::flow=debug"\n'
#: Messages per burst, and bursts at most before the hold must have been seen.
BURST = 4000
BURSTS = 10
HELD = "publisher held by credit flow"
WAIT = 60.0


def start(start_broker, tmp_path: Path):
    config = tmp_path / "flow.toml"
    config.write_text(CONFIG)
    return start_broker(extra_args=["--config", str(config)])


def held_queues(broker) -> set[str]:
    """The queues the broker's log says held a publisher."""
    log = broker.log_path.read_text(errors="replace")
    return {
        match.group(1)
        for line in log.splitlines()
        if HELD in line
        for match in [re.search(r'queue="?([^"\s]+)', line)]
        if match
    }


def declare(broker, queue: str, bind_key: str | None = None) -> None:
    connection = pika.BlockingConnection(broker.pika_parameters())
    try:
        channel = connection.channel()
        channel.queue_declare(queue)
        if bind_key is not None:
            channel.queue_bind(queue, "amq.topic", bind_key)
    finally:
        connection.close()


def drain(broker, queue: str, count: int) -> list[int]:
    """Consumes ``count`` messages from ``queue``; returns their numbers in arrival order."""
    numbers: list[int] = []
    connection = pika.BlockingConnection(broker.pika_parameters())
    try:
        channel = connection.channel()
        deadline = time.monotonic() + WAIT
        for _method, _properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=5):
            if body is not None:
                numbers.append(int(body))
            if len(numbers) == count:
                break
            assert time.monotonic() < deadline, f"{len(numbers)} of {count} arrived"
            if body is None:
                raise AssertionError(f"only {len(numbers)} of {count} arrived")
        channel.cancel()
    finally:
        connection.close()
    return numbers


def calm_publisher(broker, queue: str, stop: threading.Event) -> threading.Thread:
    """Publishes one message to ``queue`` every 20 ms until ``stop``: a queue that keeps up."""

    def run() -> None:
        connection = pika.BlockingConnection(broker.pika_parameters())
        channel = connection.channel()
        channel.queue_declare(queue)
        while not stop.is_set():
            channel.basic_publish("", queue, b"calm")
            connection.sleep(0.02)
        connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def flood_until_held(broker, queue: str, send_burst: Callable[[bytes], None], encode) -> int:
    """Sends numbered bursts until the log shows a publisher held for ``queue`` (then one
    more burst, which must be read once the queue catches up); returns how many were sent."""
    sent = 0
    for _ in range(BURSTS):
        send_burst(b"".join(encode(b"%d" % n) for n in range(sent, sent + BURST)))
        sent += BURST
        deadline = time.monotonic() + 2
        while queue not in held_queues(broker) and time.monotonic() < deadline:
            time.sleep(0.05)
        if queue in held_queues(broker):
            send_burst(b"".join(encode(b"%d" % n) for n in range(sent, sent + BURST)))
            return sent + BURST
    raise AssertionError(f"no publisher to {queue} was held in {BURSTS} bursts of {BURST}")


def check_flow(broker, queue: str, send_burst, encode) -> None:
    stop = threading.Event()
    calm = calm_publisher(broker, f"{queue}-calm", stop)
    try:
        sent = flood_until_held(broker, queue, send_burst, encode)
    finally:
        stop.set()
        calm.join(10)
    assert drain(broker, queue, sent) == list(range(sent)), "messages lost or out of order"
    assert f"{queue}-calm" not in held_queues(broker), "a publisher to a queue that keeps up was held"


def test_an_amqp_publisher_is_held_while_its_queue_is_behind(start_broker, tmp_path):
    broker = start(start_broker, tmp_path)
    publisher = RawAmqp(broker.listeners["amqp"]).open()
    publisher.queue_declare("flow-amqp")
    publisher.expect(QUEUE_DECLARE_OK)
    check_flow(broker, "flow-amqp", publisher.send, lambda body: publish_bytes("", "flow-amqp", body))
    publisher.close()


@pytest.mark.parametrize("transport", ["tcp", "websocket"])
def test_an_mqtt_publisher_is_held_while_its_queue_is_behind(start_broker, tmp_path, transport):
    broker = start(start_broker, tmp_path)
    queue = f"flow-mqtt-{transport}"
    declare(broker, queue, bind_key=f"flow.{transport}")
    if transport == "tcp":
        publisher = RawClient(broker.listeners["mqtt"])
    else:
        publisher = RawWebSocket(broker.listeners["web-mqtt"])
    publisher.connect(f"flood-{transport}")
    topic = f"flow/{transport}"
    check_flow(broker, queue, publisher.send, lambda body: publish_packet(topic, body))
    publisher.close()


@pytest.mark.parametrize("transport", ["tcp", "websocket"])
def test_a_stomp_publisher_is_held_while_its_queue_is_behind(start_broker, tmp_path, transport):
    broker = start(start_broker, tmp_path)
    queue = f"flow-stomp-{transport}"
    declare(broker, queue)
    if transport == "tcp":
        publisher = RawStomp(broker.listeners["stomp"])
    else:
        publisher = RawStompWebSocket(broker.listeners["web-stomp"], ["v12.stomp"])
    publisher.connect()
    destination = f"/amq/queue/{queue}"
    check_flow(
        broker,
        queue,
        publisher.send,
        lambda body: frame_bytes("SEND", [("destination", destination)], body),
    )
    publisher.close()
