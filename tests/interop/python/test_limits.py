"""Limits against abuse ([limits] and the per-vhost and per-user limits): each one exceeded
with a real client, which gets its protocol's error, while other clients carry on.
"""

from __future__ import annotations

import resource
import select
import socket
import time

import pika
import pytest
import requests

from processes import JunctionBroker

WAIT = 10.0


def raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open files limit ({hard}) is below {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the broker has closed the socket (EOF or reset), without blocking."""
    poller = select.poll()  # select.select cannot take descriptors above 1023
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return data == b""  # else the broker answered what was trickled: still open


def test_a_thousand_silent_sockets_are_closed_after_the_handshake_timeout(
    start_broker, tmp_path
):
    """1,000 clients connect to every listener and say nothing (or trickle a byte now and
    then); with a 2 s handshake timeout all of them are closed, and a real client logs in
    and works the whole time."""
    raise_open_files(4096)
    config = tmp_path / "limits.toml"
    config.write_text("[limits]\nhandshake_timeout_ms = 2000\n")
    broker = start_broker(extra_args=["--config", str(config)])
    names = ["amqp", "mqtt", "stomp", "http", "web-mqtt", "web-stomp"]
    silent: list[socket.socket] = []
    for i in range(1000):
        host, port = broker.listeners[names[i % len(names)]]
        sock = socket.create_connection((host, port), timeout=WAIT)
        sock.setblocking(False)
        silent.append(sock)
    # Some trickle a byte at a time: they are closed all the same.
    tricklers = silent[:12]
    openings = {
        "amqp": b"AMQP\x00\x00\x09\x01",
        "mqtt": b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c",
        "stomp": b"CONNECT\naccept-version:1.2\n",
        "http": b"GET /ws HTTP/1.1\r\nHost: x\r\n",
        "web-mqtt": b"GET /ws HTTP/1.1\r\nHost: x\r\n",
        "web-stomp": b"GET /ws HTTP/1.1\r\nHost: x\r\n",
    }
    sent = 0

    # Meanwhile a client that logs in properly is served.
    connection = pika.BlockingConnection(broker.pika_parameters())
    channel = connection.channel()
    channel.queue_declare("limits-canary", exclusive=True)

    deadline = time.monotonic() + 30
    open_sockets = list(silent)
    while open_sockets and time.monotonic() < deadline:
        for i, sock in enumerate(tricklers):
            opening = openings[names[i % len(names)]]
            if sent < len(opening) and sock in open_sockets:
                try:
                    sock.send(opening[sent : sent + 1])
                except OSError:
                    pass
        sent += 1
        open_sockets = [sock for sock in open_sockets if not closed_by_peer(sock)]
        channel.basic_publish("", "limits-canary", b"still here")
        connection.process_data_events(time_limit=0.25)
    assert not open_sockets, f"{len(open_sockets)} of 1,000 silent sockets still open"
    assert channel.queue_declare("limits-canary", passive=True).method.message_count > 0
    connection.close()
    for sock in silent:
        sock.close()
    assert "handshake timed out" in broker.log_tail(3000) or "no CONNECT in time" in broker.log_tail(3000)
