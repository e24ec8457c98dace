"""MQTT over WebSocket, on both listeners that carry it: ``web-mqtt`` (MQTT only, at /ws,
MQTT assumed when the client names no subprotocol) and ``http`` (at /ws, the subprotocol
``mqtt`` required to pick MQTT).

paho covers the client's view; ``mqtt_raw.RawWebSocket`` (websocket-client) sends raw MQTT
bytes as binary WebSocket messages, to pin that WebSocket message boundaries mean nothing to
MQTT: a packet may be split across messages, several may share one, and what comes back is
read as one byte stream.
"""

from __future__ import annotations

import pytest
import websocket

from mqtt_raw import (
    CONNACK_ACCEPTED,
    RawWebSocket,
    connect_packet,
    parse_publish,
    publish_packet,
    string,
    subscribe_packet,
)

WEBSOCKET_LISTENERS = ["web-mqtt", "http"]


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
        "inside-client-id": len(data) - 2 * len(string("guest")) - 4,
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
        + subscribe_packet(3, (topic, 1))
        + publish_packet(topic, b"batched payload", qos=1, packet_id=9)
    )
    assert client.read_packet() == CONNACK_ACCEPTED
    assert client.read_packet() == (0x90, b"\x00\x03\x01")
    rest = [client.read_packet(), client.read_packet()]
    assert (0x40, b"\x00\x09") in rest, f"no PUBACK for packet 9 in {rest!r}"
    [delivered] = [parse_publish(*p) for p in rest if p[0] >> 4 == 3]
    assert delivered.qos == 1, f"expected a QoS 1 PUBLISH, got {delivered}"
    assert (delivered.topic, delivered.payload) == (topic, b"batched payload")


# ---------------------------------------------------------------------------------------------
# Subprotocol negotiation.


@pytest.mark.parametrize("subprotocol", [None, "bogus"], ids=["none", "bogus"])
def test_the_http_listener_refuses_an_upgrade_without_a_known_subprotocol(broker, subprotocol):
    """The http listener serves MQTT and STOMP on /ws and picks one by Sec-WebSocket-Protocol:
    with none, or one it does not serve, the upgrade is refused with HTTP 400."""
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
