"""Memory and descriptors: what a client can make the broker hold, mostly before it has
logged in (issue 13, defects 8 to 11). Each attack stops as soon as the broker's resident
memory passes ``RSS_BOUND`` (so a broker without a limit is caught before it takes the
machine's memory) and the test then fails on that peak; a broker with limits stops reading or
closes the connection, and the attack runs out its few seconds.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from amqp_raw import (
    FRAME_BODY,
    QUEUE_BIND_OK,
    QUEUE_DECLARE_OK,
    RawAmqp,
    content_header,
    frame,
    method,
    shortstr,
)
from flood import close_all, pump, pump_many
from mqtt_raw import RawClient, connect_packet, remaining_length, string
from stomp_clients import GUEST, RawStomp, frame_bytes
from ws_raw import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    RawWebSocketClient,
    client_frame,
    frame_header,
)

#: Seconds a flood lasts at most.
FLOOD_SECONDS = 8.0
#: A flood's unit: 512 masked pings of 125 bytes (the most a control frame may carry).
PINGS = client_frame(OP_PING, b"p" * 125) * 512
#: The STOMP body sent in one CONNECT frame before any login (defect 10: 16 MiB was taken).
CONNECT_BODY = 16 * 1024 * 1024 - 1
#: Connections sending such a CONNECT.
CONNECT_FLOODS = 40
#: A WebSocket message sent before any login (defect 10: 64 MiB was taken), in frames of the
#: largest size taken (16 MiB).
WS_FRAGMENT = 16 * 1024 * 1024
WS_FRAGMENTS = 4
#: Connections sending such a message.
WS_FLOODS = 10
#: Silent TCP connections to the HTTP listener (defect 9) and the soft open-files limit the
#: broker is started with (the usual default).
SILENT_CONNECTIONS = 1100
OPEN_FILES = 1024
#: Seconds a new client gets to be served while the silent connections are open.
NEW_CLIENT_WAIT = 5.0
#: Fresh connections per protocol (MQTT, STOMP) that each publish once during a memory alarm,
#: and the size of that publish (defect 11).
ALARM_CONNECTIONS = 40
ALARM_PAYLOAD = 8 * 1024 * 1024
#: Body frames of an AMQP publish during the alarm, each of the broker's default frame_max.
AMQP_BODY_FRAMES = 64
AMQP_FRAME_MAX = 131072
ALARM_CONFIG = "[alarms]\nmemory_high_watermark_bytes = 1\ncheck_interval_ms = 20\n"
ZEROS = b"\x00" * 65536


def test_web_stomp_ping_flood_before_any_stomp_byte(arena):
    """Pings without end on web-stomp, never reading the pongs, before any STOMP frame: the
    pongs must not pile up in the broker without a bound."""
    arena.start()
    with arena.attack():
        client = RawWebSocketClient(arena.listeners["web-stomp"], "v12.stomp", receive_buffer=4096)
        flooded = pump(
            client.sock, PINGS, seconds=FLOOD_SECONDS, stall=2.0, stop=arena.memory_exceeded
        )
        client.close()
    arena.assert_survived()
    print(f"ping flood: {flooded.sent / 2**20:.0f} MiB sent; {flooded.ended}")


def test_web_mqtt_ping_flood_after_login(arena):
    """The same flood on web-mqtt after a successful CONNECT: pongs and output stay bounded
    after login too."""
    arena.start()
    with arena.attack():
        client = RawWebSocketClient(arena.listeners["web-mqtt"], "mqtt", receive_buffer=4096)
        client.send_message(connect_packet("adversarial-pings"), OP_BINARY)
        opcode, connack = client.read_message()
        assert (opcode, connack) == (OP_BINARY, b"\x20\x02\x00\x00"), "CONNECT not accepted"
        flooded = pump(
            client.sock, PINGS, seconds=FLOOD_SECONDS, stall=2.0, stop=arena.memory_exceeded
        )
        client.close()
    arena.assert_survived()
    print(f"ping flood: {flooded.sent / 2**20:.0f} MiB sent; {flooded.ended}")


def test_stomp_connect_frames_with_16_mib_bodies(arena):
    """Forty connections each send a CONNECT frame (no login yet) followed by a 16 MiB body
    that never ends: before authentication a client may not make the broker buffer that."""
    arena.start()

    def open_connection(_: int) -> socket.socket:
        sock = socket.create_connection(arena.listeners["stomp"], timeout=5)
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n")
        return sock

    with arena.attack():
        sockets, pumped = pump_many(
            CONNECT_FLOODS,
            open_connection,
            b"x" * 65536,
            total=CONNECT_BODY,
            stall=0.5,
            seconds=15.0,
            stop=arena.memory_exceeded,
            workers=8,
        )
    try:
        arena.assert_survived()
    finally:
        close_all(sockets)
    print(f"CONNECT bodies: {sum(p.sent for p in pumped) / 2**20:.0f} MiB sent")


def test_websocket_messages_of_64_mib_before_login(arena):
    """Ten WebSocket connections to web-stomp each send a 64 MiB binary message (four frames
    of 16 MiB, the largest frame taken), all but its last byte, before any STOMP frame: the
    message size a client may make the broker buffer before it has logged in must be
    bounded."""
    arena.start()
    deadline = time.monotonic() + 15.0
    sockets: list[socket.socket] = []

    def send_message(_: int) -> int:
        client = RawWebSocketClient(arena.listeners["web-stomp"], "v12.stomp")
        sockets.append(client.sock)
        sent = 0
        for n in range(WS_FRAGMENTS):
            last = n == WS_FRAGMENTS - 1
            client.sock.settimeout(1.0)
            try:
                client.sock.sendall(
                    frame_header(OP_CONTINUATION if n else OP_BINARY, WS_FRAGMENT, fin=last)
                )
            except OSError:
                break
            pumped = pump(
                client.sock,
                ZEROS,
                total=WS_FRAGMENT - (1 if last else 0),
                seconds=max(0.1, deadline - time.monotonic()),
                stall=0.5,
                stop=arena.memory_exceeded,
            )
            sent += pumped.sent
            if pumped.ended != "all sent":
                break
        return sent

    with arena.attack():
        with ThreadPoolExecutor(max_workers=WS_FLOODS) as pool:
            sent = sum(pool.map(send_message, range(WS_FLOODS)))
    try:
        arena.assert_survived()
    finally:
        close_all(sockets)
    print(f"WebSocket messages: {sent / 2**20:.0f} MiB sent")


def test_silent_http_connections_do_not_lock_out_new_clients(arena):
    """1,100 TCP connections to the HTTP listener that never send a byte, against a broker
    started with the usual soft limit of 1,024 open files: a new client of each protocol must
    still be served (the broker raises its limit to the hard limit and times out silent
    connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 2 * SILENT_CONNECTIONS, (
        f"this test needs a hard open-files limit of at least {2 * SILENT_CONNECTIONS} "
        f"(have {hard}) to open its silent connections"
    )
    if soft < 2 * SILENT_CONNECTIONS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    arena.start(open_files=OPEN_FILES)
    silent: list[socket.socket] = []
    try:
        with arena.attack():
            # Each connect returns once the kernel completed the handshake, so all of them
            # are queued for the broker's accept before the new clients below.
            for _ in range(SILENT_CONNECTIONS):
                silent.append(socket.create_connection(arena.listeners["http"], timeout=5))
            served = new_clients_served(arena.listeners)
        arena.assert_survived()
    finally:
        close_all(silent)
    refused = {name: outcome for name, outcome in served.items() if outcome != "served"}
    assert not refused, f"new clients not served while silent connections are open: {refused}"


def new_clients_served(listeners: dict[str, tuple[str, int]]) -> dict[str, str]:
    """Connects a new client of each protocol at once (AMQP, MQTT, STOMP, STOMP over
    WebSocket) and says for each whether it was served within ``NEW_CLIENT_WAIT``."""

    def amqp() -> None:
        RawAmqp(listeners["amqp"], timeout=NEW_CLIENT_WAIT).open().close()

    def mqtt() -> None:
        client = RawClient(listeners["mqtt"])
        try:
            client.send(connect_packet("adversarial-newcomer"))
            first, body = client.read_packet(timeout=NEW_CLIENT_WAIT)
            assert (first, body) == (0x20, b"\x00\x00"), f"CONNACK {first:#x} {body!r}"
        finally:
            client.close()

    def stomp() -> None:
        client = RawStomp(listeners["stomp"])
        try:
            client.send_frame("CONNECT", [("accept-version", "1.2"), *GUEST], version="1.2")
            client.expect_frame("CONNECTED", timeout=NEW_CLIENT_WAIT)
        finally:
            client.close()

    def web_stomp() -> None:
        client = RawWebSocketClient(listeners["web-stomp"], "v12.stomp", timeout=NEW_CLIENT_WAIT)
        try:
            connect = frame_bytes("CONNECT", [("accept-version", "1.2"), *GUEST])
            client.send_message(connect, OP_TEXT)
            _, reply = client.read_message(timeout=NEW_CLIENT_WAIT)
            assert reply.startswith(b"CONNECTED"), f"{reply[:60]!r}"
        finally:
            client.close()

    outcomes: dict[str, str] = {}

    def attempt(name: str, connect) -> None:
        try:
            connect()
            outcomes[name] = "served"
        except Exception as error:  # noqa: BLE001 - reported in the assertion
            outcomes[name] = repr(error)[:160]

    threads = [
        threading.Thread(target=attempt, args=(name, connect), daemon=True)
        for name, connect in [
            ("amqp", amqp),
            ("mqtt", mqtt),
            ("stomp", stomp),
            ("web-stomp", web_stomp),
        ]
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + NEW_CLIENT_WAIT + 5
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    for name in ("amqp", "mqtt", "stomp", "web-stomp"):
        outcomes.setdefault(name, "no answer")
    return outcomes


def test_fresh_connections_publishing_8_mib_during_a_memory_alarm(arena):
    """With the memory alarm raised (a 1-byte watermark), forty fresh MQTT connections, forty
    fresh STOMP connections and forty fresh AMQP connections each publish 8 MiB to a queue
    nobody consumes: the alarm must hold back a connection's first publish too, so none of it
    is queued. The canary here only does round trips that publish nothing (publishers are
    held, as they should be)."""
    arena.start(ALARM_CONFIG, control_canary=True)
    setup = RawAmqp(arena.listeners["amqp"]).open()
    setup.queue_declare("adversarial-held")
    setup.expect(QUEUE_DECLARE_OK)
    setup.queue_bind("adversarial-held", "amq.topic", "adversarial.held")
    setup.expect(QUEUE_BIND_OK)
    setup.close()

    def open_mqtt(i: int) -> socket.socket:
        client = RawClient(arena.listeners["mqtt"])
        client.send(connect_packet(f"adversarial-alarm-{i}"))
        assert client.read_packet()[0] == 0x20, "CONNECT not accepted"
        topic = string("adversarial/held")
        client.sock.sendall(b"\x30" + remaining_length(len(topic) + ALARM_PAYLOAD) + topic)
        return client.sock

    def open_stomp(_: int) -> socket.socket:
        client = RawStomp(arena.listeners["stomp"])
        client.connect("1.2")
        head = "SEND\ndestination:/amq/queue/adversarial-held\n"
        client.sock.sendall(f"{head}content-length:{ALARM_PAYLOAD}\n\n".encode())
        return client.sock

    def open_amqp(_: int) -> socket.socket:
        client = RawAmqp(arena.listeners["amqp"]).open()
        assert client.frame_max == AMQP_FRAME_MAX, f"frame_max {client.frame_max} offered"
        client.send(
            method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("adversarial-held") + b"\x00")
            + content_header(1, AMQP_BODY_FRAMES * (AMQP_FRAME_MAX - 8))
        )
        return client.sock

    # Each: how to open a publisher and send the publish's head, the unit its payload is sent
    # in, the payload's size on the wire and what ends the publish.
    publishers = [
        (open_mqtt, b"m" * 65536, ALARM_PAYLOAD, b""),
        (open_stomp, b"m" * 65536, ALARM_PAYLOAD, b"\x00"),
        (
            open_amqp,
            frame(FRAME_BODY, 1, b"m" * (AMQP_FRAME_MAX - 8)),
            AMQP_BODY_FRAMES * AMQP_FRAME_MAX,
            b"",
        ),
    ]
    sockets: list[socket.socket] = []
    sent = 0
    with arena.attack():
        for open_connection, unit, total, trailer in publishers:
            opened, pumped = pump_many(
                ALARM_CONNECTIONS,
                open_connection,
                unit,
                total=total,
                stall=0.5,
                seconds=12.0,
                stop=arena.memory_exceeded,
                trailer=trailer,
            )
            sockets += opened
            sent += sum(p.sent for p in pumped)
    try:
        arena.assert_survived()
    finally:
        close_all(sockets)
    print(f"publishes during the alarm: {sent / 2**20:.0f} MiB sent")
