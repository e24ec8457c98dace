"""Retained messages and the will (last will and testament) with paho, plus a bare socket
client for what paho will not do: stay silent past its keep-alive, or send a malformed packet.

Retained: delivered flagged retained to later subscribers only, replaced by a newer one,
cleared by an empty one, capped at the granted QoS, kept across a broker restart.
Will: published when the connection ends without DISCONNECT (socket dropped, keep-alive
expired, protocol error, session taken over), never after DISCONNECT; a retained will is
retained.
"""

from __future__ import annotations

import socket
import time

import pytest

from mqtt_clients import WAIT

# ---------------------------------------------------------------------------------------------
# A bare MQTT 3.1.1 client: just enough packets to connect with a will and then misbehave.

CONNACK = 2


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


def connect_packet(
    client_id: str,
    *,
    keepalive: int = 60,
    clean_session: bool = True,
    will: tuple[str, bytes, int, bool] | None = None,
    username: str = "guest",
    password: str = "guest",
) -> bytes:
    flags = 0xC0 | (0x02 if clean_session else 0)
    payload = _string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _string(topic) + _string(message)
    payload += _string(username) + _string(password)
    variable = _string("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    return _packet(0x10, variable + payload)


class RawMqtt:
    """One MQTT connection on a plain socket; packets are read with a deadline."""

    def __init__(self, listener: tuple[str, int]) -> None:
        self.sock = socket.create_connection(listener, timeout=WAIT)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, client_id: str, **options) -> bool:
        """Sends CONNECT, expects CONNACK 0; returns session present."""
        self.send(connect_packet(client_id, **options))
        kind, _, body = self.read_packet()
        assert kind == CONNACK and body[1] == 0, f"CONNACK expected, got {kind} {body!r}"
        return bool(body[0] & 1)

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

    def read_packet(self, timeout: float = WAIT) -> tuple[int, int, bytes] | None:
        """(packet type, flags, body) of the next packet; None when the broker closed."""
        deadline = time.monotonic() + timeout
        if not self._fill(2, deadline):
            return None
        length, multiplier, index = 0, 1, 1
        while True:
            if not self._fill(index + 1, deadline):
                return None
            digit = self.buffer[index]
            length += (digit & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not digit & 0x80:
                break
        if not self._fill(index + length, deadline):
            return None
        first, body = self.buffer[0], self.buffer[index : index + length]
        self.buffer = self.buffer[index + length :]
        return first >> 4, first & 0x0F, body

    def expect_closed(self, timeout: float = WAIT) -> None:
        """Waits until the broker closes the connection (packets before that are skipped)."""
        deadline = time.monotonic() + timeout
        while self.read_packet(max(deadline - time.monotonic(), 0.01)) is not None:
            pass

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
def retained_topics(mqtt, names):
    """Topics a test retained messages on; cleared on the shared broker when it ends."""
    topics: list[str] = []
    yield topics
    if topics:
        cleaner = mqtt(names("cleaner"))
        cleaner.connect()
        for topic in topics:
            cleaner.publish(topic, b"", qos=1, retain=True)
        cleaner.disconnect()


def subscriber_on(mqtt, names, *filters: tuple[str, int]):
    client = mqtt(names("sub"))
    client.connect()
    assert client.subscribe(*filters) == [qos for _, qos in filters]
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
# Retained messages


def test_a_retained_message_reaches_later_subscribers_flagged_retained_and_live_ones_not(
    mqtt, names, retained_topics
):
    """A subscriber present at publication gets the message with retain=False; one that
    subscribes afterwards gets it at once, with retain=True."""
    topic = names("status")
    retained_topics.append(topic)
    live = subscriber_on(mqtt, names, (topic, 1))
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "online", qos=1, retain=True)
    message = live.expect_message()
    assert (message.topic, message.payload, message.retain) == (topic, b"online", False)

    later = subscriber_on(mqtt, names, (topic, 1))
    message = later.expect_message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        topic,
        b"online",
        1,
        True,
    )
    later.expect_no_message(0.3)


def test_a_newer_retained_message_replaces_the_older(mqtt, names, retained_topics):
    """Only the newest retained message of a topic is kept: a later subscriber gets it and
    nothing else before the next live publication."""
    topic = names("setpoint")
    retained_topics.append(topic)
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "old", qos=1, retain=True)
    publisher.publish(topic, "new", qos=1, retain=True)

    later = subscriber_on(mqtt, names, (topic, 1))
    publisher.publish(topic, "live marker", qos=1)
    seen = messages_until(later, b"live marker")
    assert [(m.payload, m.retain) for m in seen] == [(b"new", True), (b"live marker", False)]


def test_an_empty_retained_publication_clears_the_retained_message(
    mqtt, names, retained_topics
):
    """A retained publication with an empty payload reaches present subscribers as an empty
    message and forgets the topic's retained message: later subscribers get nothing
    retained."""
    topic = names("alarm")
    retained_topics.append(topic)
    live = subscriber_on(mqtt, names, (topic, 1))
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "raised", qos=1, retain=True)
    publisher.publish(topic, b"", qos=1, retain=True)
    assert [live.expect_message().payload for _ in range(2)] == [b"raised", b""]

    later = subscriber_on(mqtt, names, (topic, 1))
    publisher.publish(topic, "live marker", qos=1)
    seen = messages_until(later, b"live marker")
    assert [(m.payload, m.retain) for m in seen] == [(b"live marker", False)]


@pytest.mark.parametrize("granted", [0, 1, 2], ids=lambda q: f"granted{q}")
def test_retained_messages_arrive_at_the_lower_of_retained_and_granted_qos(
    mqtt, names, retained_topics, granted
):
    """Retained messages published at QoS 0, 1 and 2 reach a new subscription at
    min(retained QoS, granted QoS), all flagged retained."""
    base = names("level")
    topics = {qos: f"{base}/q{qos}" for qos in (0, 1, 2)}
    retained_topics.extend(topics.values())
    publisher = mqtt(names("pub"))
    publisher.connect()
    for qos, topic in topics.items():
        publisher.publish(topic, f"retained at {qos}", qos=qos, retain=True)

    later = subscriber_on(mqtt, names, (f"{base}/#", granted))
    received = [later.expect_message() for _ in topics]
    assert sorted((m.topic, m.payload, m.qos, m.retain) for m in received) == [
        (topic, f"retained at {qos}".encode(), min(qos, granted), True)
        for qos, topic in sorted(topics.items())
    ]
    later.expect_no_message(0.3)


def test_retained_messages_survive_a_broker_restart(mqtt, names, start_broker):
    """Retained messages are kept in the data directory: after a restart a new subscriber
    gets the retained one (payload and QoS), and one cleared before the restart stays
    cleared."""
    first = start_broker()
    kept, cleared = names("kept"), names("cleared")
    publisher = mqtt(names("pub"), target=first)
    publisher.connect()
    publisher.publish(kept, "survives", qos=2, retain=True)
    publisher.publish(cleared, "forgotten", qos=1, retain=True)
    publisher.publish(cleared, b"", qos=1, retain=True)
    publisher.disconnect()
    assert first.stop() == 0

    second = start_broker(data_dir=first.data_dir)
    later = mqtt(names("sub"), target=second)
    later.connect()
    assert later.subscribe((kept, 2), (cleared, 2)) == [2, 2]
    message = later.expect_message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        kept,
        b"survives",
        2,
        True,
    )
    later.expect_no_message(0.5)


# ---------------------------------------------------------------------------------------------
# The will


def test_the_will_is_published_when_the_client_drops_the_connection(mqtt, names):
    """A client that closes its socket without DISCONNECT has its will published, with the
    will's topic, payload and QoS."""
    topic = names("presence")
    watcher = subscriber_on(mqtt, names, (topic, 2))
    device = mqtt(names("device")).will_set(topic, "device lost", qos=1)
    device.connect()
    device.drop()
    message = watcher.expect_message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        topic,
        b"device lost",
        1,
        False,
    )


def test_the_will_is_published_when_the_keep_alive_expires(mqtt, names, raw):
    """A client with keep-alive 1 s that then stays silent is disconnected after 1.5 times
    the interval, and its will is published."""
    topic = names("presence")
    watcher = subscriber_on(mqtt, names, (topic, 1))
    device = raw()
    device.connect(names("silent"), keepalive=1, will=(topic, b"timed out", 1, False))
    connected = time.monotonic()
    message = watcher.expect_message()
    elapsed = time.monotonic() - connected
    assert (message.topic, message.payload, message.qos) == (topic, b"timed out", 1)
    assert elapsed >= 1.4, f"closed after {elapsed:.2f} s, before 1.5 x keep-alive"
    device.expect_closed()


MALFORMED = {
    "reserved-packet-type": _packet(0xF0, b""),
    "wildcard-in-publish-topic": _packet(0x30, _string("a/#") + b"payload"),
    "subscribe-with-wrong-flags": _packet(0x80, (1).to_bytes(2, "big") + _string("a") + b"\x00"),
    "second-connect": connect_packet("again"),
    "invalid-utf8-topic": _packet(0x30, _string(b"a/\xff\xfe") + b"payload"),
}


@pytest.mark.parametrize("packet", list(MALFORMED.values()), ids=list(MALFORMED))
def test_the_will_is_published_when_the_client_breaks_the_protocol(mqtt, names, raw, packet):
    """A protocol error after CONNECT closes the connection (MQTT 3.1.1 has no error
    packet) and publishes the will."""
    topic = names("presence")
    watcher = subscriber_on(mqtt, names, (topic, 1))
    device = raw()
    device.connect(names("broken"), will=(topic, b"protocol error", 0, False))
    device.send(packet)
    device.expect_closed()
    message = watcher.expect_message()
    assert (message.topic, message.payload, message.qos) == (topic, b"protocol error", 0)


def test_the_will_is_published_when_another_connection_takes_the_session_over(
    mqtt, names, raw
):
    """A second CONNECT with the same client id closes the first connection, which did not
    say DISCONNECT, so its will is published."""
    topic = names("presence")
    client_id = names("device")
    watcher = subscriber_on(mqtt, names, (topic, 1))
    first = raw()
    first.connect(client_id, will=(topic, b"taken over", 1, False))
    second = mqtt(client_id)
    second.connect()
    first.expect_closed()
    message = watcher.expect_message()
    assert (message.topic, message.payload) == (topic, b"taken over")


def test_the_will_is_not_published_after_a_clean_disconnect(mqtt, names):
    """After DISCONNECT the will is discarded: the watcher's next message is a marker
    published afterwards, and nothing else follows within a bounded wait."""
    topic = names("presence")
    watcher = subscriber_on(mqtt, names, (topic, 1))
    device = mqtt(names("device")).will_set(topic, "should not appear", qos=1)
    device.connect()
    device.disconnect()
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(topic, "marker", qos=1)
    message = watcher.expect_message()
    assert message.payload == b"marker"
    watcher.expect_no_message(1.0)


def test_a_retained_will_is_retained(mqtt, names, retained_topics):
    """A will with the retain flag reaches present subscribers and is kept as the topic's
    retained message, so a later subscriber gets it flagged retained."""
    topic = names("presence")
    retained_topics.append(topic)
    watcher = subscriber_on(mqtt, names, (topic, 1))
    device = mqtt(names("device")).will_set(topic, "offline", qos=1, retain=True)
    device.connect()
    device.drop()
    message = watcher.expect_message()
    assert (message.payload, message.retain) == (b"offline", False)

    later = subscriber_on(mqtt, names, (topic, 1))
    message = later.expect_message()
    assert (message.topic, message.payload, message.qos, message.retain) == (
        topic,
        b"offline",
        1,
        True,
    )
