"""STOMP clients for the interop tests: stomp.py wrapped so a test waits on events with a
deadline (never a bare sleep), and a raw client that sends exactly the bytes it is given.

* ``StompClient`` wraps ``stomp.Connection10/11/12``: every frame the broker sends is recorded
  (MESSAGEs, RECEIPTs, ERRORs, heart-beats, the CONNECTED frame, the disconnect), and the
  commands a test sends most wait for their RECEIPT: ``connect``, ``subscribe``,
  ``unsubscribe``, ``send``, ``ack``/``nack`` (version-aware), ``begin``/``commit``/``abort``.
  ``expect_message``, ``expect_no_message``, ``expect_error`` and ``wait_disconnected`` read
  the recorded events. The stomp.py connection stays available as ``.conn``.
* ``RawStomp`` (a TCP socket) and ``RawStompWebSocket`` (a WebSocket carrying STOMP in text or
  binary messages), both ``RawStompConnection``: ``send`` bytes, ``send_frame`` (encoded with
  ``frame_bytes``), ``read_frame`` with a deadline (heart-beat EOLs counted in
  ``heartbeats``), ``connect``, ``wait_closed``. For what stomp.py will not send: bad versions,
  bodies with NUL bytes, STOMP 1.0 header text, garbage, silence after promising heart-beats.
* Fixtures: ``stomp`` makes ``StompClient``s for the shared broker (or another, with
  ``target=``) and ``stomp_connected`` ones already connected as guest; ``raw_stomp`` opens
  ``RawStomp``s and ``raw_stomp_ws`` ``RawStompWebSocket``s. Each closes what it opened when
  the test ends. conftest registers this module as a plugin, so tests just name the fixtures.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import stomp as stomppy
from stomp.adapter.ws import WSStompConnection
import websocket

#: Seconds a test waits for something the broker should do promptly.
WAIT = 10.0
#: How long ``wait_closed`` waits by default for the broker to end a connection.
CLOSE_WAIT = 5.0
#: The login and passcode headers of the configured user, for raw CONNECT frames.
GUEST = [("login", "guest"), ("passcode", "guest")]

_CONNECTIONS = {
    "1.0": stomppy.Connection10,
    "1.1": stomppy.Connection11,
    "1.2": stomppy.Connection12,
}


# ---------------------------------------------------------------------------------------------
# stomp.py, with events.


@dataclass
class Received:
    """A frame the broker sent, as stomp.py parsed it (headers unescaped, first value of a
    repeated header). ``body`` is str when the client decodes bodies, bytes otherwise."""

    command: str
    headers: dict[str, str]
    body: Any


class StompClient:
    """One stomp.py connection with everything the broker sends recorded.

    ``listener`` is ``(host, port)``; ``version`` is "1.0", "1.1" or "1.2"; ``heartbeats``
    (ms: client sends, client wants) and ``vhost`` (the ``host`` header; "/" as RabbitMQ's users
pass it, since stomp.py otherwise sends the host it connects to) apply to 1.1 and 1.2.
    ``auto_decode=False`` keeps bodies as bytes. ``over_websocket=True`` connects over a
    WebSocket at ``/ws`` instead (stomp.py's WSStompConnection, 1.2 only) offering the subprotocol
    ``v12.stomp``; ``binary_mode`` then sends binary rather than text messages.
    """

    def __init__(
        self,
        listener: tuple[str, int],
        version: str = "1.2",
        *,
        heartbeats: tuple[int, int] = (0, 0),
        vhost: str | None = "/",
        auto_decode: bool = True,
        over_websocket: bool = False,
        binary_mode: bool = False,
    ) -> None:
        self.listener = listener
        self.version = version
        options: dict[str, Any] = dict(
            host_and_ports=[listener],
            reconnect_attempts_max=1,
            auto_decode=auto_decode,
        )
        if version != "1.0":
            options.update(heartbeats=heartbeats, vhost=vhost)
        if over_websocket:
            assert version == "1.2", "stomp.py speaks STOMP 1.2 over WebSocket"
            self.conn = WSStompConnection(
                ws_path="/ws",
                header={"Sec-WebSocket-Protocol": "v12.stomp"},
                binary_mode=binary_mode,
                **options,
            )
        else:
            self.conn = _CONNECTIONS[version](**options)
        self.messages: queue.Queue[Received] = queue.Queue()
        self.errors: queue.Queue[Received] = queue.Queue()
        self.connected: queue.Queue[Received] = queue.Queue()
        self.receipts: set[str] = set()
        self.heartbeats_received = 0
        self.disconnected = threading.Event()
        self._changed = threading.Condition()
        self._receipt_counter = 0
        self.conn.set_listener("recorder", self)

    # stomp.py listener callbacks (on stomp.py's receiver thread)
    def on_connected(self, frame) -> None:
        self.connected.put(Received(frame.cmd, dict(frame.headers), frame.body))

    def on_message(self, frame) -> None:
        self.messages.put(Received(frame.cmd, dict(frame.headers), frame.body))

    def on_error(self, frame) -> None:
        self.errors.put(Received(frame.cmd, dict(frame.headers), frame.body))

    def on_receipt(self, frame) -> None:
        with self._changed:
            self.receipts.add(frame.headers.get("receipt-id", ""))
            self._changed.notify_all()

    def on_heartbeat(self) -> None:
        with self._changed:
            self.heartbeats_received += 1
            self._changed.notify_all()

    def on_disconnected(self) -> None:
        self.disconnected.set()

    # what tests call
    def connect(
        self,
        login: str | None = "guest",
        passcode: str | None = "guest",
        headers: dict[str, str] | None = None,
    ) -> Received:
        """Opens the socket, sends CONNECT (1.0) or STOMP (1.1, 1.2) and waits for CONNECTED,
        which it returns. An ERROR instead is an AssertionError (``connect_refused`` expects
        one)."""
        self._start(login, passcode, headers)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                return self.connected.get(timeout=0.05)
            except queue.Empty:
                pass
            if not self.errors.empty():
                error = self.errors.get()
                raise AssertionError(f"CONNECT refused: {error.headers} {error.body!r}")
            assert time.monotonic() < deadline, "no CONNECTED within the deadline"

    def connect_refused(
        self,
        login: str | None = "guest",
        passcode: str | None = "guest",
        headers: dict[str, str] | None = None,
    ) -> Received:
        """Sends CONNECT expecting an ERROR frame; returns it once the broker has also closed
        the connection."""
        self._start(login, passcode, headers)
        error = self.expect_error()
        assert self.connected.empty(), "the broker sent CONNECTED as well as ERROR"
        self.wait_disconnected()
        return error

    def _start(self, login, passcode, headers) -> None:
        # stomp.py's connect() opens the socket and starts the receiver thread itself.
        self.conn.connect(login, passcode, wait=False, headers=headers or {})

    def next_receipt(self) -> str:
        self._receipt_counter += 1
        return f"r-{self._receipt_counter}"

    def wait_receipt(self, receipt: str, timeout: float = WAIT) -> None:
        """Waits for RECEIPT ``receipt``; fails early, with the ERROR, if one arrives."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while receipt not in self.receipts:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if not self.errors.empty() or self.disconnected.is_set():
                    break
                self._changed.wait(min(remaining, 0.05))
            if receipt in self.receipts:
                return
        errors = []
        while not self.errors.empty():
            errors.append(self.errors.get())
        raise AssertionError(
            f"no RECEIPT {receipt} within {timeout} s"
            + (f"; ERROR {errors}" if errors else "")
            + ("; disconnected" if self.disconnected.is_set() else "")
        )

    def _with_receipt(self, call: Callable[..., Any], *args, wait: bool = True, **headers):
        receipt = self.next_receipt()
        result = call(*args, headers={**headers, "receipt": receipt})
        if wait:
            self.wait_receipt(receipt)
        return result

    def subscribe(
        self, destination: str, id: str | None = None, ack: str = "auto", **headers: str
    ) -> str:
        """SUBSCRIBE (``id`` defaults to a fresh one, even for 1.0); waits for the RECEIPT and
        returns the id. Extra headers are keyword arguments (``prefetch_count`` is sent as
        ``prefetch-count``: underscores become dashes)."""
        id = id or f"sub-{self.next_receipt()}"
        extra = {name.replace("_", "-"): value for name, value in headers.items()}
        receipt = self.next_receipt()
        extra["receipt"] = receipt
        if self.version == "1.0":
            self.conn.subscribe(destination, id=id, ack=ack, headers=extra)
        else:
            self.conn.subscribe(destination, id, ack=ack, headers=extra)
        self.wait_receipt(receipt)
        return id

    def unsubscribe(self, id: str, **headers: str) -> None:
        """UNSUBSCRIBE by id; waits for the RECEIPT."""
        extra = {name.replace("_", "-"): value for name, value in headers.items()}
        receipt = self.next_receipt()
        extra["receipt"] = receipt
        if self.version == "1.0":
            self.conn.unsubscribe(id=id, headers=extra)
        else:
            self.conn.unsubscribe(id, headers=extra)
        self.wait_receipt(receipt)

    def send(
        self, destination: str, body: str | bytes, *, wait: bool = True, **headers: str
    ) -> None:
        """SEND with a receipt, waited for unless ``wait=False``. Extra headers are keyword
        arguments (underscores become dashes: ``correlation_id`` is ``correlation-id``)."""
        extra = {name.replace("_", "-"): value for name, value in headers.items()}
        receipt = self.next_receipt()
        extra["receipt"] = receipt
        self.conn.send(destination, body, headers=extra)
        if wait:
            self.wait_receipt(receipt)

    def ack(self, message: Received, transaction: str | None = None) -> None:
        """ACKs ``message`` the way this version names it (1.2: its ``ack`` header; 1.0 and
        1.1: its ``message-id``); waits for the RECEIPT."""
        self._settle(self.conn.ack, message, transaction)

    def nack(self, message: Received, transaction: str | None = None) -> None:
        """NACKs ``message`` (STOMP 1.1 and 1.2); waits for the RECEIPT."""
        self._settle(self.conn.nack, message, transaction)

    def _settle(self, call, message: Received, transaction: str | None) -> None:
        receipt = self.next_receipt()
        if self.version == "1.2":
            call(message.headers["ack"], transaction=transaction, receipt=receipt)
        elif self.version == "1.1":
            call(
                message.headers["message-id"],
                message.headers["subscription"],
                transaction=transaction,
                receipt=receipt,
            )
        else:
            call(message.headers["message-id"], transaction=transaction, receipt=receipt)
        self.wait_receipt(receipt)

    def begin(self, transaction: str) -> str:
        self._with_receipt(self.conn.begin, transaction)
        return transaction

    def commit(self, transaction: str) -> None:
        self._with_receipt(self.conn.commit, transaction)

    def abort(self, transaction: str) -> None:
        self._with_receipt(self.conn.abort, transaction)

    def expect_message(self, timeout: float = WAIT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            errors = list(self.errors.queue)
            raise AssertionError(
                f"no MESSAGE within {timeout} s" + (f"; ERROR {errors}" if errors else "")
            ) from None

    def expect_messages(self, count: int, timeout: float = WAIT) -> list[Received]:
        deadline = time.monotonic() + timeout
        return [
            self.expect_message(max(0.01, deadline - time.monotonic())) for _ in range(count)
        ]

    def expect_no_message(self, within: float = 0.5) -> None:
        """Asserts no MESSAGE arrives for ``within`` seconds (a bounded negative check, best
        made after something later was already seen)."""
        try:
            message = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected MESSAGE {message}")

    def expect_error(self, timeout: float = WAIT) -> Received:
        try:
            return self.errors.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no ERROR frame within {timeout} s") from None

    def wait_disconnected(self, timeout: float = WAIT) -> None:
        assert self.disconnected.wait(timeout), "the broker did not close the connection"

    def wait_heartbeats(self, count: int, timeout: float = WAIT) -> None:
        with self._changed:
            assert self._changed.wait_for(
                lambda: self.heartbeats_received >= count, timeout=timeout
            ), f"{self.heartbeats_received} heart-beats received, {count} expected"

    def round_trip(self, names: Callable[[str], str]) -> None:
        """Proves the connection works: a message through a fresh queue and back."""
        destination = f"/queue/{names('alive')}"
        subscription = self.subscribe(destination)
        self.send(destination, "still here")
        message = self.expect_message()
        assert (message.headers["subscription"], message.body) == (subscription, "still here")
        self.unsubscribe(subscription)

    def disconnect(self) -> None:
        """DISCONNECT with a receipt (stomp.py waits for it), then the socket closes."""
        self.conn.disconnect()
        self.disconnected.wait(WAIT)

    def close(self) -> None:
        """Stops the client whatever its state (fixture teardown)."""
        try:
            if self.conn.is_connected():
                self.conn.disconnect()
        except Exception:  # noqa: BLE001 - already gone
            pass
        try:
            self.conn.transport.stop()
        except Exception:  # noqa: BLE001 - already gone
            pass


# ---------------------------------------------------------------------------------------------
# Raw frames.


def escape(text: str, version: str) -> str:
    """A header name or value escaped as ``version`` escapes them (1.0: not at all)."""
    if version == "1.0":
        return text
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")
    if version == "1.2":
        text = text.replace("\r", "\\r")
    return text


def unescape(text: str) -> str:
    """A 1.1/1.2 header name or value as it reads unescaped."""
    out, chars = [], iter(text)
    for c in chars:
        if c != "\\":
            out.append(c)
            continue
        out.append({"n": "\n", "c": ":", "\\": "\\", "r": "\r"}[next(chars)])
    return "".join(out)


def frame_bytes(
    command: str,
    headers: list[tuple[str, str]] | dict[str, str] | None = None,
    body: bytes | str = b"",
    *,
    version: str = "1.0",
    content_length: bool = False,
) -> bytes:
    """A frame's bytes: command, headers in order (escaped for ``version``; 1.0 sends them
    as they are), a blank line, the body and the NUL. ``content_length`` adds the header."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    data = body.encode() if isinstance(body, str) else body
    if content_length:
        items.append(("content-length", str(len(data))))
    head = command + "\n"
    for name, value in items:
        head += f"{escape(name, version)}:{escape(value, version)}\n"
    return head.encode() + b"\n" + data + b"\x00"


@dataclass
class RawFrame:
    """A frame the broker sent: headers in order, exactly as on the wire (not unescaped)."""

    command: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes = field(repr=False, default=b"")

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` as on the wire."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(f"{self.command} frame has no {name!r} header: {self.headers}")
        return value


def parse_frame(data: bytes) -> tuple[RawFrame | None, int, int]:
    """The frame at the start of ``data`` after any heart-beat EOLs, as (frame, bytes it
    takes up, heart-beats skipped); frame is None while only part of one has arrived."""
    at = 0
    while at < len(data) and data[at : at + 1] in (b"\n", b"\r"):
        at += 1
    beats = data[:at].count(b"\n")
    end_of_head = data.find(b"\n\n", at)
    end_of_head_crlf = data.find(b"\r\n\r\n", at)
    if end_of_head < 0 and end_of_head_crlf < 0:
        return None, at, beats
    if end_of_head < 0 or (0 <= end_of_head_crlf < end_of_head):
        head, body_start = data[at:end_of_head_crlf], end_of_head_crlf + 4
    else:
        head, body_start = data[at:end_of_head], end_of_head + 2
    lines = head.decode().split("\n")
    lines = [line.removesuffix("\r") for line in lines]
    headers = [tuple(line.split(":", 1)) for line in lines[1:]]
    frame = RawFrame(lines[0], headers, b"")  # type: ignore[arg-type]
    length = frame.get("content-length")
    if length is not None:
        end = body_start + int(length)
        if len(data) <= end:
            return None, at, beats
        assert data[end] == 0, f"no NUL after a {length}-byte body: {data!r}"
    else:
        end = data.find(b"\x00", body_start)
        if end < 0:
            return None, at, beats
    frame.body = data[body_start:end]
    frame.raw = data[at : end + 1]
    return frame, end + 1, beats


class RawStompConnection:
    """A connection carrying hand-built STOMP. What the broker sends is read as one byte
    stream, a whole frame at a time with a deadline; heart-beat EOLs between frames are
    counted in ``heartbeats``. Subclasses supply the transport."""

    def __init__(self) -> None:
        self.buffer = b""
        self.heartbeats = 0
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

    def send_frame(self, command: str, headers=None, body: bytes | str = b"", **options) -> None:
        """Sends ``frame_bytes(command, headers, body, **options)``."""
        self.send(frame_bytes(command, headers, body, **options))

    def subscribe(self, destination: str, id: str = "s1", version: str = "1.2") -> None:
        """SUBSCRIBE to ``destination`` as ``id`` with a receipt, and waits for the RECEIPT
        (the subscription is in place once it arrives)."""
        self.send_frame(
            "SUBSCRIBE",
            [("destination", destination), ("id", id), ("receipt", "subscribed")],
            version=version,
        )
        assert self.expect_frame("RECEIPT")["receipt-id"] == "subscribed"

    def _take_heartbeats(self) -> None:
        at = 0
        while at < len(self.buffer) and self.buffer[at : at + 1] in (b"\n", b"\r"):
            at += 1
        self.heartbeats += self.buffer[:at].count(b"\n")
        self.buffer = self.buffer[at:]

    def read_frame(self, timeout: float = WAIT) -> RawFrame:
        """The next frame. AssertionError if none arrives within ``timeout`` seconds or the
        broker ends the connection first."""
        deadline = time.monotonic() + timeout
        while True:
            self._take_heartbeats()
            frame, size, _ = parse_frame(self.buffer)
            if frame is not None:
                self.buffer = self.buffer[size:]
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no frame within {timeout} s (unread: {self.buffer!r})")
            data = self._receive(remaining)
            if data == b"":
                raise AssertionError(f"the broker closed the connection (unread: {self.buffer!r})")
            self.buffer += data or b""

    def expect_frame(self, command: str, timeout: float = WAIT) -> RawFrame:
        """The next frame, which must be a ``command``."""
        frame = self.read_frame(timeout)
        assert frame.command == command, f"{command} expected, got {frame}"
        return frame

    def wait_heartbeats(self, count: int, timeout: float = WAIT) -> None:
        """Reads until ``count`` heart-beat EOLs have arrived in all (frames are an error)."""
        deadline = time.monotonic() + timeout
        while True:
            self._take_heartbeats()
            if self.heartbeats >= count:
                return
            assert not self.buffer, f"a frame instead of heart-beats: {self.buffer!r}"
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{self.heartbeats} heart-beats in {timeout} s, {count} expected"
            data = self._receive(remaining)
            assert data != b"", "the broker closed the connection"
            self.buffer += data or b""

    def wait_closed(self, timeout: float = CLOSE_WAIT) -> bytes:
        """Waits until the broker ends the connection (end of stream or a reset), notes when
        in ``closed_at``; returns what it sent that was not read."""
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

    def expect_error_and_close(self, timeout: float = WAIT) -> RawFrame:
        """The next frame must be an ERROR (with a ``message`` header and a body), after
        which the broker closes the connection; returns the ERROR."""
        error = self.expect_frame("ERROR", timeout)
        assert error.get("message"), f"ERROR without a message header: {error}"
        assert error.body.strip(), f"ERROR without a body: {error}"
        rest = self.wait_closed()
        assert rest.strip(b"\r\n") == b"", f"bytes after the ERROR: {rest!r}"
        return error

    def connect(
        self,
        version: str = "1.2",
        *,
        login: str | None = "guest",
        passcode: str | None = "guest",
        command: str = "CONNECT",
        heart_beat: str | None = None,
        host: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> RawFrame:
        """Sends CONNECT (or STOMP) accepting ``version`` ("1.0": no accept-version header at
        all) and expects CONNECTED; returns it."""
        headers: list[tuple[str, str]] = []
        if version != "1.0":
            headers.append(("accept-version", version))
        if host is not None:
            headers.append(("host", host))
        if login is not None:
            headers.append(("login", login))
        if passcode is not None:
            headers.append(("passcode", passcode))
        if heart_beat is not None:
            headers.append(("heart-beat", heart_beat))
        headers += extra or []
        self.send_frame(command, headers)
        return self.expect_frame("CONNECTED")


class RawStomp(RawStompConnection):
    """Raw STOMP on a TCP socket (``sock``, there for shutdowns and reads a test does
    itself)."""

    def __init__(self, listener: tuple[str, int]) -> None:
        super().__init__()
        self.sock = socket.create_connection(listener, timeout=WAIT)

    def send(self, data: bytes) -> None:
        """Sends; a broker that already closed the connection is not an error here (the next
        read says so)."""
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


class RawStompWebSocket(RawStompConnection):
    """Raw STOMP over a WebSocket at ``/ws`` (websocket-client). Each ``send`` is one message,
    binary or text as ``text`` says; replies are read as one stream however the broker cut
    them into messages, and ``opcodes`` records the kind of each message that came
    (``websocket.ABNF.OPCODE_TEXT`` or ``OPCODE_BINARY``). ``subprotocols`` are offered in
    Sec-WebSocket-Protocol; the one the broker chose is ``subprotocol``."""

    def __init__(
        self,
        listener: tuple[str, int],
        subprotocols: list[str] | None = None,
        *,
        text: bool = True,
    ) -> None:
        super().__init__()
        host, port = listener
        subprotocols = ["v12.stomp"] if subprotocols is None else subprotocols
        options = {"subprotocols": subprotocols} if subprotocols else {}
        self.ws = websocket.create_connection(f"ws://{host}:{port}/ws", timeout=WAIT, **options)
        self.subprotocol = self.ws.getsubprotocol()
        self.text = text
        self.opcodes: list[int] = []

    def send(self, data: bytes) -> None:
        """One WebSocket message (text or binary as the connection was made)."""
        try:
            if self.text:
                self.ws.send(data.decode())
            else:
                self.ws.send_binary(data)
        except (websocket.WebSocketConnectionClosedException, BrokenPipeError):
            pass

    def close(self) -> None:
        self.ws.close()

    def _receive(self, timeout: float) -> bytes | None:
        self.ws.settimeout(timeout)
        try:
            opcode, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketConnectionClosedException, ConnectionResetError):
            return b""
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return b""
        self.opcodes.append(opcode)
        return data


# ---------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture
def stomp(broker) -> Iterator[Callable[..., StompClient]]:
    """Makes stomp.py clients (not yet connected): ``stomp(version="1.2", listener="stomp",
    target=None, **options)`` for the shared broker's STOMP listener, or ``target``'s. Every
    client is closed when the test ends."""
    made: list[StompClient] = []

    def make(
        version: str = "1.2", *, listener: str = "stomp", target=None, **options
    ) -> StompClient:
        client = StompClient((target or broker).listeners[listener], version, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def stomp_connected(stomp) -> Callable[..., StompClient]:
    """``stomp(...)`` then ``connect()`` as guest: a client ready to use."""

    def make(version: str = "1.2", **options) -> StompClient:
        client = stomp(version, **options)
        client.connect()
        return client

    return make


@pytest.fixture
def raw_stomp(broker) -> Iterator[Callable[..., RawStomp]]:
    """Opens ``RawStomp`` clients: ``raw_stomp()`` to the shared broker's STOMP listener,
    ``raw_stomp(other_broker)`` to another's; all are closed when the test ends."""
    opened: list[RawStomp] = []

    def open_one(target=None) -> RawStomp:
        client = RawStomp((target or broker).listeners["stomp"])
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        client.close()


@pytest.fixture
def raw_stomp_ws(broker) -> Iterator[Callable[..., RawStompWebSocket]]:
    """Opens ``RawStompWebSocket``s to one of the shared broker's listeners:
    ``raw_stomp_ws("web-stomp", ["v12.stomp"], text=False)``; closed when the test ends."""
    opened: list[RawStompWebSocket] = []

    def open_one(listener: str = "web-stomp", subprotocols=None, *, text: bool = True):
        client = RawStompWebSocket(broker.listeners[listener], subprotocols, text=text)
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - already gone
            pass
