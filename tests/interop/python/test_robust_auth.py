"""Authorisation of MQTT sessions and STOMP destinations (issue 13, defects 13, 14, 15 and 17),
with RabbitMQ's rules, against a broker whose users have restricted permissions:

* MQTT (RabbitMQ's MQTT plugin): resuming a persistent session consumes from its queue
  ``mqtt-subscription-<client id>``, so it needs read on that queue; a clean session deletes
  it, so it needs configure. A refusal is CONNACK 5 and leaves the session, and the connection
  holding it, alone. Removing a subscription needs what adding it did (write on the queue,
  read on the exchange).
* STOMP (RabbitMQ's STOMP plugin): ``/queue/N`` is a declaration (configure on N, even when N
  exists), a temporary queue too; SEND to an internal exchange is refused as AMQP refuses it;
  UNSUBSCRIBE with ``durable:true`` deletes only the subscription's own durable queue, with
  configure on it, never a queue the destination names.

Each case was seen to fail against the broker before the fix.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterator

import paho.mqtt.client as paho
import pika
import pika.exceptions
import pytest

from mqtt_clients import wait_until
from processes import JunctionBroker

# guest and owner may do anything; nobody nothing; reader may only read (consume); writer may
# publish and consume but declare nothing.
USERS_CONFIG = """
[[vhosts]]
name = "/"

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "owner"
password = "owner"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "nobody"
password = "nobody"
permissions = [{ vhost = "/", configure = "^$", write = "^$", read = "^$" }]

[[users]]
name = "reader"
password = "reader"
permissions = [{ vhost = "/", configure = "^$", write = "^$", read = ".*" }]

[[users]]
name = "writer"
password = "writer"
permissions = [{ vhost = "/", configure = "^$", write = ".*", read = ".*" }]
"""


def refused(code: int) -> int:
    """The reason code paho reports for the MQTT 3.1.1 CONNACK return code ``code``."""
    return paho.convert_connack_rc_to_reason_code(code).value


NOT_AUTHORIZED = 5


@pytest.fixture(scope="module")
def users_broker(junction_bin: Path, tmp_path_factory) -> Iterator[JunctionBroker]:
    """One broker for the module, with the users above."""
    root = tmp_path_factory.mktemp("robust-auth")
    config = root / "junction.toml"
    config.write_text(USERS_CONFIG)
    started = JunctionBroker(
        junction_bin, root / "data", root / "junction.log", ["--config", str(config)]
    ).start()
    yield started
    started.stop()


@pytest.fixture
def guest_channel(users_broker) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(users_broker.pika_parameters())
    yield connection.channel()
    if connection.is_open:
        connection.close()


def queue_exists(broker: JunctionBroker, queue: str) -> bool:
    """Asks with a passive declare as guest on a connection of its own (a refusal closes the
    channel)."""
    connection = pika.BlockingConnection(broker.pika_parameters())
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as closed:
        assert closed.reply_code == 404, closed
        return False
    finally:
        if connection.is_open:
            connection.close()


def topic_for(names, role: str) -> str:
    return names(role).replace("-", "/")


# ---------------------------------------------------------------------------------------------
# MQTT: sessions of other users.


def owners_session_with_a_queued_message(users_broker, mqtt, names):
    """owner's persistent session subscribed to a topic, disconnected, with one message queued
    for it. Returns (client id, topic)."""
    client_id = names("device")
    topic = topic_for(names, "t")
    owner = mqtt(client_id, target=users_broker, clean_session=False, username="owner", password="owner")
    owner.connect()
    assert owner.subscribe((topic, 1)) == [1]
    owner.disconnect()
    publisher = mqtt(names("pub"), target=users_broker)
    publisher.connect()
    publisher.publish(topic, b"queued for owner", qos=1)
    publisher.disconnect()
    return client_id, topic


def test_resuming_another_users_session_without_read_permission_is_refused(
    users_broker, mqtt, names
):
    """nobody connects with owner's client id and clean_session=0: CONNACK 5, and none of the
    queued messages; owner's session is intact (session present, the message still there)."""
    client_id, _ = owners_session_with_a_queued_message(users_broker, mqtt, names)
    thief = mqtt(client_id, target=users_broker, clean_session=False, username="nobody", password="nobody")
    thief.connect(expect=refused(NOT_AUTHORIZED))
    thief.expect_no_message(0.3)
    thief.close()

    owner = mqtt(client_id, target=users_broker, clean_session=False, username="owner", password="owner")
    assert owner.connect() is True
    assert owner.expect_message().payload == b"queued for owner"


def test_a_clean_session_without_configure_permission_does_not_delete_another_users_session(
    users_broker, mqtt, names
):
    """reader (read, but not configure) connects with owner's client id and clean_session=1:
    CONNACK 5, and owner's queue and its message survive."""
    client_id, _ = owners_session_with_a_queued_message(users_broker, mqtt, names)
    intruder = mqtt(client_id, target=users_broker, clean_session=True, username="reader", password="reader")
    intruder.connect(expect=refused(NOT_AUTHORIZED))
    intruder.close()
    assert queue_exists(users_broker, f"mqtt-subscription-{client_id}")

    owner = mqtt(client_id, target=users_broker, clean_session=False, username="owner", password="owner")
    assert owner.connect() is True
    assert owner.expect_message().payload == b"queued for owner"


def test_a_refused_takeover_leaves_the_connected_holder_alone(users_broker, mqtt, names):
    """While owner is connected, nobody's CONNECT with its client id is refused without
    kicking owner, who keeps getting live messages."""
    client_id = names("device")
    topic = topic_for(names, "live")
    owner = mqtt(client_id, target=users_broker, clean_session=False, username="owner", password="owner")
    owner.connect()
    assert owner.subscribe((topic, 1)) == [1]

    thief = mqtt(client_id, target=users_broker, clean_session=False, username="nobody", password="nobody")
    thief.connect(expect=refused(NOT_AUTHORIZED))
    thief.close()

    publisher = mqtt(names("pub"), target=users_broker)
    publisher.connect()
    publisher.publish(topic, b"live", qos=1)
    assert owner.expect_message().payload == b"live"
    assert not owner.disconnected.is_set()


def test_unsubscribe_without_write_permission_keeps_the_subscription(users_broker, mqtt, names):
    """reader may resume owner's session (read on its queue is what RabbitMQ asks), but
    removing the subscription's binding needs write on the queue: after reader's UNSUBSCRIBE
    the filter still routes to owner's session."""
    client_id = names("device")
    topic = topic_for(names, "kept")
    owner = mqtt(client_id, target=users_broker, clean_session=False, username="owner", password="owner")
    owner.connect()
    assert owner.subscribe((topic, 1)) == [1]
    owner.disconnect()

    reader = mqtt(client_id, target=users_broker, clean_session=False, username="reader", password="reader")
    assert reader.connect() is True
    reader.unsubscribe(topic)
    reader.disconnect()

    publisher = mqtt(names("pub"), target=users_broker)
    publisher.connect()
    publisher.publish(topic, b"still subscribed", qos=1)
    owner = mqtt(client_id, target=users_broker, clean_session=False, username="owner", password="owner")
    assert owner.connect() is True
    assert owner.expect_message().payload == b"still subscribed"


# ---------------------------------------------------------------------------------------------
# STOMP: UNSUBSCRIBE durable:true.


@pytest.mark.parametrize(
    "user, prefix", [("reader", "/amq/queue/"), ("owner", "/queue/")], ids=["amq-queue", "queue"]
)
def test_unsubscribe_durable_never_deletes_the_queue_a_destination_names(
    users_broker, guest_channel, stomp, names, user, prefix
):
    """A durable queue shared by name: UNSUBSCRIBE with durable:true (and persistent:true)
    ends the subscription only; the queue and its messages stay (RabbitMQ deletes only a
    durable topic subscription's own queue)."""
    queue = names("shared")
    guest_channel.queue_declare(queue, durable=True)
    guest_channel.basic_publish("", queue, b"keep me")
    client = stomp("1.2", target=users_broker)
    client.connect(login=user, passcode=user)
    for header in ("durable", "persistent"):
        subscription = client.subscribe(f"{prefix}{queue}", ack="client-individual")
        client.unsubscribe(subscription, **{header: "true"})
        assert queue_exists(users_broker, queue)
    # The delivery left unacknowledged goes back to the queue when the connection ends.
    client.disconnect()
    got = []

    def returned() -> bool:
        method, _, body = guest_channel.basic_get(queue, auto_ack=True)
        if method is not None:
            got.append(body)
        return bool(got)

    wait_until(returned)
    assert got == [b"keep me"]


def test_unsubscribe_durable_deletes_the_durable_topic_subscription_queue(
    users_broker, stomp, names
):
    """What durable:true is for: the subscription's own queue goes (owner may configure it)."""
    subscription = names("sub")
    client = stomp("1.2", target=users_broker)
    client.connect(login="owner", passcode="owner")
    client.subscribe(f"/topic/{names('k')}", id=subscription, durable="true")
    assert queue_exists(users_broker, f"stomp-subscription-{subscription}")
    client.unsubscribe(subscription, durable="true")
    wait_until(lambda: not queue_exists(users_broker, f"stomp-subscription-{subscription}"))


# ---------------------------------------------------------------------------------------------
# STOMP: declarations and publishing.


def test_a_queue_destination_needs_configure_even_when_the_queue_exists(
    users_broker, guest_channel, stomp, names
):
    """reader may read queue Q, but /queue/Q declares it (configure): ERROR access_refused;
    /amq/queue/Q (no declaration) works."""
    queue = names("q")
    guest_channel.queue_declare(queue, durable=True)
    guest_channel.basic_publish("", queue, b"for a reader")

    allowed = stomp("1.2", target=users_broker)
    allowed.connect(login="reader", passcode="reader")
    allowed.subscribe(f"/amq/queue/{queue}")
    assert allowed.expect_message().body == "for a reader"

    refused_client = stomp("1.2", target=users_broker)
    refused_client.connect(login="reader", passcode="reader")
    refused_client.conn.subscribe(f"/queue/{queue}", "s1")
    error = refused_client.expect_error()
    assert error.headers["message"] == "access_refused", error


def test_send_to_an_internal_exchange_is_refused(users_broker, guest_channel, stomp, names):
    """An internal exchange takes messages only from other exchanges: SEND to
    /exchange/<internal>/k gets ERROR access_refused and routes nothing."""
    exchange, queue = names("internal"), names("q")
    guest_channel.exchange_declare(exchange, "direct", internal=True)
    guest_channel.queue_declare(queue)
    guest_channel.queue_bind(queue, exchange, "k")
    client = stomp("1.2", target=users_broker)
    client.connect()
    client.send(f"/exchange/{exchange}/k", "smuggled", wait=False)
    error = client.expect_error()
    assert error.headers["message"] == "access_refused", error
    assert "internal" in error.body
    client.wait_disconnected()
    assert guest_channel.queue_declare(queue, passive=True).method.message_count == 0


def test_a_temporary_queue_needs_configure(users_broker, guest_channel, stomp, names):
    """writer may publish and consume but not declare: a reply-to /temp-queue/ (which declares
    the connection's temporary queue) gets ERROR access_refused, and so does SUBSCRIBE to one;
    the message is not published."""
    queue = names("requests")
    guest_channel.queue_declare(queue)

    sender = stomp("1.2", target=users_broker)
    sender.connect(login="writer", passcode="writer")
    sender.send(f"/amq/queue/{queue}", "request", wait=False, reply_to="/temp-queue/replies")
    error = sender.expect_error()
    assert error.headers["message"] == "access_refused", error
    assert guest_channel.queue_declare(queue, passive=True).method.message_count == 0

    subscriber = stomp("1.2", target=users_broker)
    subscriber.connect(login="writer", passcode="writer")
    subscriber.conn.subscribe("/temp-queue/replies", "s1")
    error = subscriber.expect_error()
    assert error.headers["message"] == "access_refused", error

    # writer may still publish where it may write.
    plain = stomp("1.2", target=users_broker)
    plain.connect(login="writer", passcode="writer")
    plain.send(f"/amq/queue/{queue}", "plain")
    assert guest_channel.queue_declare(queue, passive=True).method.message_count == 1
