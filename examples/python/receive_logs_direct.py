#!/usr/bin/env python3
"""Tutorial 4, "Routing": a log receiver that picks severities.

Binds a fresh exclusive queue to the ``direct_logs`` exchange once per
severity named on the command line, then prints what arrives as
``severity: line``.

    python receive_logs_direct.py warning error           # runs until Ctrl+C
    python receive_logs_direct.py --count 1 error > errors.log

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
EXCHANGE = "direct_logs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "severities",
        nargs="+",
        metavar="severity",
        help="severities to receive, e.g. info warning error",
    )
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many messages (0: run forever)"
    )
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="direct")

    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    # One binding per severity: a queue may have many bindings to one exchange.
    for severity in args.severities:
        channel.queue_bind(exchange=EXCHANGE, queue=queue, routing_key=severity)

    received = 0

    def on_message(ch, method, _properties, body: bytes) -> None:
        nonlocal received
        print(f"{method.routing_key}: {body.decode()}", flush=True)
        received += 1
        if args.count and received >= args.count:
            ch.stop_consuming()

    channel.basic_consume(queue=queue, on_message_callback=on_message, auto_ack=True)

    print("Waiting for messages. To exit press Ctrl+C", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    connection.close()


if __name__ == "__main__":
    main()
