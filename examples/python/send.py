#!/usr/bin/env python3
"""Tutorial 1, "Hello World!": the producer.

Declares a queue called ``hello`` and publishes one message to it through the
default exchange (the exchange named ``""``), which routes a message to the
queue whose name equals the routing key.

    python send.py                 # sends "Hello World!"
    python send.py some other text

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import os
import sys

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
QUEUE = "hello"


def main() -> None:
    body = " ".join(sys.argv[1:]) or "Hello World!"

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()

    # Declaring is idempotent: whichever of the producer and the consumer starts
    # first creates the queue, so a message is never published into the void.
    channel.queue_declare(queue=QUEUE)

    channel.basic_publish(exchange="", routing_key=QUEUE, body=body.encode())
    print(f"Sent {body}", flush=True)

    connection.close()


if __name__ == "__main__":
    main()
