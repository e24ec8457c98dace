"""The ``x-delayed-message`` plugin seen from pika and stomp.py: a STOMP client publishing to
``/exchange/X/K`` with an ``x-delay`` header (a string, as STOMP headers are), and a STOMP
subscriber on the same exchange, get the messages in due order after their delays, with
``x-delay`` negated; pika sees the same through a queue it bound itself.
"""

from __future__ import annotations

import time

import pika

from stomp_clients import StompClient


def declare_delayed(channel, exchange: str, kind: str) -> None:
    channel.exchange_declare(
        exchange,
        "x-delayed-message",
        durable=True,
        arguments={"x-delayed-type": kind},
    )


def test_stomp_publishes_through_exchange_destinations_arrive_in_due_order(
    stomp_connected, names, channel
):
    exchange = names("delayed")
    declare_delayed(channel, exchange, "topic")
    audit = names("audit")
    channel.queue_declare(audit)
    channel.queue_bind(audit, exchange, "jobs.#")
    subscriber: StompClient = stomp_connected("1.2")
    subscriber.subscribe(f"/exchange/{exchange}/jobs.*")
    publisher: StompClient = stomp_connected("1.2")
    started = time.monotonic()
    for body, delay in [("third", 600), ("first", 200), ("second", 400)]:
        publisher.send(
            f"/exchange/{exchange}/jobs.run", body, persistent="true", x_delay=str(delay)
        )
    subscriber.expect_no_message(within=0.1)
    received = subscriber.expect_messages(3)
    elapsed = time.monotonic() - started
    assert [m.body for m in received] == ["first", "second", "third"]
    assert [m.headers["x-delay"] for m in received] == ["-200", "-400", "-600"]
    assert elapsed >= 0.6
    # pika's queue, bound with a topic pattern, got the same messages in the same order.
    bodies = []
    deadline = time.monotonic() + 5
    while len(bodies) < 3 and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(audit, auto_ack=True)
        if method is None:
            time.sleep(0.02)
            continue
        bodies.append(body.decode())
        assert properties.headers["x-delay"] < 0
    assert bodies == ["first", "second", "third"]


def test_a_send_without_x_delay_routes_at_once(stomp_connected, names, channel):
    exchange = names("delayed")
    declare_delayed(channel, exchange, "direct")
    subscriber: StompClient = stomp_connected("1.2")
    subscriber.subscribe(f"/exchange/{exchange}/now")
    publisher: StompClient = stomp_connected("1.2")
    publisher.send(f"/exchange/{exchange}/now", "at once")
    assert subscriber.expect_message(timeout=0.5).body == "at once"


def test_stomp_sends_with_receipts_survive_a_sigkill_and_arrive_in_due_order(
    start_broker, stomp, names
):
    """persistent:true SENDs to /exchange/ get their RECEIPT once the held message is stored;
    after a SIGKILL and a restart on the same data directory they still arrive, in due
    order, none before it is due."""
    first = start_broker()
    exchange, queue = names("delayed"), names("after-kill")
    connection = pika.BlockingConnection(first.pika_parameters())
    channel = connection.channel()
    declare_delayed(channel, exchange, "direct")
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange, "jobs")
    connection.close()
    publisher: StompClient = stomp(target=first)
    publisher.connect()
    sent_at = time.time()
    for body, delay in [("late", 3000), ("soon", 1200), ("middle", 2000)]:
        publisher.send(
            f"/exchange/{exchange}/jobs", body, persistent="true", x_delay=str(delay)
        )
    first.process.kill()
    first.process.wait()

    second = start_broker(data_dir=first.data_dir)
    subscriber: StompClient = stomp(target=second)
    subscriber.connect()
    subscriber.subscribe(f"/amq/queue/{queue}")
    received = subscriber.expect_messages(3, timeout=15)
    assert [m.body for m in received] == ["soon", "middle", "late"]
    assert time.time() - sent_at >= 3.0, "nothing arrives before it is due"
