#!/usr/bin/env python3
"""Tutorial 2, "Work Queues": the task producer.

Publishes one task to a durable queue. Each ``.`` in the task's text stands for
one second of work for the worker that picks it up. The message is marked
persistent (delivery mode 2), and the queue is durable, so a task that has been
accepted by the broker survives a broker restart.

    python new_task.py First task.
    python new_task.py A much longer task.....

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="*", help="the task's text")
    parser.add_argument(
        "--queue", default="task_queue", help="queue to publish to (default: %(default)s)"
    )
    args = parser.parse_args()
    task = " ".join(args.words) or "Hello World!"

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()

    # Durability is a property of the queue and must match on every declare:
    # the worker declares the same queue the same way.
    channel.queue_declare(queue=args.queue, durable=True)

    channel.basic_publish(
        exchange="",
        routing_key=args.queue,
        body=task.encode(),
        properties=pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
        ),
    )
    print(f"Sent {task}", flush=True)

    connection.close()


if __name__ == "__main__":
    main()
