"""Tutorial 3, "Publish/Subscribe": a fanout exchange and server-named exclusive queues."""

import pika.exceptions
import pytest

from messages import receive, wait_until


def _subscriber(connection, exchange: str):
    """A receive_logs.py-style subscriber: its own server-named exclusive queue, bound."""
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="fanout")
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange)
    return channel, queue


def _passive_declare_reply_code(connection, queue: str) -> int | None:
    """None if ``queue`` exists and may be used, else the channel-close reply code."""
    channel = connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        return error.reply_code
    channel.close()
    return None


def test_every_queue_bound_to_a_fanout_exchange_gets_every_message(connect, names):
    exchange = names("logs")
    subscribers = [_subscriber(connect(), exchange) for _ in range(3)]
    queues = [queue for _channel, queue in subscribers]
    assert len(set(queues)) == 3, f"server-named queues must be distinct: {queues}"
    for queue in queues:
        assert queue.startswith("amq.gen-"), (
            f"RabbitMQ names server-named queues amq.gen-...: {queue}"
        )

    publisher = connect().channel()
    lines = [b"info: one", b"warning: two", b"error: three"]
    for line in lines:
        # A fanout exchange ignores the routing key.
        publisher.basic_publish(exchange=exchange, routing_key=f"ignored-{line[:4]!r}", body=line)

    for channel, queue in subscribers:
        assert [d.body for d in receive(channel, queue, len(lines))] == lines


def test_an_exclusive_queue_is_locked_to_its_connection_and_dies_with_it(connect, names):
    owner = connect()
    _channel, queue = _subscriber(owner, names("logs"))
    other = connect()

    # RabbitMQ answers another connection's use of an exclusive queue with
    # 405 RESOURCE_LOCKED.
    assert _passive_declare_reply_code(other, queue) == 405

    owner.close()

    # The queue goes with its connection; poll, as the broker may finish the
    # deletion just after close-ok.
    answers = []

    def queue_is_gone() -> bool:
        answers.append(_passive_declare_reply_code(other, queue))
        return answers[-1] == 404

    wait_until(queue_is_gone, timeout=5, message=f"passive declare of {queue} answering 404")
    assert other.is_open, "a channel error must not close the connection"


def test_a_message_published_before_the_subscriber_binds_is_not_seen(connect, names):
    exchange = names("logs")
    publisher = connect().channel()
    publisher.exchange_declare(exchange, exchange_type="fanout")
    publisher.basic_publish(exchange=exchange, routing_key="", body=b"into the void")

    channel, queue = _subscriber(connect(), exchange)
    publisher.basic_publish(exchange=exchange, routing_key="", body=b"seen")

    assert [d.body for d in receive(channel, queue, 1)] == [b"seen"]
    method, _properties, _body = channel.basic_get(queue)
    assert method is None, "nothing but 'seen' may reach the queue"


@pytest.mark.parametrize("exchange_type", ["fanout", "direct", "topic"])
def test_publishing_to_an_exchange_with_no_bindings_drops_the_message_quietly(
    channel, names, exchange_type
):
    exchange = names(exchange_type)
    channel.exchange_declare(exchange, exchange_type=exchange_type)
    channel.basic_publish(exchange=exchange, routing_key="anything", body=b"dropped")
    # The channel is still usable: a round trip succeeds.
    channel.exchange_declare(exchange, exchange_type=exchange_type, passive=True)
    assert channel.is_open
