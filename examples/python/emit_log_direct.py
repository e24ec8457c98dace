#!/usr/bin/env python3
"""Tutorial 4, "Routing": the log emitter.

Publishes one log line to the ``direct_logs`` direct exchange with the
severity as routing key. A direct exchange delivers a message to the queues
whose binding key equals the routing key exactly, so a receiver sees only the
severities it asked for.

    python emit_log_direct.py error "Run. Run. Or it will explode."
    python emit_log_direct.py            # severity "info", a default line

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import os
import sys

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
EXCHANGE = "direct_logs"


def main() -> None:
    severity = sys.argv[1] if len(sys.argv) > 1 else "info"
    line = " ".join(sys.argv[2:]) or "Hello World!"

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="direct")

    channel.basic_publish(exchange=EXCHANGE, routing_key=severity, body=line.encode())
    print(f"Sent {severity}: {line}", flush=True)

    connection.close()


if __name__ == "__main__":
    main()
