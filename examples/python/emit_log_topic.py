#!/usr/bin/env python3
"""Tutorial 5, "Topics": the log emitter.

Publishes one log line to the ``topic_logs`` topic exchange. The routing key is
a list of words separated by dots, conventionally ``<facility>.<severity>``,
such as ``kern.critical`` or ``cron.info``.

    python emit_log_topic.py kern.critical "A critical kernel error"
    python emit_log_topic.py              # key "anonymous.info", a default line

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import os
import sys

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
EXCHANGE = "topic_logs"


def main() -> None:
    routing_key = sys.argv[1] if len(sys.argv) > 1 else "anonymous.info"
    line = " ".join(sys.argv[2:]) or "Hello World!"

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="topic")

    channel.basic_publish(exchange=EXCHANGE, routing_key=routing_key, body=line.encode())
    print(f"Sent {routing_key}: {line}", flush=True)

    connection.close()


if __name__ == "__main__":
    main()
