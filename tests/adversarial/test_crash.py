"""Crash: input that a parser or a topic matcher recursing once per level turns into a stack
overflow of a shared worker thread, which aborts the whole process (issue 13, defects 1 and
2). Each attack is one connection; the broker must survive it with the canary served
throughout, and the attacker gets an answer the protocol allows: the operation accepted, or
refused with AMQP 403/406/502, an MQTT SUBACK failure code, or its connection closed.
"""

from __future__ import annotations

import struct

from amqp_raw import BASIC_ACK, CONFIRM_SELECT_OK, QUEUE_DECLARE_OK, RawAmqp, nested_table, table
from mqtt_raw import RawClient, connect_packet, packet, publish_packet, string, subscribe_packet
from outcomes import acceptable_amqp, amqp_outcome, mqtt_reply

#: Nesting of the AMQP field tables sent (defect 1 overflowed at about 2000).
TABLE_DEPTH = 2000
#: Levels of the MQTT filter that is subscribed to and then published to (defect 2).
PUBLISH_LEVELS = 16_000
#: Levels of the MQTT filter that is subscribed to and unsubscribed from (defect 2).
UNSUBSCRIBE_LEVELS = 32_000


def levels(count: int) -> str:
    return "/".join(["a"] * count)


def test_amqp_headers_nested_2000_deep_from_a_user_without_permissions(arena):
    """basic.publish with a headers table 2000 tables deep, from ``mallory`` (``^$`` on
    everything): the table is parsed before any permission check, so this is an attack
    anyone with a login can make."""
    arena.start()
    with arena.attack():
        client = RawAmqp(arena.listeners["amqp"], "mallory", "mallory-secret").open()
        client.confirm_select()
        client.expect(CONFIRM_SELECT_OK)
        client.publish("", "adversarial-deep", b"deep", headers=nested_table(TABLE_DEPTH))
        outcome = amqp_outcome(client, BASIC_ACK)
        client.close()
    arena.assert_survived()
    assert acceptable_amqp(outcome), f"the deep headers were answered with {outcome}"


def test_amqp_queue_arguments_nested_2000_deep(arena):
    """queue.declare whose arguments hold a table 2000 tables deep."""
    arena.start()
    with arena.attack():
        client = RawAmqp(arena.listeners["amqp"]).open()
        deep = table({"x-adversarial": nested_table(TABLE_DEPTH)})
        client.queue_declare("adversarial-deep-arguments", arguments=deep)
        outcome = amqp_outcome(client, QUEUE_DECLARE_OK)
        client.close()
    arena.assert_survived()
    assert acceptable_amqp(outcome), f"the deep arguments were answered with {outcome}"


def test_mqtt_publish_to_a_16000_level_subscription(arena):
    """SUBSCRIBE to a filter of 16,000 levels, then PUBLISH to that topic: matching the
    topic against the filter must not recurse per level."""
    arena.start()
    topic = levels(PUBLISH_LEVELS)
    with arena.attack():
        client = RawClient(arena.listeners["mqtt"])
        client.send(connect_packet("adversarial-levels"))
        assert mqtt_reply(client) == "CONNACK 0000", "the attacker's CONNECT was not accepted"
        client.send(subscribe_packet(1, (topic, 0)))
        subscribed = mqtt_reply(client)
        client.send(publish_packet(topic, b"deep", qos=1, packet_id=2))
        published = mqtt_reply(client)
        client.close()
    arena.assert_survived()
    assert subscribed.startswith(("SUBACK", "closed")), f"SUBSCRIBE answered with {subscribed}"
    assert published.startswith(("PUBACK", "closed")), f"PUBLISH answered with {published}"


def test_mqtt_subscribe_and_unsubscribe_32000_levels(arena):
    """SUBSCRIBE then UNSUBSCRIBE of a filter of 32,000 levels: adding and removing the
    binding must not recurse per level."""
    arena.start()
    topic_filter = levels(UNSUBSCRIBE_LEVELS)
    with arena.attack():
        client = RawClient(arena.listeners["mqtt"])
        client.send(connect_packet("adversarial-unsubscribe"))
        assert mqtt_reply(client) == "CONNACK 0000", "the attacker's CONNECT was not accepted"
        client.send(subscribe_packet(1, (topic_filter, 0)))
        subscribed = mqtt_reply(client)
        client.send(packet(0xA2, struct.pack("!H", 2) + string(topic_filter)))
        unsubscribed = mqtt_reply(client)
        client.close()
    arena.assert_survived()
    assert subscribed.startswith(("SUBACK", "closed")), f"SUBSCRIBE answered with {subscribed}"
    assert unsubscribed.startswith(("UNSUBACK", "closed")), (
        f"UNSUBSCRIBE answered with {unsubscribed}"
    )
