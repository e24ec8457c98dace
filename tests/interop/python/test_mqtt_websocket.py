"""MQTT over WebSocket, on both listeners that carry it: ``web-mqtt`` (MQTT only, at /ws,
MQTT assumed when the client names no subprotocol) and ``http`` (at /ws, the subprotocol
``mqtt`` required to pick MQTT).

paho covers the client's view; the ``websocket`` module (websocket-client) sends raw MQTT
bytes as binary WebSocket messages, to pin that WebSocket message boundaries mean nothing to
MQTT: a packet may be split across messages, several may share one, and what comes back is
read as one byte stream.
"""

from __future__ import annotations

import struct
import time

import pytest
import websocket

from mqtt_clients import WAIT

WEBSOCKET_LISTENERS = ["web-mqtt", "http"]

# ---------------------------------------------------------------------------------------------
# Hand-built packets and a raw WebSocket.


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def packet(first: int, body: bytes = b"") -> bytes:
    return bytes([first]) + _length(len(body)) + body


def connect_packet(client_id: str) -> bytes:
    """CONNECT from guest, clean session, keep-alive 60."""
    body = _string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + _string(client_id)
    return packet(0x10, body + _string("guest") + _string("guest"))


def subscribe_packet(packet_id: int, topic: str, qos: int) -> bytes:
    return packet(0x82, struct.pack("!H", packet_id) + _string(topic) + bytes([qos]))


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 1) -> bytes:
    body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(0x30 | (qos << 1), body)


CONNACK_ACCEPTED = (0x20, b"\x00\x00")


class RawWebSocket:
    """A websocket-client connection carrying hand-built MQTT; replies are read as a stream
    (however the broker cut them into messages)."""

    def __init__(self, listener: tuple[str, int], subprotocol: str | None = "mqtt") -> None:
        host, port = listener
        options = {"subprotocols": [subprotocol]} if subprotocol else {}
        self.ws = websocket.create_connection(f"ws://{host}:{port}/ws", timeout=WAIT, **options)
        self.received = b""
        self.messages = 0

    def close(self) -> None:
        self.ws.close()

    def send(self, data: bytes) -> None:
        """One binary WebSocket message."""
        self.ws.send_binary(data)

    def read_packet(self, timeout: float = WAIT) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._split_one()
            if parsed is not None:
                return parsed
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no MQTT packet over the WebSocket within the deadline"
            self.ws.settimeout(remaining)
            data = self.ws.recv()
            assert data, f"the WebSocket closed (unread: {self.received!r})"
            self.received += data.encode() if isinstance(data, str) else data
            self.messages += 1

    def _split_one(self) -> tuple[int, bytes] | None:
        data = self.received
        length, multiplier, at = 0, 1, 1
        while True:
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
        self.received = data[at + length :]
        return data[0], data[at : at + length]


@pytest.fixture
def raw_ws(broker):
    """Opens raw WebSocket connections to one of the shared broker's listeners."""
    opened: list[RawWebSocket] = []

    def open_ws(listener: str, subprotocol: str | None = "mqtt") -> RawWebSocket:
        client = RawWebSocket(broker.listeners[listener], subprotocol)
        opened.append(client)
        return client

    yield open_ws
    for client in opened:
        client.close()


def topic_for(names, role: str) -> str:
    return names(role).replace("-", "/")


# ---------------------------------------------------------------------------------------------
# paho over WebSocket.


@pytest.mark.parametrize("listener", WEBSOCKET_LISTENERS)
def test_paho_over_websocket_exchanges_messages_with_paho_over_tcp(mqtt, names, listener):
    """A paho client over WebSocket (path /ws) and one over TCP are clients of the same
    broker: each receives what the other publishes."""
    over_ws = mqtt(names("ws"), listener=listener)
    over_tcp = mqtt(names("tcp"))
    over_ws.connect()
    over_tcp.connect()
    to_ws, to_tcp = topic_for(names, "to-ws"), topic_for(names, "to-tcp")
    assert over_ws.subscribe((to_ws, 1)) == [1]
    assert over_tcp.subscribe((to_tcp, 1)) == [1]
    over_tcp.publish(to_ws, b"tcp to websocket", qos=1)
    over_ws.publish(to_tcp, b"websocket to tcp", qos=1)
    got_ws, got_tcp = over_ws.expect_message(), over_tcp.expect_message()
    assert (got_ws.topic, got_ws.payload) == (to_ws, b"tcp to websocket")
    assert (got_tcp.topic, got_tcp.payload) == (to_tcp, b"websocket to tcp")


@pytest.mark.parametrize("listener", WEBSOCKET_LISTENERS)
def test_an_amqp_publish_reaches_a_websocket_subscriber(mqtt, channel, names, listener):
    """A pika publish to amq.topic with routing key ``<prefix>.a.b`` reaches a paho
    subscriber over WebSocket on ``<prefix>/a/b``: the routing key's ``.`` are MQTT's ``/``."""
    prefix = names("amqp")
    subscriber = mqtt(names("sub"), listener=listener)
    subscriber.connect()
    assert subscriber.subscribe((f"{prefix}/a/b", 1)) == [1]
    channel.basic_publish("amq.topic", f"{prefix}.a.b", b"from AMQP")
    message = subscriber.expect_message()
    assert (message.topic, message.payload) == (f"{prefix}/a/b", b"from AMQP")


# ---------------------------------------------------------------------------------------------
# Raw MQTT bytes in WebSocket messages.


@pytest.mark.parametrize("listener", WEBSOCKET_LISTENERS)
@pytest.mark.parametrize("split", ["after-type", "after-fixed-header", "inside-client-id"])
def test_a_connect_split_across_two_websocket_messages_is_accepted(
    raw_ws, names, listener, split
):
    """A CONNECT cut into two binary messages (after its first byte, after its fixed header,
    inside its client id) is put back together: the CONNACK arrives, accepting it."""
    client = raw_ws(listener)
    data = connect_packet(names("split"))
    split_at = {
        "after-type": 1,
        "after-fixed-header": next(i for i in range(1, 5) if not data[i] & 0x80) + 1,
        "inside-client-id": len(data) - 2 * len(_string("guest")) - 4,
    }[split]
    client.send(data[:split_at])
    client.send(data[split_at:])
    assert client.read_packet() == CONNACK_ACCEPTED


@pytest.mark.parametrize("listener", WEBSOCKET_LISTENERS)
def test_connect_subscribe_and_publish_batched_in_one_websocket_message(raw_ws, names, listener):
    """CONNECT, SUBSCRIBE and a QoS 1 PUBLISH to the subscribed topic in a single binary
    message: CONNACK, then SUBACK, then the PUBACK and the delivered PUBLISH (in either order)
    come back, however many messages they are spread over."""
    client = raw_ws(listener)
    topic = topic_for(names, "batched")
    client.send(
        connect_packet(names("batch"))
        + subscribe_packet(3, topic, 1)
        + publish_packet(topic, b"batched payload", qos=1, packet_id=9)
    )
    assert client.read_packet() == CONNACK_ACCEPTED
    assert client.read_packet() == (0x90, b"\x00\x03\x01")
    rest = [client.read_packet(), client.read_packet()]
    assert (0x40, b"\x00\x09") in rest, f"no PUBACK for packet 9 in {rest!r}"
    [(first, body)] = [p for p in rest if p[0] >> 4 == 3]
    assert first & 0x06 == 0x02, f"expected a QoS 1 PUBLISH, got {first:#x}"
    topic_length = struct.unpack("!H", body[:2])[0]
    assert body[2 : 2 + topic_length].decode() == topic
    assert body[2 + topic_length + 2 :] == b"batched payload"  # after the packet identifier


# ---------------------------------------------------------------------------------------------
# Subprotocol negotiation.


@pytest.mark.parametrize(
    "subprotocol", [None, "bogus", "v12.stomp"], ids=["none", "bogus", "stomp"]
)
def test_the_http_listener_refuses_an_upgrade_without_the_mqtt_subprotocol(broker, subprotocol):
    """The http listener serves several protocols on /ws and picks one by
    Sec-WebSocket-Protocol: with none, or one it does not serve, the upgrade is refused with
    HTTP 400."""
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        RawWebSocket(broker.listeners["http"], subprotocol)
    assert refused.value.status_code == 400


def test_the_web_mqtt_listener_assumes_mqtt_without_a_subprotocol(raw_ws, names):
    """The web-mqtt listener speaks only MQTT: an upgrade naming no subprotocol is accepted
    and carries MQTT (CONNECT is answered, and so is PINGREQ)."""
    client = raw_ws("web-mqtt", subprotocol=None)
    client.send(connect_packet(names("plain")))
    assert client.read_packet() == CONNACK_ACCEPTED
    client.send(b"\xc0\x00")
    assert client.read_packet() == (0xD0, b"")
