"""Tutorial 6, "RPC": requests carry ``reply_to`` and ``correlation_id``; replies match by id."""

import threading
import uuid

import pika

from messages import receive


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _reply(channel, request, body: bytes) -> None:
    """Answers ``request`` the way rpc_server.py does: to its reply_to, with its correlation_id."""
    channel.basic_publish(
        exchange="",
        routing_key=request.properties.reply_to,
        properties=pika.BasicProperties(correlation_id=request.properties.correlation_id),
        body=body,
    )


def _send_requests(channel, queue: str, callback_queue: str, numbers) -> dict[str, int]:
    """Publishes one request per number; returns correlation id -> number."""
    sent = {}
    for n in numbers:
        correlation_id = uuid.uuid4().hex
        sent[correlation_id] = n
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            properties=pika.BasicProperties(reply_to=callback_queue, correlation_id=correlation_id),
            body=str(n).encode(),
        )
    return sent


def test_replies_that_come_back_out_of_order_are_matched_by_correlation_id(connect, names):
    queue = names("rpc")
    client = connect().channel()
    server = connect().channel()
    server.queue_declare(queue)
    callback_queue = client.queue_declare("", exclusive=True).method.queue

    numbers = [5, 10, 15, 20, 25, 30]
    sent = _send_requests(client, queue, callback_queue, numbers)

    # The server takes every request first, then answers them last to first.
    requests = receive(server, queue, len(numbers), auto_ack=False)
    for request in requests:
        assert request.properties.reply_to == callback_queue
        assert request.properties.correlation_id in sent
    for request in reversed(requests):
        _reply(server, request, str(fib(int(request.body))).encode())
        server.basic_ack(request.delivery_tag)

    replies = receive(client, callback_queue, len(numbers))
    assert [r.properties.correlation_id for r in replies] == [
        r.properties.correlation_id for r in reversed(requests)
    ]
    answers = {sent[r.properties.correlation_id]: int(r.body) for r in replies}
    assert answers == {n: fib(n) for n in numbers}


def _serve_fibonacci(parameters, queue: str, ready: threading.Event, stop: threading.Event):
    """An rpc_server.py loop on its own connection, until ``stop`` is set."""
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.queue_declare(queue)
        channel.basic_qos(prefetch_count=1)
        for method, properties, body in channel.consume(queue, inactivity_timeout=0.05):
            ready.set()
            if stop.is_set():
                break
            if method is None:
                continue
            channel.basic_publish(
                exchange="",
                routing_key=properties.reply_to,
                properties=pika.BasicProperties(correlation_id=properties.correlation_id),
                body=str(fib(int(body))).encode(),
            )
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
    finally:
        connection.close()


def test_concurrent_clients_each_get_only_their_own_replies(connect, names, parameters):
    queue = names("rpc")
    ready, stop = threading.Event(), threading.Event()
    servers = [
        threading.Thread(
            target=_serve_fibonacci, args=(parameters, queue, ready, stop), daemon=True
        )
        for _ in range(2)
    ]
    for server in servers:
        server.start()
    try:
        assert ready.wait(10), "the RPC server did not start consuming"

        clients = []
        for c in range(3):
            channel = connect().channel()
            callback_queue = channel.queue_declare("", exclusive=True).method.queue
            numbers = [c * 10 + i for i in range(4)]
            clients.append((channel, callback_queue, numbers))
        # Every client sends all of its requests before anyone waits for an answer.
        sent = [_send_requests(ch, queue, cbq, numbers) for ch, cbq, numbers in clients]

        for (channel, callback_queue, numbers), ids in zip(clients, sent, strict=True):
            replies = receive(channel, callback_queue, len(numbers))
            assert {r.properties.correlation_id for r in replies} == set(ids)
            assert {ids[r.properties.correlation_id]: int(r.body) for r in replies} == {
                n: fib(n) for n in numbers
            }
    finally:
        stop.set()
        for server in servers:
            server.join(10)
