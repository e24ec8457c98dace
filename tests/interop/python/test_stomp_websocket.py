"""STOMP over WebSocket: the web-stomp listener and the HTTP listener, both at ``/ws``.

Pinned here: the subprotocols ``v12.stomp``, ``v11.stomp`` and ``v10.stomp`` select STOMP (the
HTTP listener also serves MQTT, so there the subprotocol decides; web-stomp assumes STOMP when
none is offered); the handshake echoes the chosen subprotocol; text and binary messages from
the client are both accepted; WebSocket message boundaries mean nothing (several frames in
one message, one frame across several); the broker answers in text messages; stomp.py's
WebSocket client works; MQTT publications reach STOMP-over-WebSocket subscribers.
"""

from __future__ import annotations

import pytest
import websocket

from stomp_clients import GUEST, StompClient, frame_bytes

LISTENERS = ["web-stomp", "http"]
SUBPROTOCOLS = {"v12.stomp": "1.2", "v11.stomp": "1.1", "v10.stomp": "1.0"}


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("subprotocol", list(SUBPROTOCOLS))
def test_each_stomp_subprotocol_carries_stomp_and_is_answered_in_text(
    raw_stomp_ws, names, listener, subprotocol
):
    """Offering v12.stomp, v11.stomp or v10.stomp on either listener: the handshake picks it,
    CONNECT (of that version) gets CONNECTED, a message goes through a queue, and every
    message the broker sent was a text message."""
    version = SUBPROTOCOLS[subprotocol]
    client = raw_stomp_ws(listener, [subprotocol])
    assert client.subprotocol == subprotocol
    assert client.connect(version)["version"] == version
    destination = f"/queue/{names('q')}"
    client.subscribe(destination, version=version)
    client.send_frame("SEND", [("destination", destination)], "over websocket", version=version)
    message = client.expect_frame("MESSAGE")
    assert message.body == b"over websocket"
    assert client.opcodes and set(client.opcodes) == {websocket.ABNF.OPCODE_TEXT}


@pytest.mark.parametrize("text", [True, False], ids=["text", "binary"])
@pytest.mark.parametrize("listener", LISTENERS)
def test_text_and_binary_messages_are_both_accepted(raw_stomp_ws, names, listener, text):
    """The client may send its frames in text or in binary WebSocket messages."""
    client = raw_stomp_ws(listener, ["v12.stomp"], text=text)
    client.connect("1.2")
    destination = f"/queue/{names('q')}"
    client.subscribe(destination)
    client.send_frame("SEND", [("destination", destination)], "either kind")
    assert client.expect_frame("MESSAGE").body == b"either kind"


def test_web_stomp_assumes_stomp_when_no_subprotocol_is_offered(raw_stomp_ws):
    """The web-stomp listener serves STOMP to a client that offers no subprotocol (as
    RabbitMQ's Web-STOMP does)."""
    client = raw_stomp_ws("web-stomp", [])
    assert client.connect("1.2")["version"] == "1.2"


def test_the_http_listener_refuses_a_websocket_without_a_known_subprotocol(broker):
    """The HTTP listener serves MQTT and STOMP on /ws, so a client naming neither is refused
    at the handshake."""
    host, port = broker.listeners["http"]
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(f"ws://{host}:{port}/ws", timeout=5)


@pytest.mark.parametrize("listener", LISTENERS)
def test_several_frames_in_one_websocket_message_are_all_handled(raw_stomp_ws, names, listener):
    """CONNECT, SUBSCRIBE and SEND in a single WebSocket message: CONNECTED, the RECEIPT and
    the MESSAGE all come back, in order."""
    destination = f"/queue/{names('q')}"
    client = raw_stomp_ws(listener, ["v12.stomp"])
    client.send(
        frame_bytes("CONNECT", [("accept-version", "1.2"), *GUEST])
        + frame_bytes("SUBSCRIBE", [("destination", destination), ("id", "s1"), ("receipt", "r")])
        + frame_bytes("SEND", [("destination", destination)], "batched")
    )
    assert client.expect_frame("CONNECTED")["version"] == "1.2"
    assert client.expect_frame("RECEIPT")["receipt-id"] == "r"
    assert client.expect_frame("MESSAGE").body == b"batched"


@pytest.mark.parametrize("listener", LISTENERS)
def test_one_frame_split_across_websocket_messages_is_reassembled(raw_stomp_ws, names, listener):
    """A SEND cut into four WebSocket messages (inside the command, a header and the body) is
    one frame: nothing happens until the last piece, then the RECEIPT and the whole MESSAGE
    come."""
    destination = f"/queue/{names('q')}"
    client = raw_stomp_ws(listener, ["v12.stomp"])
    client.connect("1.2")
    client.subscribe(destination)
    frame = frame_bytes(
        "SEND", [("destination", destination), ("receipt", "sent")], "split across messages"
    )
    cuts = [2, frame.index(b"receipt") + 3, len(frame) - 6]
    pieces = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)])]
    assert b"".join(pieces) == frame and len(pieces) == 4
    for piece in pieces[:-1]:
        client.send(piece)
    with pytest.raises(AssertionError, match="no frame"):
        client.read_frame(timeout=0.3)
    client.send(pieces[-1])
    frames = [client.read_frame(), client.read_frame()]
    assert sorted(f.command for f in frames) == ["MESSAGE", "RECEIPT"]
    assert next(f for f in frames if f.command == "MESSAGE").body == b"split across messages"


@pytest.mark.parametrize("listener", LISTENERS)
def test_a_one_mebibyte_frame_crosses_the_websocket_both_ways(raw_stomp_ws, names, listener):
    """A 1 MiB SEND in one WebSocket message is taken whole, and the MESSAGE carrying it back
    (cut into as many WebSocket messages as the broker likes, all text) reassembles to the same
    body."""
    destination = f"/queue/{names('q')}"
    client = raw_stomp_ws(listener, ["v12.stomp"], text=False)
    client.connect("1.2")
    client.subscribe(destination)
    body = b"z" * (1 << 20)
    client.send_frame("SEND", [("destination", destination)], body)
    message = client.expect_frame("MESSAGE", timeout=20)
    assert message.body == body
    assert set(client.opcodes) == {websocket.ABNF.OPCODE_TEXT}


@pytest.mark.parametrize("listener", LISTENERS)
def test_multibyte_utf8_bodies_are_still_answered_in_text_messages(raw_stomp_ws, names, listener):
    """A 600 KB body of two- and three-byte UTF-8 characters comes back in text WebSocket
    messages only: however the broker cuts its output into messages, it must not cut inside a
    character (a text message has to be valid UTF-8 by itself), so no message falls back to
    binary."""
    destination = f"/queue/{names('q')}"
    client = raw_stomp_ws(listener, ["v12.stomp"])
    client.connect("1.2")
    client.subscribe(destination)
    body = ("é€" * 120_000).encode()
    client.send_frame("SEND", [("destination", destination)], body)
    message = client.expect_frame("MESSAGE", timeout=20)
    assert message.body == body
    binary = client.opcodes.count(websocket.ABNF.OPCODE_BINARY)
    assert binary == 0, f"{binary} of the {len(client.opcodes)} messages were binary"


@pytest.mark.parametrize("binary_mode", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("listener", LISTENERS)
def test_stomp_py_websocket_client_round_trips(broker, names, listener, binary_mode):
    """stomp.py's WSStompConnection (offering v12.stomp) connects on either listener and moves
    a message, sending text or binary messages."""
    client = StompClient(
        broker.listeners[listener], "1.2", over_websocket=True, binary_mode=binary_mode
    )
    try:
        assert client.connect().headers["version"] == "1.2"
        client.round_trip(names)
    finally:
        client.close()


@pytest.mark.parametrize("listener", LISTENERS)
def test_an_mqtt_publication_reaches_a_stomp_over_websocket_subscriber(
    raw_stomp_ws, mqtt, names, listener
):
    """paho publishes B/x (over WebSocket on the HTTP listener, which then carries MQTT and
    STOMP side by side, or over TCP for web-stomp); the STOMP-over-WebSocket subscriber on
    /topic/B.x gets it."""
    base = names("t").replace(".", "_")
    client = raw_stomp_ws(listener, ["v12.stomp"])
    client.connect("1.2")
    client.subscribe(f"/topic/{base}.x")
    publisher = mqtt(names("pub"), listener="http" if listener == "http" else "mqtt")
    publisher.connect()
    publisher.publish(f"{base}/x", b"42", qos=1)
    message = client.expect_frame("MESSAGE")
    assert (message.body, message["destination"]) == (b"42", f"/topic/{base}.x")


@pytest.mark.parametrize("listener", LISTENERS)
def test_an_error_over_websocket_arrives_before_the_close(raw_stomp_ws, listener):
    """A refused CONNECT over WebSocket: the ERROR frame (message 'Bad CONNECT') arrives as a
    text message, then the broker closes the WebSocket."""
    client = raw_stomp_ws(listener, ["v12.stomp"])
    client.send_frame("CONNECT", [("accept-version", "1.2"), ("login", "guest"), ("passcode", "x")])
    error = client.expect_error_and_close()
    assert error["message"] == "Bad CONNECT"
    assert set(client.opcodes) == {websocket.ABNF.OPCODE_TEXT}
