#!/usr/bin/env python3
"""Idle AMQP 0-9-1 connections, for the memory-per-connection comparison in bench/compare.sh.

Opens N pika connections (default 1000) to HOST:PORT as guest, each with one open channel and
heartbeats off (so an idle client owes the broker nothing), prints `all connected: N in T s`,
holds them for HOLD seconds (default 10) while the caller samples the broker's memory, then
closes them all and prints `closed N`. Exits non-zero if a connection failed.

Usage: amqp_idle.py [--host H] [--port P] [--connections N] [--hold S]
"""

import argparse
import resource
import sys
import time

import pika


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=10.0)
    args = parser.parse_args()

    # One descriptor per connection on this side too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    parameters = pika.ConnectionParameters(
        host=args.host,
        port=args.port,
        credentials=pika.PlainCredentials("guest", "guest"),
        heartbeat=0,
        blocked_connection_timeout=None,
        connection_attempts=1,
        socket_timeout=30,
    )
    connections = []
    started = time.monotonic()
    try:
        for _ in range(args.connections):
            connection = pika.BlockingConnection(parameters)
            connection.channel()
            connections.append(connection)
    except Exception as error:  # noqa: BLE001 - report any failure and stop
        print(f"connected {len(connections)} of {args.connections}: {error!r}", flush=True)
        return 1
    took = time.monotonic() - started
    print(
        f"all connected: {len(connections)} in {took:.2f} s "
        f"({len(connections) / took:.0f} connections/s)",
        flush=True,
    )

    time.sleep(args.hold)
    # A connection the broker dropped while idle shows up as closed here.
    lost = sum(1 for c in connections if not c.is_open)
    for connection in connections:
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - already gone
            pass
    print(f"closed {len(connections)} (lost while held: {lost})", flush=True)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
