"""Retained messages and the will (last will and testament) with paho, plus a raw socket
client (``mqtt_raw``) for what paho will not do: stay silent past its keep-alive, or send a
malformed packet.

Retained: delivered flagged retained to later subscribers only, replaced by a newer one,
cleared by an empty one, capped at the granted QoS, kept across a broker restart.
Will: published when the connection ends without DISCONNECT (socket dropped, keep-alive
expired, protocol error, session taken over), never after DISCONNECT; a retained will is
retained.
"""

from __future__ import annotations

import time

import pytest

from mqtt_clients import WAIT
from mqtt_raw import (
    connect_packet,
    connected_publisher,
    messages_until,
    packet,
    string,
    subscriber_on,
)


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


def assert_next_message(client, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
    """Asserts the next message ``client`` receives has this topic, payload, QoS and retain
    flag."""
    message = client.expect_message()
    received = (message.topic, message.payload, message.qos, message.retain)
    assert received == (topic, payload, qos, retain)


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
    publisher = connected_publisher(mqtt, names)
    publisher.publish(topic, "online", qos=1, retain=True)
    message = live.expect_message()
    assert (message.topic, message.payload, message.retain) == (topic, b"online", False)

    later = subscriber_on(mqtt, names, (topic, 1))
    assert_next_message(later, topic, b"online", qos=1, retain=True)
    later.expect_no_message(0.3)


def test_a_newer_retained_message_replaces_the_older(mqtt, names, retained_topics):
    """Only the newest retained message of a topic is kept: a later subscriber gets it and
    nothing else before the next live publication."""
    topic = names("setpoint")
    retained_topics.append(topic)
    publisher = connected_publisher(mqtt, names)
    publisher.publish(topic, "old", qos=1, retain=True)
    publisher.publish(topic, "new", qos=1, retain=True)

    later = subscriber_on(mqtt, names, (topic, 1))
    publisher.publish(topic, "live marker", qos=1)
    seen = messages_until(later, payload=b"live marker")
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
    publisher = connected_publisher(mqtt, names)
    publisher.publish(topic, "raised", qos=1, retain=True)
    publisher.publish(topic, b"", qos=1, retain=True)
    assert [live.expect_message().payload for _ in range(2)] == [b"raised", b""]

    later = subscriber_on(mqtt, names, (topic, 1))
    publisher.publish(topic, "live marker", qos=1)
    seen = messages_until(later, payload=b"live marker")
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
    publisher = connected_publisher(mqtt, names)
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
    publisher = connected_publisher(mqtt, names, target=first)
    publisher.publish(kept, "survives", qos=2, retain=True)
    publisher.publish(cleared, "forgotten", qos=1, retain=True)
    publisher.publish(cleared, b"", qos=1, retain=True)
    publisher.disconnect()
    assert first.stop() == 0

    second = start_broker(data_dir=first.data_dir)
    later = subscriber_on(mqtt, names, (kept, 2), (cleared, 2), target=second)
    assert_next_message(later, kept, b"survives", qos=2, retain=True)
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
    assert_next_message(watcher, topic, b"device lost", qos=1, retain=False)


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
    device.wait_closed(timeout=WAIT)


MALFORMED = {
    "reserved-packet-type": packet(0xF0, b""),
    "wildcard-in-publish-topic": packet(0x30, string("a/#") + b"payload"),
    "subscribe-with-wrong-flags": packet(0x80, (1).to_bytes(2, "big") + string("a") + b"\x00"),
    "second-connect": connect_packet("again"),
    "invalid-utf8-topic": packet(0x30, string(b"a/\xff\xfe") + b"payload"),
}


@pytest.mark.parametrize("bad", list(MALFORMED.values()), ids=list(MALFORMED))
def test_the_will_is_published_when_the_client_breaks_the_protocol(mqtt, names, raw, bad):
    """A protocol error after CONNECT closes the connection (MQTT 3.1.1 has no error
    packet) and publishes the will."""
    topic = names("presence")
    watcher = subscriber_on(mqtt, names, (topic, 1))
    device = raw()
    device.connect(names("broken"), will=(topic, b"protocol error", 0, False))
    device.send(bad)
    device.wait_closed(timeout=WAIT)
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
    first.wait_closed(timeout=WAIT)
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
    publisher = connected_publisher(mqtt, names)
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
    assert_next_message(later, topic, b"offline", qos=1, retain=True)
