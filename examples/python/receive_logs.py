#!/usr/bin/env python3
"""Tutorial 3, "Publish/Subscribe": a log receiver.

Each receiver asks the broker for a fresh queue of its own: the empty name lets
the broker choose one (``amq.gen-...``), and ``exclusive=True`` ties the queue
to this connection, so it is deleted when the receiver exits. The queue is bound
to the ``logs`` fanout exchange, so it gets a copy of every log line emitted
while the receiver runs.

    python receive_logs.py              # runs until Ctrl+C
    python receive_logs.py --count 2    # exits after two log lines

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
EXCHANGE = "logs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many messages (0: run forever)"
    )
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="fanout")

    declared = channel.queue_declare(queue="", exclusive=True)
    queue = declared.method.queue
    channel.queue_bind(exchange=EXCHANGE, queue=queue)

    received = 0

    def on_message(ch, _method, _properties, body: bytes) -> None:
        nonlocal received
        print(body.decode(), flush=True)
        received += 1
        if args.count and received >= args.count:
            ch.stop_consuming()

    channel.basic_consume(queue=queue, on_message_callback=on_message, auto_ack=True)

    # Only now is the queue bound: lines emitted from here on reach us.
    print("Waiting for messages. To exit press Ctrl+C", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    connection.close()


if __name__ == "__main__":
    main()
