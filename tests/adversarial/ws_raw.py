"""Raw WebSocket for the adversarial suite: the opening handshake on a plain socket, then
frames built by hand, so an attack can send what no WebSocket library sends (a flood of pings
while never reading the pongs, a frame header announcing 64 MiB and the payload behind it).

Client frames must be masked (RFC 6455 §5.3); the attacks use the all-zero masking key, which
is valid and leaves the payload as it is, so megabytes need no XOR in Python.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time

#: Seconds the handshake may take.
WAIT = 10.0

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
ZERO_MASK = b"\x00\x00\x00\x00"


def frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """The header of a masked client frame carrying ``length`` payload bytes (zero mask)."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, 0x80 | length]) + ZERO_MASK
    if length < 1 << 16:
        return bytes([first, 0x80 | 126]) + struct.pack(">H", length) + ZERO_MASK
    return bytes([first, 0x80 | 127]) + struct.pack(">Q", length) + ZERO_MASK


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A whole masked client frame (zero mask, so the payload goes as it is)."""
    return frame_header(opcode, len(payload)) + payload


class RawWebSocketClient:
    """A socket that has done the WebSocket handshake at ``/ws`` offering ``subprotocol``.

    ``receive_buffer`` shrinks SO_RCVBUF before connecting, for clients that mean never to
    read (so the broker's pongs back up in the broker, not in our kernel buffer); ``timeout``
    bounds the handshake.
    """

    def __init__(
        self,
        listener: tuple[str, int],
        subprotocol: str | None,
        *,
        receive_buffer: int | None = None,
        timeout: float = WAIT,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect(listener)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: {listener[0]}:{listener[1]}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if subprotocol:
            request += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
        self.sock.sendall((request + "\r\n").encode())
        self.buffer = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            self._fill(deadline)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise AssertionError(f"WebSocket handshake refused: {head!r}")

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("nothing from the broker within the deadline")
        self.sock.settimeout(remaining)
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the broker ended the connection")
        self.buffer += data

    def send_message(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        self.sock.sendall(client_frame(opcode, payload))

    def read_message(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """The next (unfragmented, unmasked) frame from the broker as (opcode, payload)."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buffer) >= 2:
                length = self.buffer[1] & 0x7F
                at = 2
                if length == 126:
                    at = 4
                    if len(self.buffer) >= at:
                        length = struct.unpack(">H", self.buffer[2:4])[0]
                elif length == 127:
                    at = 10
                    if len(self.buffer) >= at:
                        length = struct.unpack(">Q", self.buffer[2:10])[0]
                if len(self.buffer) >= at + length:
                    opcode = self.buffer[0] & 0x0F
                    payload = self.buffer[at : at + length]
                    self.buffer = self.buffer[at + length :]
                    return opcode, payload
            self._fill(deadline)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
