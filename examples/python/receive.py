#!/usr/bin/env python3
"""Tutorial 1, "Hello World!": the consumer.

Declares the ``hello`` queue and prints every message that arrives on it.
The broker acknowledges each message as soon as it is sent (``auto_ack``),
which is the simplest mode and good enough for a first look.

    python receive.py              # runs until Ctrl+C
    python receive.py --count 1    # exits after one message

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
QUEUE = "hello"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many messages (0: run forever)"
    )
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue=QUEUE)

    received = 0

    def on_message(ch, _method, _properties, body: bytes) -> None:
        nonlocal received
        print(f"Received {body.decode()}", flush=True)
        received += 1
        if args.count and received >= args.count:
            ch.stop_consuming()

    channel.basic_consume(queue=QUEUE, on_message_callback=on_message, auto_ack=True)

    print("Waiting for messages. To exit press Ctrl+C", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    connection.close()


if __name__ == "__main__":
    main()
