"""Freeze: topic matching that is exponential in the number of ``#`` words of a binding and
runs on a shared worker (issue 13, defect 3), and a topic router rebuilt whole on every bind
(defect 4). A frozen worker shows as a canary round trip slower than ``FREEZE_BOUND``; the
5,000 binds must all be answered within ``BIND_DEADLINE`` (the issue measured 21 s for them, an
incremental router takes well under a second: the deadline only catches the rebuild).
"""

from __future__ import annotations

import time

from amqp_raw import BASIC_ACK, CONFIRM_SELECT_OK, QUEUE_BIND_OK, QUEUE_DECLARE_OK, RawAmqp
from canary import FREEZE_BOUND
from mqtt_raw import RawClient, connect_packet, publish_packet
from outcomes import amqp_outcome, mqtt_reply
from stomp_clients import RawStomp

#: A binding key of twelve ``#`` words and a last word no key below has.
HASHES = ".".join(["#"] * 12) + ".z"
#: Words of the routing key published against it.
KEY_WORDS = 100
#: Publishes of that key, each from its own connection (one per worker thread the broker may
#: have, and then some).
PUBLISHES = 3
#: Bindings added one after another to one queue on amq.topic.
BINDS = 5000
#: Seconds all of them may take, in total (a freeze detector, not a benchmark).
BIND_DEADLINE = 10.0
#: Binds sent before their replies are read.
BIND_BATCH = 100


def test_amqp_binding_of_twelve_hashes_and_a_100_word_key(arena):
    """A queue bound to amq.topic with ``#.#.…(12×).z``, then publishes with a 100-word
    routing key that ends in another word: every way of splitting 100 words among twelve
    ``#`` is tried unless matching is linear in the key."""
    arena.start()
    with arena.attack():
        client = RawAmqp(arena.listeners["amqp"]).open()
        client.queue_declare("adversarial-hashes")
        client.expect(QUEUE_DECLARE_OK)
        client.queue_bind("adversarial-hashes", "amq.topic", HASHES)
        bound = amqp_outcome(client, QUEUE_BIND_OK)
        client.confirm_select()
        client.expect(CONFIRM_SELECT_OK)
        for _ in range(PUBLISHES):
            client.publish("amq.topic", ".".join(["a"] * KEY_WORDS), b"slow")
        deadline = time.monotonic() + FREEZE_BOUND
        confirmed = [
            amqp_outcome(client, BASIC_ACK, deadline - time.monotonic()) for _ in range(PUBLISHES)
        ]
        client.close()
    arena.assert_survived()
    assert bound == "accepted", f"the binding was answered with {bound}"
    assert confirmed == ["accepted"] * PUBLISHES, f"publisher confirms: {confirmed}"


def test_stomp_topic_subscriber_of_twelve_hashes_and_mqtt_publishes(arena):
    """A STOMP subscriber on ``/topic/#.#.…(12×).z`` and MQTT publishes to a 100-level topic
    from three connections: the same matching, reached from two other protocols."""
    arena.start()
    host, port = arena.listeners["stomp"]
    with arena.attack():
        subscriber = RawStomp((host, port))
        subscriber.connect("1.2")
        subscriber.subscribe(f"/topic/{HASHES}", id="hashes")
        topic = "/".join(["a"] * KEY_WORDS)
        publishers = []
        for n in range(PUBLISHES):
            publisher = RawClient(arena.listeners["mqtt"])
            publisher.send(connect_packet(f"adversarial-hashes-{n}"))
            assert mqtt_reply(publisher) == "CONNACK 0000"
            publishers.append(publisher)
        for publisher in publishers:
            publisher.send(publish_packet(topic, b"slow", qos=1, packet_id=1))
        deadline = time.monotonic() + FREEZE_BOUND
        acknowledged = [
            mqtt_reply(publisher, max(0.01, deadline - time.monotonic()))
            for publisher in publishers
        ]
        for publisher in publishers:
            publisher.close()
        subscriber.close()
    arena.assert_survived()
    assert acknowledged == ["PUBACK"] * PUBLISHES, f"PUBACKs: {acknowledged}"


def test_5000_amqp_binds_are_answered_promptly(arena):
    """5,000 bindings of one queue to amq.topic, each with its own key: a router rebuilt on
    every bind does quadratic work (21 s in the issue); an incremental one answers them all in
    well under ``BIND_DEADLINE``."""
    arena.start()
    with arena.attack():
        client = RawAmqp(arena.listeners["amqp"]).open()
        client.queue_declare("adversarial-binds")
        client.expect(QUEUE_DECLARE_OK)
        started = time.monotonic()
        deadline = started + BIND_DEADLINE
        answered = 0
        outcome = "accepted"
        while answered < BINDS and outcome == "accepted":
            batch = min(BIND_BATCH, BINDS - answered)
            for i in range(answered, answered + batch):
                client.queue_bind("adversarial-binds", "amq.topic", f"sensor.{i}.*.reading")
            for _ in range(batch):
                remaining = deadline - time.monotonic()
                outcome = amqp_outcome(client, QUEUE_BIND_OK, remaining)
                if outcome != "accepted":
                    break
                answered += 1
        took = time.monotonic() - started
        client.close()
    arena.assert_survived()
    assert answered == BINDS, (
        f"{answered} of {BINDS} binds answered in {took:.1f} s (deadline {BIND_DEADLINE} s); "
        f"then: {outcome}"
    )
