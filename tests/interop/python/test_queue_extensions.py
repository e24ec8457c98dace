"""RabbitMQ's queue and exchange extensions, with pika: message TTL, queue expiry, length
limits and overflow, dead-lettering with ``x-death``, alternate exchanges, priority queues,
single active consumer, consumer priorities, ``x-queue-type`` and argument validation.

Waits are bounded polls or consumers with deadlines; TTLs are short (a few hundred ms) and
the tests wait for their effect, never for a fixed time.
"""

import time

import pika
import pika.exceptions
import pytest

from messages import Consumer, receive, wait_until


def _count(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def _exists(connect, queue: str) -> bool:
    """Whether ``queue`` exists, asked with queue.purge: a declaration, even a passive one,
    counts as use and would keep an ``x-expires`` queue alive (as in RabbitMQ)."""
    channel = connect().channel()
    try:
        channel.queue_purge(queue)
        return True
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404
        return False


def _refused(call, *args, **kwargs) -> pika.exceptions.ChannelClosedByBroker:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
        call(*args, **kwargs)
    return caught.value


def _dead_letter_queue(channel, names) -> tuple[str, str]:
    """A direct exchange and a queue bound to it for every key used here."""
    exchange, queue = names("dlx"), names("dead")
    channel.exchange_declare(exchange, "direct")
    channel.queue_declare(queue)
    for key in ("work", "retry", "dead"):
        channel.queue_bind(queue, exchange, routing_key=key)
    return exchange, queue


def _death(delivery) -> dict:
    deaths = delivery.properties.headers["x-death"]
    assert isinstance(deaths, list) and deaths
    return deaths[0]


# --- message TTL -------------------------------------------------------------------


def test_messages_older_than_the_queue_ttl_are_never_delivered(channel, names):
    queue = names("ttl")
    channel.queue_declare(queue, arguments={"x-message-ttl": 200})
    channel.basic_publish("", queue, b"stale")

    wait_until(lambda: _count(channel, queue) == 0, message="the message expired")
    method, _, _ = channel.basic_get(queue, auto_ack=True)
    assert method is None


def test_a_message_expiration_shorter_than_the_queue_ttl_wins(channel, names):
    queue = names("ttl")
    channel.queue_declare(queue, arguments={"x-message-ttl": 60_000})
    channel.basic_publish("", queue, b"short", pika.BasicProperties(expiration="150"))
    channel.basic_publish("", queue, b"long")

    wait_until(lambda: _count(channel, queue) == 1, message="the short-lived message expired")
    [left] = receive(channel, queue, 1)
    assert left.body == b"long"


def test_a_ttl_of_zero_still_reaches_a_waiting_consumer(connect, names):
    queue = names("ttl0")
    publisher = connect().channel()
    publisher.queue_declare(queue, arguments={"x-message-ttl": 0})
    consumer = Consumer(connect().channel(), queue, auto_ack=True)

    publisher.basic_publish("", queue, b"now or never")

    assert consumer.expect().body == b"now or never"


def test_expired_messages_are_dead_lettered_with_x_death(channel, names):
    dlx, dead = _dead_letter_queue(channel, names)
    queue = names("work")
    channel.queue_declare(
        queue,
        arguments={
            "x-message-ttl": 100,
            "x-dead-letter-exchange": dlx,
            "x-dead-letter-routing-key": "dead",
        },
    )
    channel.basic_publish(
        "", queue, b"too late", pika.BasicProperties(expiration="50", headers={"k": "v"})
    )

    [letter] = receive(channel, dead, 1)
    assert letter.body == b"too late"
    assert letter.method.routing_key == "dead"
    assert letter.properties.expiration is None
    assert letter.properties.headers["k"] == "v"
    death = _death(letter)
    assert death["reason"] == "expired"
    assert death["queue"] == queue
    assert death["exchange"] == ""
    assert death["routing-keys"] == [queue]
    assert death["count"] == 1
    assert death["original-expiration"] == "50"
    assert letter.properties.headers["x-first-death-reason"] == "expired"
    assert letter.properties.headers["x-first-death-queue"] == queue


# --- dead-lettering on reject ------------------------------------------------------


def test_a_nack_without_requeue_dead_letters_and_counts_each_death(channel, names):
    dlx, dead = _dead_letter_queue(channel, names)
    queue = names("work")
    channel.queue_declare(queue, arguments={"x-dead-letter-exchange": dlx})
    channel.queue_bind(queue, dlx, routing_key="retry")
    # The dead-letter queue sends retries back to the work queue.
    channel.queue_unbind(dead, dlx, routing_key="retry")
    channel.basic_publish(dlx, "retry", b"job")

    [first] = receive(channel, queue, 1, auto_ack=False)
    channel.basic_nack(first.delivery_tag, requeue=False)
    # Dead-lettered with its own key "retry" back into the work queue.
    [second] = receive(channel, queue, 1, auto_ack=False)
    assert _death(second)["count"] == 1
    assert _death(second)["reason"] == "rejected"
    channel.basic_reject(second.delivery_tag, requeue=False)
    [third] = receive(channel, queue, 1, auto_ack=False)
    assert _death(third)["count"] == 2
    assert len(third.properties.headers["x-death"]) == 1
    channel.basic_ack(third.delivery_tag)


def test_a_requeued_rejection_is_not_dead_lettered(channel, names):
    dlx, dead = _dead_letter_queue(channel, names)
    queue = names("work")
    channel.queue_declare(queue, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish("", queue, b"again")

    [delivery] = receive(channel, queue, 1, auto_ack=False)
    channel.basic_nack(delivery.delivery_tag, requeue=True)

    [again] = receive(channel, queue, 1)
    assert again.redelivered
    assert _count(channel, dead) == 0


# --- queue expiry ------------------------------------------------------------------


def test_an_unused_queue_is_deleted_after_x_expires(connect, channel, names):
    queue = names("expiring")
    channel.queue_declare(queue, arguments={"x-expires": 300})
    wait_until(lambda: not _exists(connect, queue), message="the queue expired")


def test_a_queue_with_a_consumer_does_not_expire(connect, names):
    queue = names("kept")
    channel = connect().channel()
    channel.queue_declare(queue, arguments={"x-expires": 200})
    consumer = Consumer(channel, queue, auto_ack=True)

    time.sleep(0.6)  # three expiry intervals with a consumer: it must survive them
    assert _exists(connect, queue)
    consumer.cancel()
    wait_until(lambda: not _exists(connect, queue), message="the queue expired once unused")


# --- length limits -----------------------------------------------------------------


def test_drop_head_keeps_the_newest_and_dead_letters_the_oldest(channel, names):
    dlx, dead = _dead_letter_queue(channel, names)
    queue = names("work")
    channel.queue_declare(
        queue,
        arguments={"x-max-length": 2, "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"},
    )
    for body in (b"1", b"2", b"3", b"4"):
        channel.basic_publish("", queue, body)

    assert [d.body for d in receive(channel, queue, 2)] == [b"3", b"4"]
    letters = receive(channel, dead, 2)
    assert [d.body for d in letters] == [b"1", b"2"]
    assert _death(letters[0])["reason"] == "maxlen"


def test_max_length_bytes_counts_bodies(channel, names):
    queue = names("bytes")
    channel.queue_declare(queue, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaaa", b"bbbbb", b"ccccc"):
        channel.basic_publish("", queue, body)

    assert [d.body for d in receive(channel, queue, 2)] == [b"bbbbb", b"ccccc"]


def test_reject_publish_nacks_confirming_publishers_once_full(channel, names):
    queue = names("full")
    channel.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"fits")

    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", queue, b"refused")

    assert [d.body for d in receive(channel, queue, 1)] == [b"fits"]
    channel.basic_publish("", queue, b"room again")
    assert _count(channel, queue) == 1


def test_reject_publish_dlx_dead_letters_what_it_refuses(channel, names):
    dlx, dead = _dead_letter_queue(channel, names)
    queue = names("work")
    channel.queue_declare(
        queue,
        arguments={
            "x-max-length": 1,
            "x-overflow": "reject-publish-dlx",
            "x-dead-letter-exchange": dlx,
            "x-dead-letter-routing-key": "dead",
        },
    )
    channel.basic_publish("", queue, b"kept")
    channel.basic_publish("", queue, b"refused")

    [letter] = receive(channel, dead, 1)
    assert letter.body == b"refused"
    assert _death(letter)["reason"] == "maxlen"
    assert [d.body for d in receive(channel, queue, 1)] == [b"kept"]


# --- alternate exchanges -----------------------------------------------------------


def test_unroutable_messages_go_to_the_alternate_exchange(channel, names):
    main, alternate, catch_all = names("main"), names("alternate"), names("unrouted")
    channel.exchange_declare(alternate, "fanout")
    channel.queue_declare(catch_all)
    channel.queue_bind(catch_all, alternate)
    channel.exchange_declare(main, "direct", arguments={"alternate-exchange": alternate})
    routed = names("routed")
    channel.queue_declare(routed)
    channel.queue_bind(routed, main, routing_key="known")
    channel.confirm_delivery()

    channel.basic_publish(main, "known", b"routed", mandatory=True)
    # Mandatory and unroutable through `main`, yet no return: the alternate took it.
    channel.basic_publish(main, "unknown", b"caught", mandatory=True)

    assert [d.body for d in receive(channel, routed, 1)] == [b"routed"]
    [caught] = receive(channel, catch_all, 1)
    assert caught.body == b"caught"
    assert caught.method.exchange == main
    assert caught.method.routing_key == "unknown"


# --- priorities --------------------------------------------------------------------


def test_a_priority_queue_delivers_higher_priorities_first(channel, names):
    queue = names("priority")
    channel.queue_declare(queue, arguments={"x-max-priority": 5})
    for body, priority in ((b"low", 1), (b"none", None), (b"high", 5), (b"above max", 9), (b"mid", 3)):
        channel.basic_publish("", queue, body, pika.BasicProperties(priority=priority))

    order = [d.body for d in receive(channel, queue, 5)]
    assert order == [b"high", b"above max", b"mid", b"low", b"none"]


def test_consumers_of_higher_priority_are_served_first(connect, names):
    queue = names("work")
    publisher = connect().channel()
    publisher.queue_declare(queue)
    low = connect().channel()
    low.basic_qos(prefetch_count=10)
    high = connect().channel()
    high.basic_qos(prefetch_count=2)
    low_got, high_got = [], []
    low.basic_consume(queue, lambda ch, m, p, b: low_got.append(b), auto_ack=False)
    high.basic_consume(
        queue, lambda ch, m, p, b: high_got.append(b), auto_ack=False, arguments={"x-priority": 10}
    )

    for i in range(5):
        publisher.basic_publish("", queue, f"m{i}".encode())

    deadline = time.monotonic() + 10
    while len(low_got) + len(high_got) < 5 and time.monotonic() < deadline:
        low.connection.process_data_events(time_limit=0.05)
        high.connection.process_data_events(time_limit=0.05)
    # The high-priority consumer takes what its prefetch allows, the rest overflows.
    assert high_got == [b"m0", b"m1"]
    assert low_got == [b"m2", b"m3", b"m4"]


def test_a_single_active_consumer_takes_everything_until_it_goes(connect, names):
    queue = names("sac")
    publisher = connect().channel()
    publisher.queue_declare(queue, arguments={"x-single-active-consumer": True})
    first = Consumer(connect().channel(), queue, auto_ack=True)
    second = Consumer(connect().channel(), queue, auto_ack=True)

    for body in (b"a", b"b", b"c"):
        publisher.basic_publish("", queue, body)
    assert [first.expect().body for _ in range(3)] == [b"a", b"b", b"c"]
    assert second.next(timeout=0.3) is None

    first.channel.connection.close()
    publisher.basic_publish("", queue, b"d")
    assert second.expect().body == b"d"


# --- x-queue-type and argument checks ----------------------------------------------


def test_classic_queues_are_accepted_and_unknown_types_refused(channel, connection, names):
    # Quorum queues and stream refusals have their own tests (test_quorum_queues.py).
    channel.queue_declare(names("classic"), arguments={"x-queue-type": "classic"})
    for kind in ("lazy", "bogus"):
        error = _refused(
            connection.channel().queue_declare,
            names(kind),
            durable=True,
            arguments={"x-queue-type": kind},
        )
        assert error.reply_code == 406
        assert f"\"unsupported queue type '{kind}'\"" in error.reply_text


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"x-message-ttl": -1}, "invalid arg 'x-message-ttl'"),
        ({"x-message-ttl": "soon"}, "{unacceptable_type,longstr}"),
        ({"x-expires": 0}, "{value_zero,0}"),
        ({"x-max-length": -5}, "{value_negative,-5}"),
        ({"x-overflow": "explode"}, "invalid arg 'x-overflow'"),
        ({"x-dead-letter-routing-key": "k"}, "invalid arg 'x-dead-letter-routing-key'"),
        ({"x-max-priority": 300}, "invalid arg 'x-max-priority'"),
    ],
)
def test_bad_argument_values_are_refused_with_406(connection, names, arguments, expected):
    queue = names("bad")
    error = _refused(connection.channel().queue_declare, queue, arguments=arguments)
    assert error.reply_code == 406
    assert expected in error.reply_text
    assert f"for queue '{queue}'" in error.reply_text


# --- direct reply-to ---------------------------------------------------------------


def test_direct_reply_to_answers_without_a_reply_queue(connect, names):
    server_queue = names("rpc")
    server = connect().channel()
    server.queue_declare(server_queue)
    client = connect().channel()
    replies = []
    client.basic_consume(
        "amq.rabbitmq.reply-to", lambda ch, m, p, b: replies.append((p.correlation_id, b)), auto_ack=True
    )
    client.basic_publish(
        "",
        server_queue,
        b"ping",
        pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c-1"),
    )

    [request] = receive(server, server_queue, 1)
    assert request.properties.reply_to.startswith("amq.rabbitmq.reply-to.")
    server.basic_publish(
        "",
        request.properties.reply_to,
        b"pong",
        pika.BasicProperties(correlation_id=request.properties.correlation_id),
    )
    deadline = time.monotonic() + 10
    while not replies and time.monotonic() < deadline:
        client.connection.process_data_events(time_limit=0.05)
    assert replies == [("c-1", b"pong")]


# --- edge cases RabbitMQ defines -----------------------------------------------------


def test_a_zero_length_queue_still_hands_messages_to_a_waiting_consumer(connect, names):
    queue = names("zero")
    publisher = connect().channel()
    publisher.queue_declare(queue, arguments={"x-max-length": 0})
    consumer = Consumer(connect().channel(), queue, auto_ack=True)

    for body in (b"a", b"b", b"c"):
        publisher.basic_publish("", queue, body)

    assert [consumer.expect().body for _ in range(3)] == [b"a", b"b", b"c"]


def test_reject_publish_refuses_a_message_that_would_pass_the_byte_limit(channel, names):
    queue = names("bytes")
    channel.queue_declare(
        queue, arguments={"x-max-length-bytes": 10, "x-overflow": "reject-publish"}
    )
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"123456789")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", queue, b"123456789")
    channel.basic_publish("", queue, b"1")
    assert _count(channel, queue) == 2


def test_each_exchange_reached_uses_its_own_alternate(channel, names):
    front, inner, alternate = names("front"), names("inner"), names("alternate")
    caught = names("caught")
    channel.exchange_declare(alternate, "fanout")
    channel.queue_declare(caught)
    channel.queue_bind(caught, alternate)
    channel.exchange_declare(inner, "direct", arguments={"alternate-exchange": alternate})
    channel.exchange_declare(front, "fanout")
    channel.exchange_bind(destination=inner, source=front)

    # front routes it to inner, which routes it nowhere: inner's alternate takes it.
    channel.basic_publish(front, "unknown", b"via inner")

    [delivery] = receive(channel, caught, 1)
    assert delivery.body == b"via inner"


def test_a_higher_priority_consumer_does_not_take_over_the_active_one(connect, names):
    queue = names("sac")
    publisher = connect().channel()
    publisher.queue_declare(queue, arguments={"x-single-active-consumer": True})
    active = Consumer(connect().channel(), queue, auto_ack=True)
    newcomer_channel = connect().channel()
    newcomer = []
    newcomer_channel.basic_consume(
        queue, lambda ch, m, p, b: newcomer.append(b), auto_ack=True, arguments={"x-priority": 10}
    )

    publisher.basic_publish("", queue, b"still mine")

    assert active.expect().body == b"still mine"
    newcomer_channel.connection.process_data_events(time_limit=0.2)
    assert newcomer == []
