"""Tutorial 4, "Routing": a direct exchange delivers by exact routing key.

Each test publishes every message, then a sentinel straight to each queue
(see messages.py), so "this queue got exactly these messages" is checked
without waiting for messages that should not come.
"""

from messages import send_sentinel, until_sentinel


def _queue_bound_to(channel, exchange: str, *binding_keys: str) -> str:
    queue = channel.queue_declare("", exclusive=True).method.queue
    for key in binding_keys:
        channel.queue_bind(queue, exchange, routing_key=key)
    return queue


def test_a_direct_exchange_delivers_only_the_keys_a_queue_is_bound_with(channel, names):
    exchange = names("direct_logs")
    channel.exchange_declare(exchange, exchange_type="direct")
    errors_only = _queue_bound_to(channel, exchange, "error")
    everything_but_debug = _queue_bound_to(channel, exchange, "info", "warning", "error")

    for severity in ["debug", "info", "warning", "error", "critical", "Error", "error.disk"]:
        channel.basic_publish(exchange=exchange, routing_key=severity, body=severity.encode())
    send_sentinel(channel, errors_only, everything_but_debug)

    assert until_sentinel(channel, errors_only) == [b"error"]
    assert until_sentinel(channel, everything_but_debug) == [b"info", b"warning", b"error"]


def test_queues_bound_with_the_same_key_each_get_a_copy(channel, names):
    exchange = names("direct_logs")
    channel.exchange_declare(exchange, exchange_type="direct")
    queues = [_queue_bound_to(channel, exchange, "black") for _ in range(2)]

    channel.basic_publish(exchange=exchange, routing_key="black", body=b"black")
    channel.basic_publish(exchange=exchange, routing_key="green", body=b"green")
    send_sentinel(channel, *queues)

    for queue in queues:
        assert until_sentinel(channel, queue) == [b"black"]


def test_binding_a_queue_twice_with_one_key_delivers_once_and_unbind_stops_delivery(channel, names):
    exchange = names("direct_logs")
    channel.exchange_declare(exchange, exchange_type="direct")
    queue = _queue_bound_to(channel, exchange, "orange", "orange")

    channel.basic_publish(exchange=exchange, routing_key="orange", body=b"bound")
    channel.queue_unbind(queue, exchange, routing_key="orange")
    channel.basic_publish(exchange=exchange, routing_key="orange", body=b"unbound")
    send_sentinel(channel, queue)

    assert until_sentinel(channel, queue) == [b"bound"]
