"""Garbage: a seeded burst of connections per listener that send random bytes, or a valid
conversation with bytes overwritten, cut short or spliced in, and then hang up (some with a
reset). The broker must stay up with the canary served throughout; what each fuzzed
connection is answered does not matter. The seed is fixed, so a failure replays.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from amqp_raw import content_header, frame, longstr, method, shortstr, table
from mqtt_raw import connect_packet, publish_packet, subscribe_packet
from stomp_clients import frame_bytes
from ws_raw import OP_BINARY, OP_TEXT, client_frame

SEED = 13
#: Connections per listener.
CONNECTIONS = 300
#: Connections at once.
WORKERS = 12
#: Seconds the burst may take at most.
BURST_SECONDS = 20.0


def amqp_conversation() -> bytes:
    login = b"\x00guest\x00guest"
    return (
        b"AMQP\x00\x00\x09\x01"
        + method(0, 10, 11, table() + shortstr("PLAIN") + longstr(login) + shortstr("en_US"))
        + method(0, 10, 31, struct.pack(">HIH", 2047, 131072, 0))
        + method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00")
        + method(1, 20, 10, shortstr(""))
        + method(1, 50, 10, struct.pack(">H", 0) + shortstr("fuzz") + b"\x00" + table())
        + method(1, 60, 40, struct.pack(">H", 0) + shortstr("") + shortstr("fuzz") + b"\x00")
        + content_header(1, 5)
        + frame(3, 1, b"hello")
    )


def mqtt_conversation() -> bytes:
    return (
        connect_packet("fuzz")
        + subscribe_packet(1, ("fuzz/#", 1))
        + publish_packet("fuzz/a", b"hello", qos=1, packet_id=2)
    )


def stomp_conversation() -> bytes:
    return (
        frame_bytes(
            "CONNECT", [("accept-version", "1.2"), ("login", "guest"), ("passcode", "guest")]
        )
        + frame_bytes("SUBSCRIBE", [("destination", "/queue/fuzz"), ("id", "1")])
        + frame_bytes("SEND", [("destination", "/queue/fuzz")], "hello")
    )


def handshake(subprotocol: str | None) -> bytes:
    request = (
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    if subprotocol:
        request += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
    return (request + "\r\n").encode()


#: Per listener: the bytes sent before the fuzzed part (kept intact, so the fuzz reaches
#: past the handshake) and a valid conversation to mutate.
CONVERSATIONS = {
    "amqp": (b"", amqp_conversation()),
    "mqtt": (b"", mqtt_conversation()),
    "stomp": (b"", stomp_conversation()),
    "http": (b"", handshake("mqtt") + client_frame(OP_BINARY, mqtt_conversation())),
    "web-mqtt": (handshake("mqtt"), client_frame(OP_BINARY, mqtt_conversation())),
    "web-stomp": (handshake("v12.stomp"), client_frame(OP_TEXT, stomp_conversation())),
}


def fuzzed(rng: random.Random, valid: bytes) -> bytes:
    """Random bytes, or ``valid`` with a few bytes overwritten, a cut, or random bytes
    spliced in."""
    choice = rng.random()
    if choice < 0.25:
        return rng.randbytes(rng.randint(1, 4096))
    data = bytearray(valid)
    if choice < 0.6:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice < 0.8:
        del data[rng.randrange(len(data)) :]
    else:
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 512))
    return bytes(data)


def one_connection(listener: tuple[str, int], data: bytes, reset: bool) -> None:
    try:
        sock = socket.create_connection(listener, timeout=2)
    except OSError:
        return
    try:
        sock.sendall(data)
        sock.settimeout(0.05)
        try:
            sock.recv(65536)
        except OSError:
            pass
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    finally:
        sock.close()


@pytest.mark.parametrize("listener", list(CONVERSATIONS))
def test_a_burst_of_garbage_connections(arena, listener):
    arena.start()
    rng = random.Random(f"{SEED}-{listener}")
    prefix, valid = CONVERSATIONS[listener]
    burst = [(prefix + fuzzed(rng, valid), rng.random() < 0.3) for _ in range(CONNECTIONS)]
    address = arena.listeners[listener]
    deadline = time.monotonic() + BURST_SECONDS

    def send(item: tuple[bytes, bool]) -> None:
        if time.monotonic() < deadline and arena.broker_alive():
            one_connection(address, *item)

    with arena.attack():
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            list(pool.map(send, burst))
    arena.assert_survived()
