"""Receiving with deadlines: the few ways the interop tests wait for messages.

Every wait here is bounded, and none is a plain sleep: a test either waits for
the messages it expects (failing with what did arrive once the deadline
passes), or for a *sentinel*, a last message published after everything else
on the same channel. AMQP keeps the order of messages that one channel
publishes into one queue, so once the sentinel is in, anything that was going
to be routed to that queue is in too, and "nothing else arrived" is a
deterministic assertion instead of a guess about timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel

#: Body of the sentinel message that ends an :func:`until_sentinel` read.
SENTINEL = b"--sentinel--"

#: How long one wait inside pika's consume loop lasts before we check our deadline.
_POLL = 0.05


@dataclass(frozen=True)
class Delivery:
    """One message as a consumer saw it."""

    method: pika.spec.Basic.Deliver
    properties: pika.BasicProperties
    body: bytes

    @property
    def redelivered(self) -> bool:
        return self.method.redelivered

    @property
    def routing_key(self) -> str:
        return self.method.routing_key

    @property
    def delivery_tag(self) -> int:
        return self.method.delivery_tag


class Consumer:
    """A consumer on ``queue`` whose deliveries the test takes one at a time.

    The consumer is registered with the broker (basic.consume answered by
    consume-ok) when the object is made, so a test can start several consumers
    and only then publish. pika allows one such consumer per channel.
    """

    def __init__(self, channel: BlockingChannel, queue: str, *, auto_ack: bool = False) -> None:
        self.channel = channel
        self.queue = queue
        self._stream = channel.consume(queue, auto_ack=auto_ack, inactivity_timeout=_POLL)
        self._early: list[Delivery] = []
        # The first step of pika's generator sends basic.consume and waits for
        # consume-ok; keep a message if one was already waiting in the queue.
        method, properties, body = next(self._stream)
        if method is not None:
            self._early.append(Delivery(method, properties, body))

    def next(self, timeout: float = 10.0) -> Delivery | None:
        """The next delivery, or None if none arrives within ``timeout`` seconds."""
        if self._early:
            return self._early.pop(0)
        deadline = time.monotonic() + timeout
        for method, properties, body in self._stream:
            if method is not None:
                return Delivery(method, properties, body)
            if time.monotonic() > deadline:
                return None
        return None

    def expect(self, timeout: float = 10.0) -> Delivery:
        """The next delivery; AssertionError if none arrives within ``timeout`` seconds."""
        delivery = self.next(timeout)
        assert delivery is not None, f"no message from {self.queue!r} within {timeout} s"
        return delivery

    def cancel(self) -> None:
        """Cancels the consumer (unacked deliveries stay unacked on the channel)."""
        if self.channel.is_open:
            self.channel.cancel()


def receive(
    channel: BlockingChannel,
    queue: str,
    count: int,
    *,
    timeout: float = 10.0,
    auto_ack: bool = True,
) -> list[Delivery]:
    """Consumes exactly ``count`` messages from ``queue`` within ``timeout`` seconds.

    The consumer is cancelled afterwards. With ``auto_ack=False`` the returned
    messages stay unacknowledged on ``channel`` until the test settles them.
    """
    consumer = Consumer(channel, queue, auto_ack=auto_ack)
    received: list[Delivery] = []
    deadline = time.monotonic() + timeout
    try:
        while len(received) < count:
            delivery = consumer.next(max(0.0, deadline - time.monotonic()))
            if delivery is None:
                break
            received.append(delivery)
    finally:
        consumer.cancel()
    assert len(received) == count, (
        f"expected {count} message(s) from {queue!r} within {timeout} s, "
        f"got {len(received)}: {[d.body for d in received]}"
    )
    return received


def send_sentinel(channel: BlockingChannel, *queues: str) -> None:
    """Publishes the sentinel straight to each queue through the default exchange."""
    for queue in queues:
        channel.basic_publish(exchange="", routing_key=queue, body=SENTINEL)


def until_sentinel(channel: BlockingChannel, queue: str, *, timeout: float = 10.0) -> list[bytes]:
    """Consumes from ``queue`` until the :data:`SENTINEL` arrives; returns the bodies before it."""
    consumer = Consumer(channel, queue, auto_ack=True)
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            delivery = consumer.next(max(0.0, deadline - time.monotonic()))
            if delivery is None:
                raise AssertionError(
                    f"no sentinel from {queue!r} within {timeout} s; received before it: {bodies}"
                )
            if delivery.body == SENTINEL:
                return bodies
            bodies.append(delivery.body)
    finally:
        consumer.cancel()


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> None:
    """Polls ``condition`` until it holds; AssertionError if it still fails at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not hold within {timeout} s")
        time.sleep(interval)
