"""Tutorial 5, "Topics": keys are dot-separated words; ``*`` is one word, ``#`` any number."""

import pytest

from messages import send_sentinel, until_sentinel

# binding key -> routing keys (of those published below) that it must match
EXPECTED_MATCHES = {
    "*.orange.*": ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"],
    "*.*.rabbit": ["quick.orange.rabbit"],
    "lazy.#": ["lazy.orange.elephant", "lazy.brown.fox", "lazy", "lazy.orange.male.rabbit"],
    "kern.*": ["kern.critical"],
    "kern.#": ["kern", "kern.critical", "kern.disk.full"],
    "#.critical": ["kern.critical", "critical"],
    "*": ["lazy", "orange", "kern", "critical"],
    "#.orange.#": [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "orange",
        "quick.orange.male.rabbit",
        "lazy.orange.male.rabbit",
    ],
    "kern.*.full": ["kern.disk.full"],
    "kern.#.full": ["kern.disk.full"],
    "#": None,  # everything
}

ROUTING_KEYS = [
    "quick.orange.rabbit",
    "lazy.orange.elephant",
    "quick.orange.fox",
    "lazy.brown.fox",
    "lazy",
    "quick.brown.fox",
    "orange",
    "quick.orange.male.rabbit",
    "lazy.orange.male.rabbit",
    "kern",
    "kern.critical",
    "kern.disk.full",
    "critical",
    "kernel.critical.x",
]


@pytest.mark.parametrize("binding_key", list(EXPECTED_MATCHES))
def test_a_topic_binding_matches_by_words(channel, names, binding_key):
    exchange = names("topic_logs")
    channel.exchange_declare(exchange, exchange_type="topic")
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, routing_key=binding_key)

    for key in ROUTING_KEYS:
        channel.basic_publish(exchange=exchange, routing_key=key, body=key.encode())
    send_sentinel(channel, queue)

    expected = EXPECTED_MATCHES[binding_key] or ROUTING_KEYS
    assert [body.decode() for body in until_sentinel(channel, queue)] == expected


def test_a_message_matching_several_bindings_of_one_queue_arrives_once(channel, names):
    exchange = names("topic_logs")
    channel.exchange_declare(exchange, exchange_type="topic")
    queue = channel.queue_declare("", exclusive=True).method.queue
    for binding_key in ["kern.#", "*.critical", "#", "kern.critical"]:
        channel.queue_bind(queue, exchange, routing_key=binding_key)

    channel.basic_publish(exchange=exchange, routing_key="kern.critical", body=b"once")
    send_sentinel(channel, queue)

    assert until_sentinel(channel, queue) == [b"once"]


def test_each_queue_gets_what_its_own_bindings_match(channel, names):
    """The tutorial's picture: Q1 binds ``*.orange.*``, Q2 binds ``*.*.rabbit`` and ``lazy.#``."""
    exchange = names("topic_logs")
    channel.exchange_declare(exchange, exchange_type="topic")
    q1 = channel.queue_declare("", exclusive=True).method.queue
    q2 = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q1, exchange, routing_key="*.orange.*")
    channel.queue_bind(q2, exchange, routing_key="*.*.rabbit")
    channel.queue_bind(q2, exchange, routing_key="lazy.#")

    for key in [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "quick.brown.fox",
        "lazy.orange.male.rabbit",
    ]:
        channel.basic_publish(exchange=exchange, routing_key=key, body=key.encode())
    send_sentinel(channel, q1, q2)

    assert until_sentinel(channel, q1) == [
        b"quick.orange.rabbit",
        b"lazy.orange.elephant",
        b"quick.orange.fox",
    ]
    assert until_sentinel(channel, q2) == [
        b"quick.orange.rabbit",
        b"lazy.orange.elephant",
        b"lazy.brown.fox",
        b"lazy.orange.male.rabbit",
    ]
