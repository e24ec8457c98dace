#!/usr/bin/env python3
"""Tutorial 2, "Work Queues": the worker.

Takes tasks from the durable task queue and "works" one second for each ``.``
in a task's text. Run several workers at once to share the load.

Two settings make the sharing fair and safe:

* ``basic_qos(prefetch_count=1)``: the broker sends a worker a new task only
  once it has acknowledged the previous one, so a busy worker is not handed
  tasks that an idle worker could be doing.
* Manual acknowledgement: a task is acknowledged only after the work is done.
  If a worker dies mid-task, its connection closes, and the broker gives the
  unacknowledged task to another worker (flagged as redelivered).

    python worker.py               # runs until Ctrl+C
    python worker.py --count 3     # exits after finishing three tasks

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os
import time

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many tasks (0: run forever)"
    )
    parser.add_argument(
        "--queue", default="task_queue", help="queue to take tasks from (default: %(default)s)"
    )
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue=args.queue, durable=True)
    channel.basic_qos(prefetch_count=1)

    done = 0

    def on_task(ch, method, properties, body: bytes) -> None:
        nonlocal done
        task = body.decode()
        note = " (redelivered)" if method.redelivered else ""
        print(f"Received {task}{note}", flush=True)
        time.sleep(task.count("."))
        print("Done", flush=True)
        # Acknowledge only now: a worker that dies before this line leaves the
        # task unacknowledged, and the broker hands it to someone else.
        ch.basic_ack(delivery_tag=method.delivery_tag)
        done += 1
        if args.count and done >= args.count:
            ch.stop_consuming()

    channel.basic_consume(queue=args.queue, on_message_callback=on_task)

    print("Waiting for messages. To exit press Ctrl+C", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    connection.close()


if __name__ == "__main__":
    main()
