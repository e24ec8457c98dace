"""kombu on its own against Junction: the queue options kombu turns into RabbitMQ's
arguments (``message_ttl``, ``expires``, ``max_length``, ``max_length_bytes``,
``max_priority``, and ``queue_arguments`` for the rest, such as dead-lettering), the
per-message ``priority`` and ``expiration`` of ``Producer.publish``, an exchange's
``alternate-exchange``, and publisher confirms refused by a full ``reject-publish`` queue.

Each test checks what the broker did with what kombu sent, through kombu itself: the order
messages come out in, a message that expired, a dead letter's ``x-death`` header, a queue
that is gone. Waits are bounded polls or ``get(timeout=...)``; TTLs are a few hundred ms.
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable, Iterator

import amqp.exceptions
import kombu
import pytest
from kombu.simple import SimpleQueue

from messages import wait_until
from processes import JunctionBroker

#: Seconds a message that should arrive may take.
RECEIVE_TIMEOUT = 10.0


@pytest.fixture
def url(broker: JunctionBroker) -> str:
    return f"amqp://guest:guest@{broker.host}:{broker.port}//"


@pytest.fixture
def open_connection(url: str) -> Iterator[Callable[..., kombu.Connection]]:
    """Opens kombu connections to the shared broker; all are released when the test ends."""
    opened: list[kombu.Connection] = []

    def open_one(**options) -> kombu.Connection:
        conn = kombu.Connection(url, connect_timeout=5, **options)
        conn.ensure_connection(max_retries=1)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        conn.release()


@pytest.fixture
def conn(open_connection) -> kombu.Connection:
    return open_connection()


@pytest.fixture
def channel(conn: kombu.Connection):
    return conn.default_channel


def _queue(channel, name: str, **options) -> kombu.Queue:
    """A transient queue on the default exchange, declared on ``channel``."""
    queue = kombu.Queue(
        name, exchange=kombu.Exchange(""), routing_key=name, durable=False, **options
    )
    bound = queue(channel)
    bound.declare()
    return bound


def _publish(channel, queue: kombu.Queue, *bodies: str, **options) -> None:
    producer = kombu.Producer(channel)
    for body in bodies:
        producer.publish(body, exchange="", routing_key=queue.name, **options)


def _count(conn: kombu.Connection, queue: kombu.Queue) -> int:
    """Ready messages in ``queue`` (a passive declare on a channel of its own)."""
    with conn.channel() as probe:
        _, count, _ = queue(probe).queue_declare(passive=True)
        return count


def _drain(queue: kombu.Queue, limit: int = 100) -> list[kombu.Message]:
    """Takes every ready message with basic.get (auto-ack), in the order the broker gives them."""
    taken = []
    while (message := queue.get(no_ack=True)) is not None:
        taken.append(message)
        assert len(taken) <= limit, "the queue does not run dry"
    return taken


def _dead_letters(channel, names) -> tuple[kombu.Exchange, kombu.Queue]:
    """A direct dead-letter exchange and a queue bound to it with the key ``dead``."""
    exchange = kombu.Exchange(names("dlx"), type="direct", durable=False)
    dead = kombu.Queue(names("dead"), exchange=exchange, routing_key="dead", durable=False)(channel)
    dead.declare()
    return exchange(channel), dead


def _wait_for_one(queue: kombu.Queue, timeout: float = RECEIVE_TIMEOUT) -> kombu.Message:
    """Polls ``queue`` with basic.get until a message is there; it must be the only one."""
    found: list[kombu.Message] = []

    def arrived() -> bool:
        found.extend(_drain(queue))
        return bool(found)

    wait_until(arrived, timeout=timeout, message=f"a message in {queue.name!r}")
    assert len(found) == 1, [m.payload for m in found]
    return found[0]


def _consume(
    conn: kombu.Connection, queue: kombu.Queue, count: int, timeout: float = RECEIVE_TIMEOUT
) -> list[kombu.Message]:
    """Exactly ``count`` messages through a kombu Consumer (basic.consume, manual acks); the
    consumer is cancelled afterwards and the messages stay unacknowledged."""
    received: list[kombu.Message] = []
    deadline = time.monotonic() + timeout
    with kombu.Consumer(conn.channel(), [queue], callbacks=[lambda body, m: received.append(m)]):
        while len(received) < count and (remaining := deadline - time.monotonic()) > 0:
            try:
                conn.drain_events(timeout=min(remaining, 0.5))
            except socket.timeout:
                pass
    assert len(received) == count, (
        f"expected {count} message(s) from {queue.name!r} within {timeout} s, "
        f"got {[m.payload for m in received]}"
    )
    return received


# --- what kombu declares -----------------------------------------------------------


def test_kombu_queue_options_are_declared_as_rabbitmq_arguments(conn, channel, names):
    name = names("options")
    options = dict(expires=60, message_ttl=30, max_length=10, max_length_bytes=4096, max_priority=5)
    # What kombu puts in queue.declare's arguments for these options:
    assert channel.prepare_queue_arguments({"x-overflow": "reject-publish"}, **options) == {
        "x-expires": 60_000,
        "x-message-ttl": 30_000,
        "x-max-length": 10,
        "x-max-length-bytes": 4096,
        "x-max-priority": 5,
        "x-overflow": "reject-publish",
    }
    _queue(channel, name, **options, queue_arguments={"x-overflow": "reject-publish"})

    # The broker kept them: the same declaration again is fine, a different one is refused.
    _queue(conn.channel(), name, **options, queue_arguments={"x-overflow": "reject-publish"})
    changed = dict(options, max_length=20)
    with pytest.raises(amqp.exceptions.PreconditionFailed) as refused:
        _queue(conn.channel(), name, **changed, queue_arguments={"x-overflow": "reject-publish"})
    assert "inequivalent arg 'x-max-length'" in str(refused.value)


def test_an_invalid_kombu_option_is_refused_with_406(conn, names):
    name = names("bad")
    with pytest.raises(amqp.exceptions.PreconditionFailed) as refused:
        _queue(conn.channel(), name, max_priority=300)
    assert refused.value.reply_code == 406
    assert f"invalid arg 'x-max-priority' for queue '{name}'" in str(refused.value)


# --- priorities --------------------------------------------------------------------


def test_a_simple_queue_with_max_priority_delivers_the_highest_first(conn, names):
    name = names("priority")
    with SimpleQueue(
        conn.channel(),
        name,
        queue_opts={"max_priority": 10, "durable": False},
        exchange_opts={"durable": False},
    ) as simple:
        for body, priority in (("low", 1), ("none", None), ("top", 10), ("mid", 5), ("above", 200)):
            simple.put(body, priority=priority)
        wait_until(lambda: simple.qsize() == 5, message="all five messages queued")

        order = []
        for _ in range(5):
            message = simple.get(timeout=RECEIVE_TIMEOUT)
            order.append((message.payload, message.properties.get("priority")))
            message.ack()

    assert order == [("top", 10), ("above", 200), ("mid", 5), ("low", 1), ("none", None)]


# --- message TTL -------------------------------------------------------------------


def test_a_queue_message_ttl_from_kombu_expires_messages(conn, channel, names):
    queue = _queue(channel, names("ttl"), message_ttl=0.2)
    _publish(channel, queue, "stale")

    wait_until(lambda: _count(conn, queue) == 0, message="the message expired")
    assert queue.get(no_ack=True) is None


def test_a_per_message_expiration_from_kombu_wins_when_shorter(conn, channel, names):
    queue = _queue(channel, names("ttl"), message_ttl=60)
    _publish(channel, queue, "short", expiration=0.15)
    _publish(channel, queue, "long")

    wait_until(lambda: _count(conn, queue) == 1, message="the short-lived message expired")
    assert [m.payload for m in _drain(queue)] == ["long"]


# --- dead-lettering ----------------------------------------------------------------


def test_a_rejected_message_is_dead_lettered_with_x_death(conn, channel, names):
    dlx, dead = _dead_letters(channel, names)
    queue = _queue(
        channel,
        names("work"),
        queue_arguments={"x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"},
    )
    _publish(channel, queue, "bad job", headers={"job": "j-1"})

    [job] = _consume(conn, queue, 1)
    assert job.headers["job"] == "j-1"
    job.reject(requeue=False)

    letter = _wait_for_one(dead)
    assert letter.payload == "bad job"
    assert letter.delivery_info["routing_key"] == "dead"
    assert letter.delivery_info["exchange"] == dlx.name
    assert letter.headers["job"] == "j-1"
    [death] = letter.headers["x-death"]
    assert death["reason"] == "rejected"
    assert death["queue"] == queue.name
    assert death["count"] == 1
    assert death["exchange"] == ""
    assert death["routing-keys"] == [queue.name]
    assert isinstance(death["time"], datetime.datetime)
    assert letter.headers["x-first-death-reason"] == "rejected"
    assert letter.headers["x-first-death-queue"] == queue.name


def test_an_expired_message_is_dead_lettered_with_its_original_expiration(channel, names):
    dlx, dead = _dead_letters(channel, names)
    queue = _queue(
        channel,
        names("work"),
        message_ttl=60,
        queue_arguments={"x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"},
    )
    _publish(channel, queue, "too late", expiration=0.1)

    letter = _wait_for_one(dead)
    assert letter.payload == "too late"
    assert "expiration" not in letter.properties
    [death] = letter.headers["x-death"]
    assert death["reason"] == "expired"
    assert death["queue"] == queue.name
    assert death["original-expiration"] == "100"


# --- length limits -----------------------------------------------------------------


def test_max_length_drops_the_oldest_into_the_dead_letter_exchange(conn, channel, names):
    dlx, dead = _dead_letters(channel, names)
    queue = _queue(
        channel,
        names("work"),
        max_length=2,
        queue_arguments={"x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"},
    )
    _publish(channel, queue, "1", "2", "3", "4")

    wait_until(lambda: _count(conn, dead) == 2, message="two messages dead-lettered")
    assert [m.payload for m in _drain(queue)] == ["3", "4"]
    letters = _drain(dead)
    assert [m.payload for m in letters] == ["1", "2"]
    assert {m.headers["x-death"][0]["reason"] for m in letters} == {"maxlen"}


def test_a_full_reject_publish_queue_nacks_a_confirming_kombu_publisher(open_connection, names):
    confirming = open_connection(transport_options={"confirm_publish": True})
    channel = confirming.channel()
    queue = _queue(
        channel, names("full"), max_length=1, queue_arguments={"x-overflow": "reject-publish"}
    )
    _publish(channel, queue, "fits")

    with pytest.raises(amqp.exceptions.MessageNacked):
        _publish(channel, queue, "refused")

    assert [m.payload for m in _drain(queue)] == ["fits"]


# --- queue expiry ------------------------------------------------------------------


def test_a_queue_declared_with_expires_is_deleted_once_unused(open_connection, names):
    confirming = open_connection(transport_options={"confirm_publish": True})
    channel = confirming.channel()
    queue = _queue(channel, names("expiring"), expires=0.3)
    # Watched by publishing to it, which is no use of the queue: a passive declaration (or a
    # basic.get) would renew its lease, as in RabbitMQ, and keep it alive.
    returned: list[str] = []
    producer = kombu.Producer(
        channel, on_return=lambda error, exchange, key, message: returned.append(key)
    )

    def gone() -> bool:
        producer.publish("still there?", exchange="", routing_key=queue.name, mandatory=True)
        return bool(returned)

    assert not gone(), "the queue was gone at once"
    wait_until(gone, interval=0.1, message="the queue expired")
    assert returned[0] == queue.name


# --- alternate exchange ------------------------------------------------------------


def test_an_unroutable_kombu_publish_goes_to_the_alternate_exchange(channel, names):
    alternate = kombu.Exchange(names("alternate"), type="fanout", durable=False)(channel)
    alternate.declare()
    caught = kombu.Queue(names("unrouted"), exchange=alternate, durable=False)(channel)
    caught.declare()
    main = kombu.Exchange(
        names("main"),
        type="direct",
        durable=False,
        arguments={"alternate-exchange": alternate.name},
    )(channel)
    main.declare()

    kombu.Producer(channel, exchange=main).publish("lost?", routing_key="nowhere", mandatory=True)

    letter = _wait_for_one(caught)
    assert letter.payload == "lost?"
    assert letter.delivery_info["exchange"] == main.name
    assert letter.delivery_info["routing_key"] == "nowhere"
