"""Persistent MQTT sessions (clean_session = 0): subscriptions and queued messages wait for the
client across disconnects and broker restarts, deliveries in flight are resent with DUP and
their packet identifiers, a clean session throws the old one away, and a second connection
with the same client id takes the session over.

paho covers most of it; a bare socket client stands in where paho cannot: paho answers a
QoS 2 PUBLISH with PUBREC at once (``manual_ack`` only holds back the PUBCOMP), so holding a
QoS 2 delivery unacknowledged takes raw packets.
"""

from __future__ import annotations

import socket
import time

import pytest

from mqtt_clients import WAIT

# ---------------------------------------------------------------------------------------------
# A bare MQTT 3.1.1 client: CONNECT, SUBSCRIBE, and the QoS 2 handshake packet by packet.

CONNACK, PUBLISH, PUBREC, PUBREL, PUBCOMP, SUBACK = 2, 3, 5, 6, 7, 9


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        digit, length = length % 128, length // 128
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes([first_byte]) + bytes(encoded) + body


class RawMqtt:
    """One MQTT connection on a plain socket; packets are read with a deadline."""

    def __init__(self, listener: tuple[str, int]) -> None:
        self.sock = socket.create_connection(listener, timeout=WAIT)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, client_id: str, clean_session: bool) -> bool:
        """CONNECT as guest; expects CONNACK 0 and returns session present."""
        flags = 0xC0 | (0x02 if clean_session else 0)
        variable = _string("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big")
        self.send(_packet(0x10, variable + _string(client_id) + _string("guest") * 2))
        kind, _, body = self.read_packet()
        assert kind == CONNACK and body[1] == 0, f"CONNACK expected, got {kind} {body!r}"
        return bool(body[0] & 1)

    def subscribe(self, topic_filter: str, qos: int) -> None:
        self.send(_packet(0x82, (1).to_bytes(2, "big") + _string(topic_filter) + bytes([qos])))
        kind, _, body = self.read_packet()
        assert (kind, body) == (SUBACK, b"\x00\x01" + bytes([qos])), (kind, body)

    def publish_qos2(self, topic: str, payload: bytes, packet_id: int, dup: bool) -> None:
        body = _string(topic) + packet_id.to_bytes(2, "big") + payload
        self.send(_packet(0x34 | (0x08 if dup else 0), body))

    def pubrel(self, packet_id: int) -> None:
        self.send(_packet(0x62, packet_id.to_bytes(2, "big")))

    def expect_ack(self, kind: int) -> int:
        """The next packet, which must be of type ``kind`` (PUBREC, PUBCOMP); its id."""
        received, _, body = self.read_packet()
        assert received == kind, f"packet type {kind} expected, got {received}"
        return int.from_bytes(body, "big")

    def pubrec(self, packet_id: int) -> None:
        self.send(_packet(0x50, packet_id.to_bytes(2, "big")))

    def pubcomp(self, packet_id: int) -> None:
        self.send(_packet(0x70, packet_id.to_bytes(2, "big")))

    def _fill(self, needed: int, deadline: float) -> bool:
        while len(self.buffer) < needed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no packet from the broker within the deadline")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read_packet(self, timeout: float = WAIT) -> tuple[int, int, bytes]:
        """(packet type, flags, body) of the next packet."""
        deadline = time.monotonic() + timeout
        length, multiplier, index = 0, 1, 1
        while True:
            assert self._fill(index + 1, deadline), "the broker closed the connection"
            digit = self.buffer[index]
            length += (digit & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not digit & 0x80:
                break
        assert self._fill(index + length, deadline), "the broker closed the connection"
        first, body = self.buffer[0], self.buffer[index : index + length]
        self.buffer = self.buffer[index + length :]
        return first >> 4, first & 0x0F, body

    def expect_publish(self) -> dict:
        """The next packet, which must be a PUBLISH, decoded."""
        kind, flags, body = self.read_packet()
        assert kind == PUBLISH, f"PUBLISH expected, got packet type {kind}"
        qos = (flags >> 1) & 3
        size = int.from_bytes(body[:2], "big")
        topic, rest = body[2 : 2 + size].decode(), body[2 + size :]
        packet_id = None
        if qos:
            packet_id, rest = int.from_bytes(rest[:2], "big"), rest[2:]
        return dict(
            topic=topic, payload=rest, qos=qos, dup=bool(flags & 8), packet_id=packet_id
        )

    def expect_pubrel(self) -> int:
        kind, flags, body = self.read_packet()
        assert (kind, flags) == (PUBREL, 2), f"PUBREL expected, got packet type {kind}"
        return int.from_bytes(body, "big")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(broker):
    """Opens bare MQTT connections to the shared broker; closes them when the test ends."""
    opened: list[RawMqtt] = []

    def open_raw() -> RawMqtt:
        client = RawMqtt(broker.listeners["mqtt"])
        opened.append(client)
        return client

    yield open_raw
    for client in opened:
        client.close()


@pytest.fixture
def forget_sessions(mqtt):
    """Client ids whose persistent sessions are thrown away (a clean-session connect) on the
    shared broker when the test ends, so their durable queues do not pile up."""
    ids: list[str] = []
    yield ids
    for client_id in ids:
        cleaner = mqtt(client_id)
        cleaner.connect()
        cleaner.disconnect()


def persistent(mqtt, client_id: str, **options):
    """A paho client with clean_session=False that never reconnects by itself (a reconnect
    would take the session back from the connection under test)."""
    client = mqtt(client_id, clean_session=False, **options)
    client.paho.reconnect_delay_set(min_delay=120, max_delay=120)
    return client


def messages_until(client, payload: bytes, timeout: float = WAIT) -> list:
    """Messages ``client`` receives up to and including the first with ``payload``."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no message {payload!r} within {timeout} s; saw {seen}"
        seen.append(client.expect_message(timeout=remaining))
        if seen[-1].payload == payload:
            return seen


# ---------------------------------------------------------------------------------------------


def test_qos1_and_qos2_messages_published_while_offline_are_delivered_on_reconnect(
    mqtt, names, forget_sessions
):
    """A persistent session's subscription keeps collecting while the client is away; on
    reconnect CONNACK says session present and the QoS 1 and 2 messages arrive at their
    QoS."""
    topic, client_id = names("cmd"), names("device")
    forget_sessions.append(client_id)
    device = persistent(mqtt, client_id)
    assert device.connect() is False
    assert device.subscribe((topic, 2)) == [2]
    device.disconnect()

    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "at least once", qos=1)
    publisher.publish(topic, "exactly once", qos=2)

    device = persistent(mqtt, client_id)
    assert device.connect() is True
    received = [device.expect_message() for _ in range(2)]
    assert sorted((m.topic, m.payload, m.qos) for m in received) == [
        (topic, b"at least once", 1),
        (topic, b"exactly once", 2),
    ]
    device.expect_no_message(0.3)
    device.disconnect()


def test_qos0_messages_published_while_offline_wait_in_memory_for_a_persistent_session(
    mqtt, names, forget_sessions
):
    """QoS 0 publications are transient, but the persistent session's queue keeps them while
    the broker runs: they arrive after reconnect, at QoS 0, in order."""
    topic, client_id = names("telemetry"), names("device")
    forget_sessions.append(client_id)
    device = persistent(mqtt, client_id)
    device.connect()
    assert device.subscribe((topic, 1)) == [1]
    device.disconnect()

    publisher = mqtt(names("pub"))
    publisher.connect()
    for i in range(3):
        publisher.publish(topic, f"reading {i}", qos=0)
    # QoS 0 has no acknowledgement: wait until the three are in the session's queue.
    publisher.publish(topic, "marker", qos=1)

    device = persistent(mqtt, client_id)
    assert device.connect() is True
    received = messages_until(device, b"marker")
    assert [(m.payload, m.qos) for m in received] == [
        (b"reading 0", 0),
        (b"reading 1", 0),
        (b"reading 2", 0),
        (b"marker", 1),
    ]
    device.disconnect()


def test_a_persistent_session_survives_a_broker_restart(mqtt, names, start_broker):
    """Subscriptions (with their granted QoS) and queued QoS 1 and 2 messages survive a
    restart; a QoS 0 message queued before it is transient and is lost, as in RabbitMQ.
    A publication after the restart is routed by the restored subscription."""
    first = start_broker()
    topic, client_id = names("cmd"), names("device")
    device = persistent(mqtt, client_id, target=first)
    device.connect()
    assert device.subscribe((topic, 2)) == [2]
    device.disconnect()
    publisher = mqtt(names("pub"), target=first)
    publisher.connect()
    publisher.publish(topic, "qos 1 before restart", qos=1)
    publisher.publish(topic, "qos 2 before restart", qos=2)
    publisher.publish(topic, "qos 0 before restart", qos=0)
    publisher.disconnect()
    assert first.stop() == 0

    second = start_broker(data_dir=first.data_dir)
    publisher = mqtt(names("pub"), target=second)
    publisher.connect()
    publisher.publish(topic, "qos 2 after restart", qos=2)

    device = persistent(mqtt, client_id, target=second)
    assert device.connect() is True
    # QoS 2 messages reach paho's callback in order, after anything queued before them.
    received = messages_until(device, b"qos 2 after restart")
    assert sorted((m.payload, m.qos) for m in received) == [
        (b"qos 1 before restart", 1),
        (b"qos 2 after restart", 2),
        (b"qos 2 before restart", 2),
    ]
    device.expect_no_message(0.3)


def test_a_clean_session_discards_the_persistent_one(mqtt, names, forget_sessions):
    """Connecting with clean_session=True throws the persistent session away: no session
    present, none of its queued messages, no subscription left; and a later
    clean_session=False connect starts afresh (session present false)."""
    topic, client_id = names("cmd"), names("device")
    forget_sessions.append(client_id)
    device = persistent(mqtt, client_id)
    device.connect()
    assert device.subscribe((topic, 1)) == [1]
    device.disconnect()
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "stale", qos=1)

    clean = mqtt(client_id, clean_session=True)
    assert clean.connect() is False
    marker = names("marker")
    assert clean.subscribe((marker, 1)) == [1]
    publisher.publish(topic, "old subscription", qos=1)
    publisher.publish(marker, "marker", qos=1)
    message = clean.expect_message()
    assert (message.topic, message.payload) == (marker, b"marker")
    clean.expect_no_message(0.3)
    clean.disconnect()

    again = persistent(mqtt, client_id)
    assert again.connect() is False
    assert again.subscribe((marker, 1)) == [1]
    publisher.publish(topic, "old subscription", qos=1)
    publisher.publish(marker, "second marker", qos=1)
    message = again.expect_message()
    assert (message.topic, message.payload) == (marker, b"second marker")
    again.expect_no_message(0.3)
    again.disconnect()


def test_an_unacknowledged_qos1_delivery_is_resent_with_dup_and_the_same_packet_id(
    mqtt, names, forget_sessions
):
    """A QoS 1 delivery the client did not PUBACK before its connection dropped is sent
    again on reconnect, flagged DUP, with its packet identifier; once acknowledged it is
    not sent a third time."""
    topic, client_id = names("cmd"), names("device")
    forget_sessions.append(client_id)
    device = persistent(mqtt, client_id, manual_ack=True)
    device.connect()
    assert device.subscribe((topic, 1)) == [1]
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "open valve", qos=1)
    first = device.expect_message()
    assert (first.payload, first.qos, first.dup) == (b"open valve", 1, False)
    device.drop()  # no PUBACK

    device = persistent(mqtt, client_id, manual_ack=True)
    assert device.connect() is True
    again = device.expect_message()
    assert (again.payload, again.qos, again.dup, again.mid) == (
        b"open valve",
        1,
        True,
        first.mid,
    )
    device.ack(again.mid, 1)
    device.disconnect()

    device = persistent(mqtt, client_id)
    assert device.connect() is True
    publisher.publish(topic, "marker", qos=1)
    assert device.expect_message().payload == b"marker"
    device.disconnect()


def test_an_unacknowledged_qos2_delivery_is_resent_with_dup_and_the_same_packet_id(
    names, raw, mqtt, forget_sessions
):
    """A QoS 2 delivery the client did not PUBREC before its connection dropped is sent
    again on reconnect, flagged DUP, with its packet identifier; PUBREC then gets PUBREL
    for that identifier."""
    topic, client_id = names("cmd"), names("device")
    forget_sessions.append(client_id)
    device = raw()
    assert device.connect(client_id, clean_session=False) is False
    device.subscribe(topic, 2)
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "close valve", qos=2)
    first = device.expect_publish()
    assert (first["payload"], first["qos"], first["dup"]) == (b"close valve", 2, False)
    device.close()  # no PUBREC

    device = raw()
    assert device.connect(client_id, clean_session=False) is True
    again = device.expect_publish()
    assert again == dict(first, dup=True)
    device.pubrec(again["packet_id"])
    assert device.expect_pubrel() == again["packet_id"]
    device.pubcomp(again["packet_id"])
    device.close()


def test_after_pubrec_a_qos2_delivery_is_not_resent_but_its_pubrel_is(
    names, raw, mqtt, forget_sessions
):
    """Exactly once across a reconnect: after PUBREC the message is the client's, so a
    reconnect resends only the PUBREL (same identifier) whose PUBCOMP was missing, and
    never the PUBLISH."""
    topic, client_id = names("cmd"), names("device")
    forget_sessions.append(client_id)
    device = raw()
    device.connect(client_id, clean_session=False)
    device.subscribe(topic, 2)
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "once only", qos=2)
    delivery = device.expect_publish()
    device.pubrec(delivery["packet_id"])
    assert device.expect_pubrel() == delivery["packet_id"]
    device.close()  # no PUBCOMP

    device = raw()
    assert device.connect(client_id, clean_session=False) is True
    assert device.expect_pubrel() == delivery["packet_id"]
    device.pubcomp(delivery["packet_id"])
    publisher.publish(topic, "marker", qos=0)
    message = device.expect_publish()
    assert (message["payload"], message["qos"]) == (b"marker", 0)
    device.close()


def test_a_second_connection_with_the_same_client_id_takes_the_session_over(
    mqtt, names, forget_sessions
):
    """A second CONNECT (clean_session=False) with a client id in use closes the first
    connection and continues its session: session present, the subscription still
    delivers, and a delivery the first connection had not acknowledged is resent."""
    topic, client_id = names("cmd"), names("device")
    forget_sessions.append(client_id)
    first = persistent(mqtt, client_id, manual_ack=True)
    first.connect()
    assert first.subscribe((topic, 1)) == [1]
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "unacknowledged", qos=1)
    assert first.expect_message().payload == b"unacknowledged"

    second = persistent(mqtt, client_id)
    assert second.connect() is True
    first.wait_disconnected()
    first.paho.loop_stop()
    resent = second.expect_message()
    assert (resent.payload, resent.dup) == (b"unacknowledged", True)
    publisher.publish(topic, "after takeover", qos=1)
    message = second.expect_message()
    assert (message.topic, message.payload, message.qos) == (topic, b"after takeover", 1)
    second.disconnect()


def test_a_qos2_publication_resent_by_the_client_is_routed_once(
    mqtt, names, raw, forget_sessions
):
    """A client that resends a QoS 2 PUBLISH (DUP, same packet identifier) before PUBREL,
    on the same connection or after reconnecting to its persistent session, gets PUBREC
    again but the message is routed once; PUBREL completes it with PUBCOMP."""
    topic, client_id = names("report"), names("device")
    forget_sessions.append(client_id)
    watcher = mqtt(names("watcher"))
    watcher.connect()
    assert watcher.subscribe((topic, 2)) == [2]

    device = raw()
    device.connect(client_id, clean_session=False)
    device.publish_qos2(topic, b"meter 42", 7, dup=False)
    assert device.expect_ack(PUBREC) == 7
    device.publish_qos2(topic, b"meter 42", 7, dup=True)
    assert device.expect_ack(PUBREC) == 7
    device.close()  # no PUBREL yet

    device = raw()
    assert device.connect(client_id, clean_session=False) is True
    device.publish_qos2(topic, b"meter 42", 7, dup=True)
    assert device.expect_ack(PUBREC) == 7
    device.pubrel(7)
    assert device.expect_ack(PUBCOMP) == 7
    # The identifier is free again: a new publication with it is a new message.
    device.publish_qos2(topic, b"meter 43", 7, dup=False)
    assert device.expect_ack(PUBREC) == 7
    device.pubrel(7)
    assert device.expect_ack(PUBCOMP) == 7
    device.close()

    received = messages_until(watcher, b"meter 43")
    assert [(m.payload, m.qos) for m in received] == [(b"meter 42", 2), (b"meter 43", 2)]
    watcher.expect_no_message(0.3)
