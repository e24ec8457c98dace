"""Quorum queues (``x-queue-type: quorum``) with pika, as a single RabbitMQ node has them:
durable only, never exclusive, auto-deleted or server-named; ``x-delivery-limit`` with the
``x-delivery-count`` header and dead-lettering of poison messages; every message kept on
disk, transient ones too; RabbitMQ's refusals for what quorum queues do not support (global
QoS, ``if-unused`` deletes, basic.get with a single active consumer, priorities).

Waits are consumers with deadlines, never fixed sleeps.
"""

import pika
import pika.exceptions
import pytest

from messages import Consumer, receive

QUORUM = {"x-queue-type": "quorum"}


def _refused(call, *args, **kwargs) -> pika.exceptions.ChannelClosedByBroker:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
        call(*args, **kwargs)
    return caught.value


def test_the_tutorials_quorum_work_queue_round_trips(channel, names):
    queue = names("task_queue")
    channel.queue_declare(queue, durable=True, arguments=QUORUM)
    # A redeclaration with the same arguments is accepted, as the tutorials' second run does.
    declared = channel.queue_declare(queue, durable=True, arguments=QUORUM)
    assert declared.method.message_count == 0
    channel.basic_publish(
        "", queue, b"Hello World!", pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    )
    (delivery,) = receive(channel, queue, 1, auto_ack=False)
    assert delivery.body == b"Hello World!"
    assert not delivery.redelivered
    assert "x-delivery-count" not in (delivery.properties.headers or {})
    channel.basic_ack(delivery.delivery_tag)


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        ({"durable": False}, "invalid property 'non-durable' for queue '{q}' in vhost '/'"),
        (
            {"durable": True, "exclusive": True},
            "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'",
        ),
        (
            {"durable": True, "auto_delete": True},
            "invalid property 'auto-delete' for queue '{q}' in vhost '/'",
        ),
    ],
)
def test_quorum_queues_are_durable_only(connection, names, flags, text):
    queue = names("qq")
    error = _refused(connection.channel().queue_declare, queue, arguments=QUORUM, **flags)
    assert error.reply_code == 406
    assert error.reply_text == "PRECONDITION_FAILED - " + text.format(q=queue)


def test_a_quorum_queue_cannot_be_server_named(connection):
    error = _refused(connection.channel().queue_declare, "", durable=True, arguments=QUORUM)
    assert error.reply_code == 406
    assert error.reply_text == (
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
    )


def test_arguments_of_other_queue_types_are_refused(connection, names):
    queue = names("qq")
    error = _refused(
        connection.channel().queue_declare,
        queue,
        durable=True,
        arguments={**QUORUM, "x-max-priority": 10},
    )
    assert error.reply_code == 406
    assert error.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{queue}' in vhost '/'"
        " of queue type rabbit_quorum_queue"
    )


def test_streams_are_refused_as_a_node_without_them_refuses_them(connect, names):
    """Streams are not built: the answer is a RabbitMQ node's whose stream feature flag is
    off (541, closing the connection), which clients and RabbitMQ's tests recognise."""
    stream = names("stream")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as caught:
        connect().channel().queue_declare(
            stream, durable=True, arguments={"x-queue-type": "stream"}
        )
    assert caught.value.reply_code == 541
    assert caught.value.reply_text == (
        f"INTERNAL_ERROR - Cannot declare a queue 'queue '{stream}' in vhost '/'' of type"
        " 'rabbit_stream_queue' on node 'junction': the corresponding feature flag is disabled"
    )


def test_a_classic_queue_is_not_redeclared_as_quorum(connection, names):
    queue = names("classic")
    connection.channel().queue_declare(queue, durable=True)
    error = _refused(connection.channel().queue_declare, queue, durable=True, arguments=QUORUM)
    assert error.reply_code == 406
    assert error.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{queue}' in vhost '/':"
        " received the value 'quorum' of type 'longstr' but current is none"
    )


def test_a_poison_message_is_dead_lettered_after_its_delivery_limit(connect, channel, names):
    queue, dead = names("poison"), names("poison.dead")
    channel.queue_declare(dead, durable=True)
    channel.queue_declare(
        queue,
        durable=True,
        arguments={
            **QUORUM,
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    channel.basic_publish("", queue, b"poison")
    consumer = Consumer(channel, queue)
    # The limit allows the first delivery and two returns: a nack, a channel close, a reject.
    first = consumer.expect()
    assert not first.redelivered
    assert "x-delivery-count" not in (first.properties.headers or {})
    channel.basic_nack(first.delivery_tag, requeue=True)
    second = consumer.expect()
    assert second.redelivered
    assert second.properties.headers["x-delivery-count"] == 1
    # A channel closing with the message unacknowledged returns it too, and that counts.
    channel.close()
    other = connect().channel()
    consumer = Consumer(other, queue)
    third = consumer.expect()
    assert third.properties.headers["x-delivery-count"] == 2
    other.basic_reject(third.delivery_tag, requeue=True)
    assert consumer.next(timeout=0.5) is None
    consumer.cancel()
    (died,) = receive(other, dead, 1)
    assert died.body == b"poison"
    death = died.properties.headers["x-death"][0]
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == queue
    assert other.queue_declare(queue, passive=True).method.message_count == 0


def test_basic_get_counts_returns_too(channel, names):
    queue = names("get")
    channel.queue_declare(queue, durable=True, arguments={**QUORUM, "x-delivery-limit": 0})
    channel.basic_publish("", queue, b"once")
    method, properties, body = channel.basic_get(queue)
    assert body == b"once"
    assert "x-delivery-count" not in (properties.headers or {})
    channel.basic_nack(method.delivery_tag, requeue=True)
    # A limit of 0 allows one delivery: the returned message is dropped (no dead-letter
    # exchange).
    assert channel.basic_get(queue) == (None, None, None)


def test_classic_queues_ignore_a_delivery_limit(channel, names):
    queue = names("classic")
    channel.queue_declare(queue, arguments={"x-delivery-limit": 0})
    channel.basic_publish("", queue, b"again")
    method, _, _ = channel.basic_get(queue)
    channel.basic_nack(method.delivery_tag, requeue=True)
    method, properties, body = channel.basic_get(queue)
    assert body == b"again" and method.redelivered
    assert "x-delivery-count" not in (properties.headers or {})


def test_consuming_with_global_qos_is_refused(connect, names):
    queue = names("qos")
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments=QUORUM)
    channel.basic_qos(prefetch_count=10, global_qos=True)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as caught:
        channel.basic_consume(queue, lambda *_: None)
        connection.process_data_events(time_limit=5)
    assert caught.value.reply_code == 540
    assert caught.value.reply_text == (
        f"NOT_IMPLEMENTED - queue '{queue}' in vhost '/' does not support global qos"
    )
    # Per-consumer prefetch (what Celery's worker_detect_quorum_queues switches to) is fine.
    channel = connect().channel()
    channel.basic_qos(prefetch_count=10)
    channel.basic_consume(queue, lambda *_: None)


def test_if_unused_deletes_and_gets_with_a_single_active_consumer_are_refused(connect, names):
    queue = names("qq")
    connection = connect()
    connection.channel().queue_declare(
        queue, durable=True, arguments={**QUORUM, "x-single-active-consumer": True}
    )
    error = _refused(connection.channel().basic_get, queue)
    assert error.reply_code == 405
    assert error.reply_text == (
        f"RESOURCE_LOCKED - cannot obtain access to locked queue '{queue}' in vhost '/'."
        " basic.get operations are not supported by quorum queues with single active consumer"
    )
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as caught:
        connection.channel().queue_delete(queue, if_unused=True)
    assert caught.value.reply_code == 540
    assert "queue.delete operations with if-unused flag set are not supported" in (
        caught.value.reply_text
    )
    connect().channel().queue_delete(queue)


def test_transient_messages_in_a_quorum_queue_survive_a_restart(start_broker, names):
    quorum, classic = names("kept"), names("lost")
    first = start_broker()
    connection = pika.BlockingConnection(first.pika_parameters())
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(quorum, durable=True, arguments=QUORUM)
    channel.queue_declare(classic, durable=True)
    transient = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient)
    channel.basic_publish("", quorum, b"transient, kept", transient)
    channel.basic_publish("", classic, b"transient, lost", transient)
    connection.close()
    first.stop()

    second = start_broker(data_dir=first.data_dir)
    channel = pika.BlockingConnection(second.pika_parameters()).channel()
    assert channel.queue_declare(classic, passive=True).method.message_count == 0
    (kept,) = receive(channel, quorum, 1)
    assert kept.body == b"transient, kept"
