"""Persistent MQTT sessions (clean_session = 0): subscriptions and queued messages wait for the
client across disconnects and broker restarts, deliveries in flight are resent with DUP and
their packet identifiers, a clean session throws the old one away, and a second connection
with the same client id takes the session over.

paho covers most of it; a raw socket client (``mqtt_raw``) stands in where paho cannot: paho
answers a QoS 2 PUBLISH with PUBREC at once (``manual_ack`` only holds back the PUBCOMP), so
holding a QoS 2 delivery unacknowledged takes raw packets.
"""

from __future__ import annotations

import pytest

from mqtt_raw import (
    PUBCOMP,
    PUBREC,
    PUBREL,
    connected_publisher,
    messages_until,
    publish_packet,
)


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


def new_session(mqtt, client_id: str, topic: str, qos: int, **options):
    """A ``persistent`` client that starts ``client_id``'s session (CONNACK without session
    present) and subscribes it to ``topic``, asserting ``qos`` is granted."""
    device = persistent(mqtt, client_id, **options)
    assert device.connect() is False
    assert device.subscribe((topic, qos)) == [qos]
    return device


# ---------------------------------------------------------------------------------------------


def test_qos1_and_qos2_messages_published_while_offline_are_delivered_on_reconnect(
    mqtt, names, forget_sessions
):
    """A persistent session's subscription keeps collecting while the client is away; on
    reconnect CONNACK says session present and the QoS 1 and 2 messages arrive at their
    QoS."""
    topic, client_id = names("cmd"), names("device")
    forget_sessions.append(client_id)
    new_session(mqtt, client_id, topic, 2).disconnect()

    publisher = connected_publisher(mqtt, names)
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
    new_session(mqtt, client_id, topic, 1).disconnect()

    publisher = connected_publisher(mqtt, names)
    for i in range(3):
        publisher.publish(topic, f"reading {i}", qos=0)
    # QoS 0 has no acknowledgement: wait until the three are in the session's queue.
    publisher.publish(topic, "marker", qos=1)

    device = persistent(mqtt, client_id)
    assert device.connect() is True
    received = messages_until(device, payload=b"marker")
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
    new_session(mqtt, client_id, topic, 2, target=first).disconnect()
    publisher = connected_publisher(mqtt, names, target=first)
    publisher.publish(topic, "qos 1 before restart", qos=1)
    publisher.publish(topic, "qos 2 before restart", qos=2)
    publisher.publish(topic, "qos 0 before restart", qos=0)
    publisher.disconnect()
    assert first.stop() == 0

    second = start_broker(data_dir=first.data_dir)
    publisher = connected_publisher(mqtt, names, target=second)
    publisher.publish(topic, "qos 2 after restart", qos=2)

    device = persistent(mqtt, client_id, target=second)
    assert device.connect() is True
    # QoS 2 messages reach paho's callback in order, after anything queued before them.
    received = messages_until(device, payload=b"qos 2 after restart")
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
    new_session(mqtt, client_id, topic, 1).disconnect()
    publisher = connected_publisher(mqtt, names)
    publisher.publish(topic, "stale", qos=1)

    marker = names("marker")

    def starts_afresh(client, marker_payload: bytes) -> None:
        """No session present, and of a publication on the old subscription's topic and a
        marker on a new one, only the marker arrives."""
        assert client.connect() is False
        assert client.subscribe((marker, 1)) == [1]
        publisher.publish(topic, "old subscription", qos=1)
        publisher.publish(marker, marker_payload, qos=1)
        message = client.expect_message()
        assert (message.topic, message.payload) == (marker, marker_payload)
        client.expect_no_message(0.3)
        client.disconnect()

    starts_afresh(mqtt(client_id, clean_session=True), b"marker")
    starts_afresh(persistent(mqtt, client_id), b"second marker")


def test_an_unacknowledged_qos1_delivery_is_resent_with_dup_and_the_same_packet_id(
    mqtt, names, forget_sessions
):
    """A QoS 1 delivery the client did not PUBACK before its connection dropped is sent
    again on reconnect, flagged DUP, with its packet identifier; once acknowledged it is
    not sent a third time."""
    topic, client_id = names("cmd"), names("device")
    forget_sessions.append(client_id)
    device = new_session(mqtt, client_id, topic, 1, manual_ack=True)
    publisher = connected_publisher(mqtt, names)
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
    publisher = connected_publisher(mqtt, names)
    publisher.publish(topic, "close valve", qos=2)
    first = device.expect_publish()
    assert (first.payload, first.qos, first.dup) == (b"close valve", 2, False)
    device.close()  # no PUBREC

    device = raw()
    assert device.connect(client_id, clean_session=False) is True
    again = device.expect_publish()
    assert again == first._replace(dup=True)
    device.send_ack(PUBREC, again.packet_id)
    assert device.expect_ack(PUBREL) == again.packet_id
    device.send_ack(PUBCOMP, again.packet_id)
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
    publisher = connected_publisher(mqtt, names)
    publisher.publish(topic, "once only", qos=2)
    delivery = device.expect_publish()
    device.send_ack(PUBREC, delivery.packet_id)
    assert device.expect_ack(PUBREL) == delivery.packet_id
    device.close()  # no PUBCOMP

    device = raw()
    assert device.connect(client_id, clean_session=False) is True
    assert device.expect_ack(PUBREL) == delivery.packet_id
    device.send_ack(PUBCOMP, delivery.packet_id)
    publisher.publish(topic, "marker", qos=0)
    message = device.expect_publish()
    assert (message.payload, message.qos) == (b"marker", 0)
    device.close()


def test_a_second_connection_with_the_same_client_id_takes_the_session_over(
    mqtt, names, forget_sessions
):
    """A second CONNECT (clean_session=False) with a client id in use closes the first
    connection and continues its session: session present, the subscription still
    delivers, and a delivery the first connection had not acknowledged is resent."""
    topic, client_id = names("cmd"), names("device")
    forget_sessions.append(client_id)
    first = new_session(mqtt, client_id, topic, 1, manual_ack=True)
    publisher = connected_publisher(mqtt, names)
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
    device.send(publish_packet(topic, b"meter 42", qos=2, packet_id=7))
    assert device.expect_ack(PUBREC) == 7
    device.send(publish_packet(topic, b"meter 42", qos=2, packet_id=7, dup=True))
    assert device.expect_ack(PUBREC) == 7
    device.close()  # no PUBREL yet

    device = raw()
    assert device.connect(client_id, clean_session=False) is True
    device.send(publish_packet(topic, b"meter 42", qos=2, packet_id=7, dup=True))
    assert device.expect_ack(PUBREC) == 7
    device.send_ack(PUBREL, 7)
    assert device.expect_ack(PUBCOMP) == 7
    # The identifier is free again: a new publication with it is a new message.
    device.send(publish_packet(topic, b"meter 43", qos=2, packet_id=7))
    assert device.expect_ack(PUBREC) == 7
    device.send_ack(PUBREL, 7)
    assert device.expect_ack(PUBCOMP) == 7
    device.close()

    received = messages_until(watcher, payload=b"meter 43")
    assert [(m.payload, m.qos) for m in received] == [(b"meter 42", 2), (b"meter 43", 2)]
    watcher.expect_no_message(0.3)
