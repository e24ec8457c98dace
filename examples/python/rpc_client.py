#!/usr/bin/env python3
"""Tutorial 6, "RPC": the client.

Asks ``rpc_server.py`` for Fibonacci numbers. The client owns one exclusive,
server-named callback queue for all of its replies; every request names that
queue in ``reply_to`` and carries a fresh ``correlation_id``. Replies are
matched to requests by that id, so several requests can be in flight at once
and answers may arrive in any order. A reply with an id we are not waiting for
(say, a late answer to a request that already timed out) is ignored.

    python rpc_client.py              # asks for fib(30)
    python rpc_client.py 10 20 30     # sends all three requests, then waits

The broker address comes from ``AMQP_URL``
(default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os
import time
import uuid

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
QUEUE = "rpc_queue"


class FibonacciRpcClient:
    """A connection to the broker that sends Fibonacci requests and collects replies."""

    def __init__(self, url: str = AMQP_URL, request_queue: str = QUEUE) -> None:
        self.request_queue = request_queue
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()

        declared = self.channel.queue_declare(queue="", exclusive=True)
        self.callback_queue = declared.method.queue
        self.channel.basic_consume(
            queue=self.callback_queue,
            on_message_callback=self._on_reply,
            auto_ack=True,
        )
        # correlation id -> reply body (None while the answer is outstanding)
        self._pending: dict[str, bytes | None] = {}

    def _on_reply(self, _ch, _method, properties, body: bytes) -> None:
        if properties.correlation_id in self._pending:
            self._pending[properties.correlation_id] = body

    def submit(self, n: int) -> str:
        """Sends a request for fib(n) and returns its correlation id."""
        correlation_id = str(uuid.uuid4())
        self._pending[correlation_id] = None
        self.channel.basic_publish(
            exchange="",
            routing_key=self.request_queue,
            properties=pika.BasicProperties(
                reply_to=self.callback_queue,
                correlation_id=correlation_id,
            ),
            body=str(n).encode(),
        )
        return correlation_id

    def wait(self, correlation_id: str, timeout: float = 10.0) -> str:
        """Waits for the reply to one submitted request and returns its text."""
        deadline = time.monotonic() + timeout
        while self._pending[correlation_id] is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                del self._pending[correlation_id]
                raise TimeoutError(f"no reply for request {correlation_id} in {timeout} s")
            self.connection.process_data_events(time_limit=min(remaining, 0.5))
        return self._pending.pop(correlation_id).decode()

    def call(self, n: int, timeout: float = 10.0) -> str:
        """Requests fib(n) and waits for the answer."""
        return self.wait(self.submit(n), timeout)

    def close(self) -> None:
        self.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "numbers",
        nargs="*",
        type=int,
        default=[30],
        help="which Fibonacci numbers to ask for (default: 30)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for each reply (default: %(default)s)",
    )
    args = parser.parse_args()

    client = FibonacciRpcClient()
    try:
        # Send every request before waiting for any answer: the correlation ids
        # keep the answers apart.
        requests = [(n, client.submit(n)) for n in args.numbers]
        for n, correlation_id in requests:
            print(f"fib({n}) = {client.wait(correlation_id, args.timeout)}", flush=True)
    finally:
        client.close()


if __name__ == "__main__":
    main()
