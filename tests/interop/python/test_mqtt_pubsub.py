"""MQTT publish/subscribe through Junction with paho (and pika on the AMQP side): QoS 0/1/2
in both directions, SUBSCRIBE and UNSUBSCRIBE, overlapping filters, `$`-topics, bursts that
exercise the in-flight window, QoS 2 exactly once, and the mapping between MQTT topics and
AMQP routing keys on `amq.topic`.

Every topic is made from ``names`` so tests on the shared broker never see each other's
messages; a subscription with a leading wildcard (which can see other tests' retained
messages) filters by topic.
"""

from __future__ import annotations

import queue
import time

import pika
import pytest

from mqtt_clients import WAIT
from mqtt_raw import connected_publisher, messages_until, subscriber_on

#: The SUBACK code for a refused filter.
SUBSCRIPTION_FAILURE = 0x80


def amqp_get(channel, queue: str, timeout: float = WAIT):
    """The next message of ``queue`` via basic.get, polled with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, properties, body
        assert time.monotonic() < deadline, f"no message in {queue} within {timeout} s"
        time.sleep(0.02)


@pytest.mark.parametrize("granted", [0, 1, 2], ids=lambda q: f"granted{q}")
def test_mqtt_publications_arrive_at_the_lower_of_published_and_granted_qos(
    mqtt, names, granted
):
    """Publisher QoS x subscription QoS: each message is delivered once, at min(published,
    granted), in publication order."""
    topic = names("t").replace("-", "/")
    subscriber = subscriber_on(mqtt, names, (topic, granted))
    publisher = connected_publisher(mqtt, names)
    for qos in (0, 1, 2):
        publisher.publish(topic, f"published at {qos}", qos=qos)
    received = [subscriber.expect_message() for _ in range(3)]
    assert [(m.topic, m.payload, m.qos, m.retain) for m in received] == [
        (topic, f"published at {qos}".encode(), min(qos, granted), False) for qos in (0, 1, 2)
    ]
    subscriber.expect_no_message(0.3)


@pytest.mark.parametrize("granted", [0, 1, 2], ids=lambda q: f"granted{q}")
def test_amqp_publications_reach_mqtt_subscribers_at_the_qos_their_persistence_implies(
    mqtt, names, channel, granted
):
    """pika publishes to amq.topic with routing key `k1.k2`; a paho subscriber on `k1/k2`
    receives it. Transient messages count as QoS 0, persistent ones as QoS 1, an
    x-mqtt-publish-qos header wins over both; the granted QoS caps each."""
    base = names("k1")
    subscriber = subscriber_on(mqtt, names, (f"{base}/k2", granted))
    sent = [
        (b"transient", pika.BasicProperties(delivery_mode=1), 0),
        (b"persistent", pika.BasicProperties(delivery_mode=2), 1),
        (b"no properties", None, 0),
        (
            b"header says 2",
            pika.BasicProperties(delivery_mode=2, headers={"x-mqtt-publish-qos": 2}),
            2,
        ),
        (
            b"header says 0",
            pika.BasicProperties(delivery_mode=2, headers={"x-mqtt-publish-qos": 0}),
            0,
        ),
    ]
    for body, properties, _ in sent:
        channel.basic_publish("amq.topic", f"{base}.k2", body, properties)
    received = [subscriber.expect_message() for _ in sent]
    # Sorted: paho hands a QoS 2 message over only after PUBREL, so later ones can overtake it.
    assert sorted((m.topic, m.payload, m.qos) for m in received) == sorted(
        (f"{base}/k2", body, min(qos, granted)) for body, _, qos in sent
    )


def test_mqtt_publications_reach_an_amqp_queue_with_the_qos_header_and_the_body_unchanged(
    mqtt, names, channel
):
    """A paho publish on `x/y` reaches a pika queue bound to amq.topic with `x.*`: routing key
    `x.y`, body byte for byte, header x-mqtt-publish-qos = the publication's QoS, and
    delivery_mode 2 (persistent) for QoS 1 and 2, 1 for QoS 0."""
    base = names("x")
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, "amq.topic", routing_key=f"{base}.*")
    publisher = connected_publisher(mqtt, names)
    body = bytes(range(256)) + b"\x00 end"
    for qos in (0, 1, 2):
        publisher.publish(f"{base}/y", body + bytes([qos]), qos=qos)
    for qos in (0, 1, 2):
        method, properties, received = amqp_get(channel, queue)
        assert method.exchange == "amq.topic"
        assert method.routing_key == f"{base}.y"
        assert received == body + bytes([qos])
        assert properties.headers == {"x-mqtt-publish-qos": qos}
        assert properties.delivery_mode == (2 if qos else 1)


def test_a_dot_inside_a_topic_level_is_a_slash_in_the_routing_key_both_ways(
    mqtt, names, channel
):
    """MQTT `base/v1.2` is routing key `base.v1/2`, and an AMQP message on `base.v3/4` reaches
    an MQTT subscriber as topic `base/v3.4`."""
    base = names("ver")
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, "amq.topic", routing_key=f"{base}.v1/2")
    client = mqtt(names("client"))
    client.connect()
    assert client.subscribe((f"{base}/v3.4", 1)) == [1]
    client.publish(f"{base}/v1.2", "from mqtt", qos=1)
    method, _, body = amqp_get(channel, queue)
    assert (method.routing_key, body) == (f"{base}.v1/2", b"from mqtt")
    channel.basic_publish("amq.topic", f"{base}.v3/4", b"from amqp")
    message = client.expect_message()
    assert (message.topic, message.payload) == (f"{base}/v3.4", b"from amqp")


def test_unsubscribe_stops_delivery_for_that_filter_only(mqtt, names):
    """After UNSUBSCRIBE of one filter, publications matching only it are no longer
    delivered, while the session's other filter still is."""
    dropped = names("dropped")
    kept = names("kept")
    subscriber = subscriber_on(mqtt, names, (dropped, 1), (kept, 1))
    publisher = connected_publisher(mqtt, names)
    publisher.publish(dropped, "before", qos=1)
    assert subscriber.expect_message().payload == b"before"

    subscriber.unsubscribe(dropped)
    publisher.publish(dropped, "after unsubscribe", qos=1)
    publisher.publish(kept, "marker", qos=1)
    message = subscriber.expect_message()
    assert (message.topic, message.payload) == (kept, b"marker")
    subscriber.expect_no_message(0.5)


def test_each_filter_of_one_subscribe_gets_its_own_suback_code(mqtt, names):
    """One SUBSCRIBE with several filters: one SUBACK code per filter, in order, each the
    granted QoS, and 0x80 for an invalid filter without failing the others; each granted
    filter then delivers at its own QoS."""
    topics = [names(f"t{qos}") for qos in (0, 1, 2)]
    subscriber = mqtt(names("sub"))
    # paho refuses invalid filters itself; let this one through so the broker judges it.
    subscriber.paho._filter_wildcard_len_check = lambda _filter: 0
    subscriber.connect()
    codes = subscriber.subscribe(
        (topics[0], 0), (topics[1], 1), (f"{topics[0]}/#/invalid", 1), (topics[2], 2)
    )
    assert codes == [0, 1, SUBSCRIPTION_FAILURE, 2]
    publisher = connected_publisher(mqtt, names)
    for topic in topics:
        publisher.publish(topic, topic, qos=2)
    received = [subscriber.expect_message() for _ in topics]
    assert sorted((m.topic, m.qos) for m in received) == sorted(
        (topic, qos) for topic, qos in zip(topics, (0, 1, 2))
    )


def test_overlapping_filters_deliver_a_message_once_at_the_highest_granted_qos(mqtt, names):
    """`a/#` at QoS 1 and `a/+` at QoS 2 in one session: a QoS 2 message on `a/x` arrives
    once, at QoS 2; a QoS 1 message once, at QoS 1; one matching only `a/#` at QoS 1."""
    base = names("a")
    subscriber = subscriber_on(mqtt, names, (f"{base}/#", 1), (f"{base}/+", 2))
    publisher = connected_publisher(mqtt, names)
    publisher.publish(f"{base}/x", "qos2", qos=2)
    publisher.publish(f"{base}/x", "qos1", qos=1)
    publisher.publish(f"{base}/x/deeper", "only a/#", qos=2)
    # A QoS 2 marker: paho hands QoS 2 messages over in order, after every earlier one.
    publisher.publish(f"{base}/marker", "marker", qos=2)
    received = messages_until(subscriber, topic=f"{base}/marker")
    assert sorted((m.topic, m.payload, m.qos) for m in received) == sorted([
        (f"{base}/x", b"qos2", 2),
        (f"{base}/x", b"qos1", 1),
        (f"{base}/x/deeper", b"only a/#", 1),
        (f"{base}/marker", b"marker", 2),
    ])
    subscriber.expect_no_message(0.3)


def test_dollar_topics_are_matched_only_by_filters_that_do_not_start_with_a_wildcard(
    mqtt, names
):
    """A topic starting with `$` is not matched by `#` or by `+/...`, but is by an explicit
    `$name/#` filter (MQTT 3.1.1 §4.7.2)."""
    level = names("sys")
    dollar_topic = f"${level}/x"
    marker_topic = f"{level}/x"  # matched by `#` and by `+/x`
    everything = mqtt(names("hash"))
    everything.connect()
    assert everything.subscribe(("#", 0)) == [0]
    plus = mqtt(names("plus"))
    plus.connect()
    assert plus.subscribe(("+/x", 0)) == [0]
    explicit = mqtt(names("explicit"))
    explicit.connect()
    assert explicit.subscribe((f"${level}/#", 0)) == [0]

    publisher = connected_publisher(mqtt, names)
    publisher.publish(dollar_topic, "system", qos=1)
    publisher.publish(marker_topic, "marker", qos=1)

    message = explicit.expect_message()
    assert (message.topic, message.payload) == (dollar_topic, b"system")
    for wildcard in (everything, plus):
        seen = messages_until(wildcard, topic=marker_topic)
        assert all(not m.topic.startswith("$") for m in seen), [m.topic for m in seen]
    # The `$` message was queued before the marker, so it cannot come later; check a moment.
    for wildcard in (everything, plus):
        try:
            late = wildcard.messages.get(timeout=0.3)
        except queue.Empty:
            continue
        assert not late.topic.startswith("$"), late


def test_a_qos1_burst_larger_than_the_inflight_window_arrives_complete_and_in_order(
    mqtt, names
):
    """200 QoS 1 messages (several times the broker's 32 unacknowledged deliveries per
    session) all arrive, in publication order, each once."""
    count = 200
    topic = names("burst")
    subscriber = subscriber_on(mqtt, names, (topic, 1))
    publisher = connected_publisher(mqtt, names)
    infos = [publisher.paho.publish(topic, f"{i}", qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published()
    received = [subscriber.expect_message() for _ in range(count)]
    assert [int(m.payload) for m in received] == list(range(count))
    assert {m.qos for m in received} == {1}
    subscriber.expect_no_message(0.3)


def test_a_qos2_burst_is_received_exactly_once(mqtt, names):
    """100 QoS 2 publications reach a QoS 2 subscriber exactly once each: after a later
    marker, exactly 100 messages were received, with no duplicates."""
    count = 100
    topic = names("exactly")
    marker = names("marker")
    subscriber = subscriber_on(mqtt, names, (topic, 2), (marker, 2))
    publisher = connected_publisher(mqtt, names)
    infos = [publisher.paho.publish(topic, f"{i}", qos=2) for i in range(count)]
    for info in infos:
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published()
    publisher.publish(marker, "end", qos=2)
    received = messages_until(subscriber, topic=marker)[:-1]
    assert len(received) == count
    assert sorted(int(m.payload) for m in received) == list(range(count))
    assert [int(m.payload) for m in received] == list(range(count)), "out of order"
    assert {m.qos for m in received} == {2}
    subscriber.expect_no_message(0.5)
