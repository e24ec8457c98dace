"""AMQP 0-9-1 behaviour that pika applications rely on, beyond the tutorials.

Publisher confirms and returns, basic.get, purge, reject/nack, transactions,
the errors that close a channel (and only the channel), message properties
and large bodies.
"""

import os
from datetime import datetime, timezone
from decimal import Decimal

import pika
import pika.exceptions
import pytest

from messages import receive, send_sentinel, until_sentinel, wait_until


def _persistent(**properties) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, **properties)


def _channel_error(call, *args, **kwargs) -> pika.exceptions.ChannelClosedByBroker:
    """Runs ``call``, which must make the broker close the channel; returns that error."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
        call(*args, **kwargs)
    return caught.value


# --- publisher confirms and returns -------------------------------------------------


def test_with_confirms_an_unroutable_mandatory_message_raises_unroutable_error(channel, names):
    channel.confirm_delivery()

    with pytest.raises(pika.exceptions.UnroutableError) as caught:
        channel.basic_publish(
            exchange="", routing_key=names("nowhere"), body=b"lost", mandatory=True
        )

    [returned] = caught.value.messages
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.body == b"lost"
    assert channel.is_open


def test_with_confirms_routable_and_non_mandatory_messages_are_acked(channel, names):
    queue = names("confirmed")
    channel.queue_declare(queue)
    channel.confirm_delivery()

    # basic_publish returns only once the broker acked; a nack would raise NackError.
    channel.basic_publish(exchange="", routing_key=queue, body=b"one", mandatory=True)
    channel.basic_publish(exchange="", routing_key=queue, body=b"two", properties=_persistent())
    # Unroutable but not mandatory: dropped, and still acked.
    channel.basic_publish(exchange="", routing_key=names("nowhere"), body=b"dropped")

    assert channel.queue_declare(queue, passive=True).method.message_count == 2


def test_without_confirms_an_unroutable_mandatory_message_comes_back_as_basic_return(
    connection, names
):
    channel = connection.channel()
    returned = []
    channel.add_on_return_callback(
        lambda _ch, method, _props, body: returned.append((method, body))
    )

    channel.basic_publish(
        exchange="amq.direct", routing_key=names("unbound"), body=b"bounce", mandatory=True
    )

    def a_return_arrived() -> bool:
        connection.process_data_events(time_limit=0.05)
        return bool(returned)

    wait_until(a_return_arrived, timeout=10, message="basic.return")
    [(method, body)] = returned
    assert (method.reply_code, method.exchange, body) == (312, "amq.direct", b"bounce")


# --- basic.get and purge ------------------------------------------------------------


def test_basic_get_takes_one_message_and_reports_how_many_remain(channel, names):
    queue = names("get")
    channel.queue_declare(queue)
    assert channel.basic_get(queue) == (None, None, None), "an empty queue answers get-empty"

    for body in [b"first", b"second"]:
        channel.basic_publish(exchange="", routing_key=queue, body=body)

    method, _properties, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.message_count, method.redelivered) == (b"first", 1, False)
    method, _properties, body = channel.basic_get(queue, auto_ack=False)
    assert (body, method.message_count) == (b"second", 0)
    channel.basic_ack(method.delivery_tag)
    assert channel.basic_get(queue) == (None, None, None)


def test_queue_purge_answers_with_the_number_of_messages_removed(channel, names):
    queue = names("purge")
    channel.queue_declare(queue)
    for i in range(3):
        channel.basic_publish(exchange="", routing_key=queue, body=f"{i}".encode())

    assert channel.queue_purge(queue).method.message_count == 3
    assert channel.basic_get(queue) == (None, None, None)
    assert channel.queue_purge(queue).method.message_count == 0


def test_queue_delete_answers_with_the_number_of_messages_deleted(channel, names):
    queue = names("delete")
    channel.queue_declare(queue)
    for i in range(2):
        channel.basic_publish(exchange="", routing_key=queue, body=f"{i}".encode())

    assert channel.queue_delete(queue).method.message_count == 2
    assert _channel_error(channel.queue_declare, queue, passive=True).reply_code == 404


# --- reject, nack and redelivery ----------------------------------------------------


def test_a_message_rejected_with_requeue_comes_back_redelivered(channel, names):
    queue = names("reject")
    channel.queue_declare(queue)
    channel.basic_publish(exchange="", routing_key=queue, body=b"try again")

    [first] = receive(channel, queue, 1, auto_ack=False)
    assert not first.redelivered
    channel.basic_reject(first.delivery_tag, requeue=True)

    [again] = receive(channel, queue, 1, auto_ack=False)
    assert (again.body, again.redelivered) == (b"try again", True)
    channel.basic_ack(again.delivery_tag)


def test_a_message_rejected_without_requeue_is_dropped(channel, names):
    queue = names("reject")
    channel.queue_declare(queue)
    channel.basic_publish(exchange="", routing_key=queue, body=b"bad")

    [delivery] = receive(channel, queue, 1, auto_ack=False)
    channel.basic_reject(delivery.delivery_tag, requeue=False)

    assert channel.basic_get(queue) == (None, None, None)


def test_nack_multiple_requeues_every_unacked_message_up_to_the_tag(channel, names):
    queue = names("nack")
    channel.queue_declare(queue)
    bodies = [b"a", b"b", b"c"]
    for body in bodies:
        channel.basic_publish(exchange="", routing_key=queue, body=body)

    first_round = receive(channel, queue, 3, auto_ack=False)
    channel.basic_nack(first_round[-1].delivery_tag, multiple=True, requeue=True)

    second_round = receive(channel, queue, 3, auto_ack=False)
    assert [d.body for d in second_round] == bodies, "requeued messages keep their order"
    assert all(d.redelivered for d in second_round)

    channel.basic_ack(second_round[-1].delivery_tag, multiple=True)
    assert channel.basic_get(queue) == (None, None, None)


def test_nack_multiple_without_requeue_drops_them_all(channel, names):
    queue = names("nack")
    channel.queue_declare(queue)
    for body in [b"x", b"y"]:
        channel.basic_publish(exchange="", routing_key=queue, body=body)

    deliveries = receive(channel, queue, 2, auto_ack=False)
    channel.basic_nack(deliveries[-1].delivery_tag, multiple=True, requeue=False)

    assert channel.basic_get(queue) == (None, None, None)


def test_unacked_messages_return_to_the_queue_when_their_channel_closes(connection, names):
    queue = names("unacked")
    consumer = connection.channel()
    consumer.queue_declare(queue)
    consumer.basic_publish(exchange="", routing_key=queue, body=b"held")
    receive(consumer, queue, 1, auto_ack=False)

    consumer.close()

    observer = connection.channel()
    [again] = receive(observer, queue, 1)
    assert (again.body, again.redelivered) == (b"held", True)


# --- transactions -------------------------------------------------------------------


def test_a_rolled_back_publish_is_never_delivered_and_a_committed_one_is(connect, names):
    queue = names("tx")
    publisher = connect().channel()
    observer = connect().channel()
    publisher.queue_declare(queue)
    publisher.tx_select()

    publisher.basic_publish(exchange="", routing_key=queue, body=b"rolled back")
    publisher.tx_rollback()
    publisher.basic_publish(exchange="", routing_key=queue, body=b"committed")
    assert observer.basic_get(queue) == (None, None, None), "nothing is visible before commit"

    publisher.tx_commit()

    method, _properties, body = observer.basic_get(queue, auto_ack=True)
    assert body == b"committed", "commit-ok means the message is in the queue"
    assert observer.basic_get(queue) == (None, None, None)


def test_acks_in_a_rolled_back_transaction_are_undone(channel, names):
    queue = names("tx")
    channel.queue_declare(queue)
    channel.basic_publish(exchange="", routing_key=queue, body=b"acked then rolled back")
    channel.tx_select()
    [delivery] = receive(channel, queue, 1, auto_ack=False)

    channel.basic_ack(delivery.delivery_tag)
    channel.tx_rollback()
    # The ack was discarded: the message is still unacked on this channel,
    # and acking it again in a committed transaction settles it.
    channel.basic_ack(delivery.delivery_tag)
    channel.tx_commit()

    assert channel.basic_get(queue) == (None, None, None)
    assert channel.is_open


# --- errors close the channel, not the connection ----------------------------------


def test_passive_declare_of_a_missing_queue_closes_the_channel_with_404(connection, names):
    channel = connection.channel()

    error = _channel_error(channel.queue_declare, names("missing"), passive=True)

    assert error.reply_code == 404
    assert error.reply_text.startswith("NOT_FOUND"), error.reply_text
    assert channel.is_closed
    assert connection.is_open
    connection.channel().queue_declare(names("after"))  # the connection is still usable


def test_redeclaring_a_queue_with_other_durability_fails_with_406(connection, names):
    queue = names("durable")
    connection.channel().queue_declare(queue, durable=False)

    error = _channel_error(connection.channel().queue_declare, queue, durable=True)

    assert error.reply_code == 406
    assert error.reply_text.startswith("PRECONDITION_FAILED"), error.reply_text
    assert connection.is_open


def test_redeclaring_an_exchange_with_another_type_fails_with_406(connection, names):
    exchange = names("x")
    connection.channel().exchange_declare(exchange, exchange_type="direct")

    error = _channel_error(connection.channel().exchange_declare, exchange, exchange_type="fanout")

    assert error.reply_code == 406


def test_declaring_an_exchange_in_the_reserved_amq_namespace_fails_with_403(channel):
    error = _channel_error(channel.exchange_declare, "amq.foo", exchange_type="direct")

    assert error.reply_code == 403
    assert error.reply_text.startswith("ACCESS_REFUSED"), error.reply_text


@pytest.mark.parametrize(
    "exchange, exchange_type",
    [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ],
)
def test_the_standard_exchanges_exist(channel, exchange, exchange_type):
    channel.exchange_declare(exchange, passive=True)
    # Declaring them again with the same type is allowed, like any redeclare.
    channel.exchange_declare(exchange, exchange_type=exchange_type, durable=True)


def test_publishing_to_a_missing_exchange_closes_the_channel_with_404(connection, names):
    channel = connection.channel()
    channel.basic_publish(exchange=names("missing"), routing_key="k", body=b"?")

    # The error is asynchronous; the next synchronous call sees the channel closed.
    error = _channel_error(channel.queue_declare, names("q"))

    assert error.reply_code == 404
    assert connection.is_open


# --- message contents ---------------------------------------------------------------


def test_every_basic_property_and_header_type_survives_the_trip(channel, names):
    queue = names("props")
    channel.queue_declare(queue)
    headers = {
        "text": "héllo",
        "int": 42,
        "negative": -7,
        "long": 2**40,
        "bool": True,
        "none": None,
        "bytes": b"\x00\x01\xff",
        "decimal": Decimal("3.14"),
        "timestamp": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "list": [1, "two", False, ["nested"]],
        "table": {"a": {"b": "c"}, "n": 1},
    }
    sent = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="replies",
        expiration="60000",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="greeting",
        user_id="guest",  # must be the connection's user, or the broker refuses it
        app_id="interop-tests",
    )
    channel.basic_publish(exchange="", routing_key=queue, body=b"{}", properties=sent)

    [delivery] = receive(channel, queue, 1)
    got = delivery.properties
    for name in [
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ]:
        assert getattr(got, name) == getattr(sent, name), name
    assert got.headers == headers


def test_publishing_with_another_user_id_closes_the_channel_with_406(connection, names):
    channel = connection.channel()
    queue = names("q")
    channel.queue_declare(queue)
    channel.basic_publish(
        exchange="",
        routing_key=queue,
        body=b"forged",
        properties=pika.BasicProperties(user_id="someone-else"),
    )

    error = _channel_error(channel.queue_declare, queue, passive=True)

    assert error.reply_code == 406


@pytest.mark.parametrize("size", [0, 1, 131_064, 131_072, 131_073, 1_000_003])
def test_bodies_of_any_size_arrive_intact(channel, names, size):
    """Sizes around the usual frame_max (131072) split the body across content frames."""
    queue = names("body")
    channel.queue_declare(queue)
    body = os.urandom(size)
    channel.basic_publish(exchange="", routing_key=queue, body=body)

    [delivery] = receive(channel, queue, 1)

    assert len(delivery.body) == size
    assert delivery.body == body


# --- a headers exchange -------------------------------------------------------------


def test_a_headers_exchange_matches_all_or_any_of_the_bound_headers(channel, names):
    exchange = names("headers")
    channel.exchange_declare(exchange, exchange_type="headers")
    match_all = channel.queue_declare("", exclusive=True).method.queue
    match_any = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(
        match_all, exchange, arguments={"x-match": "all", "format": "pdf", "type": "report"}
    )
    channel.queue_bind(
        match_any, exchange, arguments={"x-match": "any", "format": "pdf", "type": "report"}
    )

    for name, headers in [
        ("both", {"format": "pdf", "type": "report"}),
        ("format only", {"format": "pdf"}),
        ("type only", {"type": "report", "extra": 1}),
        ("wrong value", {"format": "zip", "type": "log"}),
        ("none", {}),
    ]:
        channel.basic_publish(
            exchange=exchange,
            routing_key="",
            body=name.encode(),
            properties=pika.BasicProperties(headers=headers),
        )
    send_sentinel(channel, match_all, match_any)

    assert until_sentinel(channel, match_all) == [b"both"]
    assert until_sentinel(channel, match_any) == [b"both", b"format only", b"type only"]
