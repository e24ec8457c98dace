#!/usr/bin/env python3
"""IoT: a service that reads the commands the browser demo sends.

The demo page (``http://localhost:15672/demo/``) sends each command over
STOMP-over-WebSocket to ``/queue/commands``: the queue ``commands`` through the
default exchange, declared durable as RabbitMQ's STOMP plugin does. This
consumer declares the same durable queue and prints every command:

    python command_consumer.py                   # the queue "commands"
    python command_consumer.py --queue lab-commands --count 1

Received lines are printed as ``command: <text>``. The broker address comes
from ``AMQP_URL`` (default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--queue", default="commands", help="the durable queue to read (the page's ?queue=)"
    )
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many commands (0: run forever)"
    )
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue=args.queue, durable=True)

    received = 0

    def on_message(ch, method, _properties, body: bytes) -> None:
        nonlocal received
        print(f"command: {body.decode(errors='replace')}", flush=True)
        ch.basic_ack(method.delivery_tag)
        received += 1
        if args.count and received >= args.count:
            ch.stop_consuming()

    channel.basic_consume(queue=args.queue, on_message_callback=on_message)

    print("Waiting for commands. To exit press Ctrl+C", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    connection.close()


if __name__ == "__main__":
    main()
