"""Raw MQTT 3.1.1 for the interop tests: hand-built packets, and clients over TCP or WebSocket
that send exactly the bytes they are given and read the broker's answer back packet by packet,
with a deadline.

This is for the tests that need bytes paho cannot or will not send: malformed and forbidden
packets, another protocol level, an empty client id without a clean session, a client that
stays silent past its keep-alive, a QoS 2 delivery held unacknowledged, a packet split across
writes or WebSocket messages, several packets in one. Everything else uses paho through
``mqtt_clients`` and the ``mqtt`` fixture.

* Packets: ``string`` and ``remaining_length`` (the encodings), ``packet`` (any packet from its
  first byte and body), and builders for what the tests send most: ``connect_packet``,
  ``publish_packet``, ``subscribe_packet``, ``ack_packet``. ``parse_packet``,
  ``split_packets`` and ``parse_publish`` read the broker's bytes.
* Clients: ``RawClient`` (a TCP socket) and ``RawWebSocket`` (binary WebSocket messages),
  both ``RawConnection``: ``send``, ``read_packet``, ``connect``, ``wait_closed`` and a few
  expectations.
* Fixtures: ``raw`` and ``raw_ws`` open such clients to the shared broker and close them when
  the test ends. A test module imports the fixtures it uses (``from mqtt_raw import raw``).
* ``subscriber_on``, ``connected_publisher`` and ``messages_until`` work with paho clients
  (the ``mqtt`` fixture); they are here only because several MQTT test files share them.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pytest
import websocket

from mqtt_clients import WAIT

#: Packet types (the high four bits of a packet's first byte) that ``ack_packet``,
#: ``expect_ack`` and ``parse_publish`` deal in.
PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 3, 4, 5, 6, 7

#: A CONNACK accepting the connection without a session present, as ``read_packet`` gives it.
CONNACK_ACCEPTED = (0x20, b"\x00\x00")

#: How long ``wait_closed`` waits by default for the broker to end a connection.
CLOSE_WAIT = 5.0

# ---------------------------------------------------------------------------------------------
# Packets.


def remaining_length(n: int) -> bytes:
    """``n`` as MQTT's variable-length "remaining length" (7 bits a byte, low bits first)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(text: str | bytes) -> bytes:
    """A length-prefixed string; bytes are sent as they are (so invalid UTF-8 can be sent)."""
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def packet(first: int, body: bytes = b"") -> bytes:
    """A whole packet: its first byte (type and flags), remaining length and ``body``."""
    return bytes([first]) + remaining_length(len(body)) + body


def connect_packet(
    client_id: str | bytes,
    *,
    username: str | None = "guest",
    password: str | None = "guest",
    keepalive: int = 60,
    clean_session: bool = True,
    will: tuple[str, bytes, int, bool] | None = None,
    protocol_name: bytes = b"MQTT",
    level: int = 4,
    v5_properties: bool = False,
    extra_flags: int = 0,
) -> bytes:
    """A CONNECT, by default from guest with a clean session and keep-alive 60.

    The connect flags follow from the arguments: ``username`` and ``password`` (``None``
    leaves one out), ``clean_session``, and ``will`` = (topic, message, QoS, retain).
    ``extra_flags`` are set on top, to send reserved or inconsistent flags.
    ``v5_properties`` adds the (empty) property block of an MQTT 5 CONNECT.
    """
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    flags |= (0x02 if clean_session else 0) | extra_flags
    payload = string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += string(topic) + string(message)
    if username is not None:
        payload += string(username)
    if password is not None:
        payload += string(password)
    variable = string(protocol_name) + bytes([level, flags]) + struct.pack("!H", keepalive)
    if v5_properties:
        variable += b"\x00"
    return packet(0x10, variable + payload)


def publish_packet(
    topic: str | bytes,
    payload: bytes = b"x",
    qos: int = 0,
    packet_id: int = 1,
    *,
    dup: bool = False,
) -> bytes:
    """A PUBLISH; ``packet_id`` is left out at QoS 0, as MQTT requires."""
    body = string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(0x30 | (0x08 if dup else 0) | (qos << 1), body)


def subscribe_packet(packet_id: int, *filters: tuple[str | bytes, int]) -> bytes:
    """A SUBSCRIBE of (filter, requested QoS) pairs, in that order."""
    body = struct.pack("!H", packet_id)
    for topic_filter, qos in filters:
        body += string(topic_filter) + bytes([qos])
    return packet(0x82, body)


def ack_packet(kind: int, packet_id: int) -> bytes:
    """A PUBACK, PUBREC, PUBREL or PUBCOMP (``kind``) for ``packet_id``; PUBREL gets the
    flags 0b0010 it must have."""
    return packet((kind << 4) | (0x02 if kind == PUBREL else 0), struct.pack("!H", packet_id))


def parse_packet(data: bytes) -> tuple[int, bytes, int] | None:
    """The packet at the start of ``data`` as (first byte, body, bytes it takes up); None
    while ``data`` holds only part of one. A remaining length longer than four bytes is an
    AssertionError."""
    length, multiplier, at = 0, 1, 1
    while True:
        assert at <= 4, f"bad remaining length in {data!r}"
        if at >= len(data):
            return None
        byte = data[at]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        at += 1
        if not byte & 0x80:
            break
    if len(data) < at + length:
        return None
    return data[0], data[at : at + length], at + length


def split_packets(data: bytes) -> list[tuple[int, bytes]]:
    """Parses a stream the broker sent into (first byte, body) pairs; asserts it is whole."""
    packets = []
    while data:
        parsed = parse_packet(data)
        assert parsed is not None, f"truncated packet in {data!r}"
        first, body, size = parsed
        packets.append((first, body))
        data = data[size:]
    return packets


class Publish(NamedTuple):
    """A PUBLISH the broker sent, decoded; ``packet_id`` is None at QoS 0."""

    topic: str
    payload: bytes
    qos: int
    dup: bool
    packet_id: int | None


def parse_publish(first: int, body: bytes) -> Publish:
    """Decodes a PUBLISH from its first byte and body (as ``read_packet`` returns them)."""
    assert first >> 4 == PUBLISH, f"PUBLISH expected, got packet type {first >> 4}"
    qos = (first >> 1) & 3
    size = struct.unpack("!H", body[:2])[0]
    topic, rest = body[2 : 2 + size].decode(), body[2 + size :]
    packet_id = None
    if qos:
        packet_id, rest = struct.unpack("!H", rest[:2])[0], rest[2:]
    return Publish(topic, rest, qos, bool(first & 0x08), packet_id)


# ---------------------------------------------------------------------------------------------
# Clients.


class RawConnection:
    """A connection carrying hand-built MQTT. What the broker sends is read as one byte
    stream, whole packets at a time, each read with a deadline; ``buffer`` holds what has
    arrived and not been read yet. Subclasses supply the transport."""

    def __init__(self) -> None:
        self.buffer = b""
        #: When ``wait_closed`` saw the broker end the connection (``time.monotonic()``).
        self.closed_at: float | None = None

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _receive(self, timeout: float) -> bytes | None:
        """Whatever arrives within ``timeout`` seconds: None if nothing did, b"" once the
        broker has ended the connection."""
        raise NotImplementedError

    def read_packet(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """The next packet as (first byte, body). AssertionError if none arrives within
        ``timeout`` seconds or the broker ends the connection first."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = parse_packet(self.buffer)
            if parsed is not None:
                first, body, size = parsed
                self.buffer = self.buffer[size:]
                return first, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no packet from the broker within the deadline")
            data = self._receive(remaining)
            if data == b"":
                raise AssertionError(f"the broker closed the connection (unread: {self.buffer!r})")
            self.buffer += data or b""

    def wait_closed(self, timeout: float = CLOSE_WAIT) -> bytes:
        """Waits until the broker ends the connection (end of stream or a reset) and notes
        when in ``closed_at``; returns what it sent that was not read (packets included)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the broker did not close the connection within {timeout} s")
            data = self._receive(remaining)
            if data == b"":
                self.closed_at = time.monotonic()
                return self.buffer
            self.buffer += data or b""

    def connect(self, client_id: str | bytes, **options) -> bool:
        """Sends ``connect_packet(client_id, **options)`` and expects it accepted: CONNACK
        return code 0, without a session present if the session is clean. Returns session
        present."""
        self.send(connect_packet(client_id, **options))
        first, body = self.read_packet()
        accepted = [b"\x00\x00"]
        if not options.get("clean_session", True):
            accepted.append(b"\x01\x00")
        assert first == 0x20 and body in accepted, f"CONNECT not accepted: {first:#x} {body!r}"
        return body == b"\x01\x00"

    def subscribe(self, topic_filter: str, qos: int, packet_id: int = 1) -> None:
        """Subscribes to one filter and expects the SUBACK to grant ``qos``."""
        self.send(subscribe_packet(packet_id, (topic_filter, qos)))
        received = self.read_packet()
        expected = (0x90, struct.pack("!H", packet_id) + bytes([qos]))
        assert received == expected, f"SUBACK {expected!r} expected, got {received!r}"

    def expect_publish(self) -> Publish:
        """The next packet, which must be a PUBLISH, decoded."""
        return parse_publish(*self.read_packet())

    def expect_ack(self, kind: int) -> int:
        """The next packet, which must be of type ``kind`` (PUBACK, PUBREC, PUBREL, PUBCOMP)
        with the flags that type requires; returns its packet identifier."""
        first, body = self.read_packet()
        expected = ack_packet(kind, 0)[0]
        assert first == expected and len(body) == 2, (
            f"packet {expected:#x} expected, got {first:#x} {body!r}"
        )
        return struct.unpack("!H", body)[0]

    def send_ack(self, kind: int, packet_id: int) -> None:
        """Sends ``ack_packet(kind, packet_id)``."""
        self.send(ack_packet(kind, packet_id))


class RawClient(RawConnection):
    """Raw MQTT on a TCP socket (``sock``, there for shutdowns and reads a test does
    itself)."""

    def __init__(self, listener: tuple[str, int]) -> None:
        super().__init__()
        self.sock = socket.create_connection(listener, timeout=WAIT)

    def send(self, data: bytes) -> None:
        """Sends; a broker that already closed the connection is not an error here (the
        next read says so)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.sock.close()

    def _receive(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return b""


class RawWebSocket(RawConnection):
    """Raw MQTT over a WebSocket at ``/ws`` (websocket-client): each ``send`` is one binary
    message, and replies are read as a stream however the broker cut them into messages.
    ``subprotocol`` is the one offered in Sec-WebSocket-Protocol (None offers none)."""

    def __init__(self, listener: tuple[str, int], subprotocol: str | None = "mqtt") -> None:
        super().__init__()
        host, port = listener
        options = {"subprotocols": [subprotocol]} if subprotocol else {}
        self.ws = websocket.create_connection(f"ws://{host}:{port}/ws", timeout=WAIT, **options)

    def send(self, data: bytes) -> None:
        """One binary WebSocket message."""
        self.ws.send_binary(data)

    def close(self) -> None:
        self.ws.close()

    def _receive(self, timeout: float) -> bytes | None:
        self.ws.settimeout(timeout)
        try:
            data = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except websocket.WebSocketConnectionClosedException:
            return b""
        return data.encode() if isinstance(data, str) else data


# ---------------------------------------------------------------------------------------------
# Fixtures.


def _closed_at_teardown(
    open_one: Callable[..., RawConnection],
) -> Iterator[Callable[..., RawConnection]]:
    """The body of an opening fixture: yields ``open_one`` wrapped so that every connection
    it opened is closed when the test ends."""
    opened: list[RawConnection] = []

    def open_tracked(*args, **kwargs) -> RawConnection:
        connection = open_one(*args, **kwargs)
        opened.append(connection)
        return connection

    yield open_tracked
    for connection in opened:
        connection.close()


@pytest.fixture
def raw(broker) -> Iterator[Callable[..., RawClient]]:
    """Opens ``RawClient``s to an MQTT listener: ``raw()`` to the shared broker's,
    ``raw(other_broker)`` to another's; all are closed when the test ends."""
    yield from _closed_at_teardown(
        lambda target=None: RawClient((target or broker).listeners["mqtt"])
    )


@pytest.fixture
def raw_ws(broker) -> Iterator[Callable[..., RawWebSocket]]:
    """Opens ``RawWebSocket``s to one of the shared broker's listeners:
    ``raw_ws("web-mqtt")``, ``raw_ws("http", subprotocol=None)``; all are closed when the test
    ends."""
    yield from _closed_at_teardown(
        lambda listener, subprotocol="mqtt": RawWebSocket(broker.listeners[listener], subprotocol)
    )


# ---------------------------------------------------------------------------------------------
# On the paho side.


def subscriber_on(mqtt, names, *filters: tuple[str, int], **options):
    """A connected paho client, ``mqtt(names("sub"), **options)``, subscribed to ``filters``
    ((filter, QoS) pairs); asserts each is granted the QoS asked for."""
    subscriber = mqtt(names("sub"), **options)
    subscriber.connect()
    assert subscriber.subscribe(*filters) == [qos for _, qos in filters]
    return subscriber


def connected_publisher(mqtt, names, **options):
    """A connected paho client to publish with: ``mqtt(names("pub"), **options)`` (``mqtt``
    and ``names`` are the fixtures)."""
    publisher = mqtt(names("pub"), **options)
    publisher.connect()
    return publisher


def messages_until(
    client, *, payload: bytes | None = None, topic: str | None = None, timeout: float = WAIT
) -> list:
    """Messages a paho ``MqttClient`` receives up to and including the first with ``payload``
    or on ``topic`` (give one of them); AssertionError, with what did arrive, at the
    deadline."""
    assert (payload is None) != (topic is None), "give payload or topic"
    if topic is None:
        marker, is_marker = f"{payload!r}", lambda message: message.payload == payload
    else:
        marker, is_marker = f"on {topic}", lambda message: message.topic == topic
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no message {marker} within {timeout} s; saw {seen}"
        seen.append(client.expect_message(timeout=remaining))
        if is_marker(seen[-1]):
            return seen
