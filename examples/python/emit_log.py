#!/usr/bin/env python3
"""Tutorial 3, "Publish/Subscribe": the log emitter.

Publishes one log line to the ``logs`` fanout exchange. A fanout exchange
ignores the routing key and copies each message to every queue bound to it, so
every running ``receive_logs.py`` gets its own copy. If no receiver is running,
no queue is bound and the message is simply dropped: that is fine for logs.

    python emit_log.py
    python emit_log.py "disk almost full"

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import os
import sys

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
EXCHANGE = "logs"


def main() -> None:
    line = " ".join(sys.argv[1:]) or "info: Hello World!"

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="fanout")

    channel.basic_publish(exchange=EXCHANGE, routing_key="", body=line.encode())
    print(f"Sent {line}", flush=True)

    connection.close()


if __name__ == "__main__":
    main()
