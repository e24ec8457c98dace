#!/usr/bin/env python3
"""Tutorial 6, "RPC": the server.

Serves Fibonacci numbers over AMQP. Requests arrive on the ``rpc_queue`` queue
with the number ``n`` as body; each request carries two properties that make
request/reply work over queues:

* ``reply_to``: the queue the client wants the answer on, and
* ``correlation_id``: an opaque tag the server copies onto the answer, so the
  client can tell which of its requests an answer belongs to.

The answer is published through the default exchange straight to the
``reply_to`` queue. Start several servers to share the load: with prefetch 1
each one takes a new request only when it has answered the last.

    python rpc_server.py              # runs until Ctrl+C
    python rpc_server.py --count 5    # exits after answering five requests

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
QUEUE = "rpc_queue"


def fib(n: int) -> int:
    """The n-th Fibonacci number (fib(0) = 0, fib(1) = 1), computed iteratively."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def answer(body: bytes) -> str:
    """The reply body for a request body: the Fibonacci number, or an error text."""
    try:
        n = int(body)
    except ValueError:
        return f"error: not an integer: {body!r}"
    if n < 0:
        return f"error: negative: {n}"
    return str(fib(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many requests (0: run forever)"
    )
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue=QUEUE)
    channel.basic_qos(prefetch_count=1)

    served = 0

    def on_request(ch, method, properties, body: bytes) -> None:
        nonlocal served
        reply = answer(body)
        print(f"fib({body.decode(errors='replace')}) -> {reply}", flush=True)
        if properties.reply_to:
            ch.basic_publish(
                exchange="",
                routing_key=properties.reply_to,
                properties=pika.BasicProperties(correlation_id=properties.correlation_id),
                body=reply.encode(),
            )
        ch.basic_ack(delivery_tag=method.delivery_tag)
        served += 1
        if args.count and served >= args.count:
            ch.stop_consuming()

    channel.basic_consume(queue=QUEUE, on_message_callback=on_request)

    print("Waiting for RPC requests. To exit press Ctrl+C", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    connection.close()


if __name__ == "__main__":
    main()
