#!/usr/bin/env python3
"""Tutorial 5, "Topics": a log receiver that subscribes by pattern.

Binds a fresh exclusive queue to the ``topic_logs`` exchange with each binding
key given on the command line. In a binding key, ``*`` stands for exactly one
word and ``#`` for zero or more words:

    python receive_logs_topic.py "#"                  # everything
    python receive_logs_topic.py "kern.*"             # kern.info, not kern or kern.disk.full
    python receive_logs_topic.py "kern.#" "*.critical"
    python receive_logs_topic.py --count 1 "kern.*"   # exits after one message

Received lines are printed as ``routing.key: line``. The broker address comes
from ``AMQP_URL`` (default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
EXCHANGE = "topic_logs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "binding_keys",
        nargs="+",
        metavar="binding_key",
        help="patterns such as 'kern.*' or '#.critical'",
    )
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many messages (0: run forever)"
    )
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="topic")

    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    for binding_key in args.binding_keys:
        channel.queue_bind(exchange=EXCHANGE, queue=queue, routing_key=binding_key)

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
