"""Raw AMQP 0-9-1 for the adversarial and overload suites: a client that sends exactly the
bytes it is built with and reads every reply with a deadline.

pika cannot send what the attacks need (field tables nested thousands deep: its encoder
recurses in Python), and a pika RPC has no deadline, so against a frozen broker it would hang
the suite instead of failing it. This client does the handshake as PLAIN, opens channel 1,
and then offers the handful of methods the attacks use; ``expect`` reads the next method and
turns a ``channel.close`` or ``connection.close`` into a ``Closed`` carrying the reply code.

It knows nothing of the broker beyond the wire format; nothing here is Junction-specific.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

#: Seconds a reply may take before the read fails.
WAIT = 10.0

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE

CONNECTION_START = (10, 10)
CONNECTION_TUNE = (10, 30)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
EXCHANGE_DECLARE_OK = (40, 11)
QUEUE_DECLARE_OK = (50, 11)
QUEUE_BIND_OK = (50, 21)
BASIC_ACK = (60, 80)
CONFIRM_SELECT_OK = (85, 11)


# ---------------------------------------------------------------------------------------------
# Encoding.


def shortstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return bytes([len(data)]) + data


def longstr(data: str | bytes) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(data)) + data


def table(fields: dict[str, object] | None = None) -> bytes:
    """A field table of strings ('S'), ints ('I'), booleans ('t') and already encoded tables
    (``Encoded``); enough for the arguments the attacks send."""
    body = b""
    for name, value in (fields or {}).items():
        body += shortstr(name)
        if isinstance(value, Encoded):
            body += b"F" + value.data
        elif isinstance(value, bool):
            body += b"t" + bytes([value])
        elif isinstance(value, int):
            body += b"I" + struct.pack(">i", value)
        else:
            body += b"S" + longstr(str(value))
    return struct.pack(">I", len(body)) + body


@dataclass(frozen=True)
class Encoded:
    """A field table already in wire form (length prefix included)."""

    data: bytes


def nested_table(depth: int, key: str = "a") -> Encoded:
    """A table ``{key: {key: ... {}}}`` nested ``depth`` tables deep, built from the inside
    out (no recursion here, whatever the depth)."""
    body = b""
    for _ in range(depth):
        body = shortstr(key) + b"F" + struct.pack(">I", len(body)) + body
    return Encoded(struct.pack(">I", len(body)) + body)


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes([FRAME_END])


def method(channel: int, class_id: int, method_id: int, arguments: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack(">HH", class_id, method_id) + arguments)


def content_header(channel: int, body_size: int, headers: Encoded | None = None) -> bytes:
    """A basic content header; with ``headers`` the headers property (flag bit 13) is set,
    and delivery-mode 1 (bit 12) always."""
    flags = 0x1000
    properties = b""
    if headers is not None:
        flags |= 0x2000
        properties += headers.data
    properties += bytes([1])
    payload = struct.pack(">HHQH", 60, 0, body_size, flags) + properties
    return frame(FRAME_HEADER, channel, payload)


# ---------------------------------------------------------------------------------------------
# Decoding.


class Closed(Exception):
    """The broker closed the channel or the connection; ``code`` is its reply code."""

    def __init__(self, scope: str, code: int, text: str) -> None:
        super().__init__(f"{scope}.close {code} {text}")
        self.scope = scope
        self.code = code
        self.text = text


class ConnectionEnded(Exception):
    """The socket reached end of stream (or was reset) before the expected reply."""


def _read_shortstr(data: bytes, at: int) -> tuple[str, int]:
    size = data[at]
    return data[at + 1 : at + 1 + size].decode(errors="replace"), at + 1 + size


class RawAmqp:
    """One AMQP connection on a TCP socket, logged in and with channel 1 open once
    ``open()`` returns."""

    def __init__(
        self,
        listener: tuple[str, int],
        user: str = "guest",
        password: str = "guest",
        *,
        timeout: float = WAIT,
    ):
        self.listener = listener
        self.user = user
        self.password = password
        #: Seconds each step of the handshake may take.
        self.timeout = timeout
        self.sock = socket.create_connection(listener, timeout=timeout)
        self.buffer = b""
        self.frame_max = 131072

    # transport
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply from the broker within the deadline")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            raise TimeoutError("no reply from the broker within the deadline") from None
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            raise ConnectionEnded("the broker ended the connection")
        self.buffer += data

    def read_frame(self, timeout: float = WAIT) -> tuple[int, int, bytes]:
        """The next frame as (type, channel, payload); heartbeats are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buffer) >= 7:
                kind, channel, size = struct.unpack(">BHI", self.buffer[:7])
                if len(self.buffer) >= 8 + size:
                    payload = self.buffer[7 : 7 + size]
                    self.buffer = self.buffer[8 + size :]
                    if kind == FRAME_HEARTBEAT:
                        continue
                    return kind, channel, payload
            self._fill(deadline)

    def read_method(self, timeout: float = WAIT) -> tuple[tuple[int, int], bytes]:
        """The next method frame as ((class, method), arguments); content frames are
        skipped. A close from the broker is answered with its close-ok and raised as
        ``Closed``."""
        deadline = time.monotonic() + timeout
        while True:
            kind, channel, payload = self.read_frame(max(0.0, deadline - time.monotonic()))
            if kind != FRAME_METHOD:
                continue
            key = struct.unpack(">HH", payload[:4])
            arguments = payload[4:]
            if key in (CHANNEL_CLOSE, CONNECTION_CLOSE):
                code = struct.unpack(">H", arguments[:2])[0]
                text, _ = _read_shortstr(arguments, 2)
                if key == CHANNEL_CLOSE:
                    self._try_send(method(channel, 20, 41))
                    raise Closed("channel", code, text)
                self._try_send(method(0, 10, 51))
                raise Closed("connection", code, text)
            return key, arguments

    def _try_send(self, data: bytes) -> None:
        try:
            self.send(data)
        except OSError:
            pass

    def expect(self, key: tuple[int, int], timeout: float = WAIT) -> bytes:
        """Reads the next method, which must be ``key``; returns its arguments."""
        got, arguments = self.read_method(timeout)
        if got != key:
            raise AssertionError(f"method {key} expected, got {got}")
        return arguments

    # the handshake
    def open(self, vhost: str = "/") -> RawAmqp:
        """Protocol header, PLAIN login, tune, connection.open and channel 1."""
        self.send(b"AMQP\x00\x00\x09\x01")
        self.expect(CONNECTION_START, self.timeout)
        response = b"\x00" + self.user.encode() + b"\x00" + self.password.encode()
        capabilities = table({"authentication_failure_close": True})
        client_properties = table({"product": "junction-adversarial"})
        # capabilities go inside client-properties.
        client_properties = _with_table(client_properties, "capabilities", capabilities)
        self.send(
            method(
                0,
                10,
                11,
                client_properties + shortstr("PLAIN") + longstr(response) + shortstr("en_US"),
            )
        )
        tune = self.expect(CONNECTION_TUNE, self.timeout)
        channel_max, frame_max, _heartbeat = struct.unpack(">HIH", tune[:8])
        self.frame_max = frame_max or self.frame_max
        self.send(method(0, 10, 31, struct.pack(">HIH", channel_max, self.frame_max, 0)))
        self.send(method(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00"))
        self.expect(CONNECTION_OPEN_OK, self.timeout)
        self.send(method(1, 20, 10, shortstr("")))
        self.expect(CHANNEL_OPEN_OK, self.timeout)
        return self

    # methods on channel 1 (sent only; read the reply with ``expect``)
    def queue_declare(
        self,
        name: str,
        *,
        durable: bool = False,
        arguments: bytes | None = None,
        passive: bool = False,
    ) -> None:
        bits = (1 if passive else 0) | (2 if durable else 0)
        self.send(
            method(
                1,
                50,
                10,
                struct.pack(">H", 0)
                + shortstr(name)
                + bytes([bits])
                + (arguments if arguments is not None else table()),
            )
        )

    def queue_bind(self, queue: str, exchange: str, key: str) -> None:
        self.send(
            method(
                1,
                50,
                20,
                struct.pack(">H", 0)
                + shortstr(queue)
                + shortstr(exchange)
                + shortstr(key)
                + b"\x00"
                + table(),
            )
        )

    def exchange_declare(
        self, name: str, kind: str, *, internal: bool = False, arguments: bytes | None = None
    ) -> None:
        bits = 8 if internal else 0
        self.send(
            method(
                1,
                40,
                10,
                struct.pack(">H", 0)
                + shortstr(name)
                + shortstr(kind)
                + bytes([bits])
                + (arguments if arguments is not None else table()),
            )
        )

    def confirm_select(self) -> None:
        self.send(method(1, 85, 10, b"\x00"))

    def publish(
        self, exchange: str, key: str, body: bytes = b"x", headers: Encoded | None = None
    ) -> None:
        """basic.publish, its content header (with ``headers``) and one body frame."""
        self.send(publish_bytes(exchange, key, body, headers))


def publish_bytes(
    exchange: str, key: str, body: bytes = b"x", headers: Encoded | None = None
) -> bytes:
    """A basic.publish on channel 1, its content header (with ``headers``) and one body frame,
    to send many at once."""
    data = method(1, 60, 40, struct.pack(">H", 0) + shortstr(exchange) + shortstr(key) + b"\x00")
    data += content_header(1, len(body), headers)
    if body:
        data += frame(FRAME_BODY, 1, body)
    return data


def _with_table(encoded_table: bytes, name: str, inner: bytes) -> bytes:
    """``encoded_table`` with one more field ``name`` holding the table ``inner``."""
    body = encoded_table[4:] + shortstr(name) + b"F" + inner
    return struct.pack(">I", len(body)) + body
