"""Topic permissions (RabbitMQ's topic authorisation) on all three protocols, from pika,
paho-mqtt and stomp.py, with the users configured in ``[[users]] topic_permissions``:

* AMQP: basic.publish to a topic exchange with a routing key the ``write`` pattern refuses
  closes the channel with 403; queue.bind with a key the ``read`` pattern refuses too.
* MQTT: a refused SUBSCRIBE filter gets return code 0x80 in SUBACK (the others are granted);
  a refused PUBLISH closes the connection, as RabbitMQ does for 3.1.1. ``{client_id}`` in a
  pattern is the connection's client id.
* STOMP: SEND to ``/topic/K`` or ``/exchange/X/K`` and SUBSCRIBE to them get an ERROR.

Exchanges without a topic permission, and other exchange types, are not limited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import paho.mqtt.client as paho
import pika
import pika.exceptions
import pytest

from processes import JunctionBroker

# sensor may publish only under sensors.<its client id>. and read only alerts.*; on the
# exchange "events" it may publish only "ok.*"; elsewhere it is not limited.
CONFIG = r"""
[[vhosts]]
name = "/"

[[users]]
name = "guest"
password = "guest"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "sensor"
password = "sensor"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]
topic_permissions = [
  { vhost = "/", exchange = "amq.topic", write = "^sensors\\.{client_id}\\.", read = "^alerts\\." },
  { vhost = "/", exchange = "events", write = "^ok\\." },
]
"""

ACCESS_REFUSED = 403
SUBSCRIPTION_FAILURE = 0x80


@pytest.fixture(scope="module")
def topic_broker(junction_bin: Path, tmp_path_factory) -> Iterator[JunctionBroker]:
    root = tmp_path_factory.mktemp("topic-permissions")
    config = root / "junction.toml"
    config.write_text(CONFIG)
    started = JunctionBroker(
        junction_bin, root / "data", root / "junction.log", ["--config", str(config)]
    ).start()
    yield started
    started.stop()


def sensor_channel(broker: JunctionBroker):
    parameters = broker.pika_parameters()
    parameters.credentials = pika.PlainCredentials("sensor", "sensor")
    return pika.BlockingConnection(parameters).channel()


def test_amqp_publishes_and_bindings_on_topic_exchanges_follow_the_patterns(topic_broker, names):
    channel = sensor_channel(topic_broker)
    channel.exchange_declare("events", "topic")
    queue = names("q")
    channel.queue_declare(queue, exclusive=True)
    # Read: alerts.* may be bound on amq.topic; "events" has no read pattern: all keys.
    channel.queue_bind(queue, "amq.topic", "alerts.#")
    channel.queue_bind(queue, "events", "anything.#")
    channel.basic_publish("events", "ok.1", b"allowed")
    # A direct exchange is never limited by topic permissions.
    channel.basic_publish("amq.direct", "whatever", b"not a topic exchange")
    channel.queue_declare(queue, passive=True)  # a round trip: the publishes went through
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.basic_publish("events", "bad.1", b"refused")
        channel.queue_declare(queue, passive=True)
    assert refused.value.reply_code == ACCESS_REFUSED
    assert "write access to topic 'bad.1' in exchange 'events'" in refused.value.reply_text

    channel = sensor_channel(topic_broker)
    other = names("other")
    channel.queue_declare(other)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.queue_bind(other, "amq.topic", "sensors.#")
    assert refused.value.reply_code == ACCESS_REFUSED
    assert "read access to topic 'sensors.#'" in refused.value.reply_text


def test_mqtt_subscribe_gets_0x80_for_a_refused_filter_and_the_rest_granted(
    topic_broker, mqtt, names
):
    device = mqtt(names("dev"), target=topic_broker, username="sensor", password="sensor")
    device.connect()
    assert device.subscribe(("alerts/fire", 1), ("sensors/#", 1), ("alerts/+", 0)) == [
        1,
        SUBSCRIPTION_FAILURE,
        0,
    ]
    # Its own subtree may be published to, and the granted subscription works.
    guest = mqtt(names("guest"), target=topic_broker)
    guest.connect()
    guest.publish("alerts/fire", b"evacuate", qos=1)
    assert device.expect_message().payload == b"evacuate"


def test_mqtt_publish_outside_the_client_ids_subtree_closes_the_connection(
    topic_broker, mqtt, names
):
    client_id = names("dev")
    watcher = mqtt(names("watch"), target=topic_broker)
    watcher.connect()
    watcher.subscribe(("sensors/#", 1))
    device = mqtt(client_id, target=topic_broker, username="sensor", password="sensor")
    device.connect()
    device.publish(f"sensors/{client_id}/temp", b"21.5", qos=1)
    assert watcher.expect_message().payload == b"21.5"
    # No PUBACK comes for it: paho's own publish, not the helper that waits for one.
    device.paho.publish("sensors/someone-else/temp", b"spoofed", qos=1)
    assert device.disconnected.wait(5), "the broker kept a connection whose PUBLISH it refused"
    watcher.expect_no_message(0.3)


def test_stomp_send_and_subscribe_are_checked_on_topic_destinations(topic_broker, stomp, names):
    subscriber = stomp(target=topic_broker)
    subscriber.connect(login="sensor", passcode="sensor")
    subscriber.subscribe("/topic/alerts.stomp")
    guest = stomp(target=topic_broker)
    guest.connect()
    guest.send("/topic/alerts.stomp", "heads up")
    assert subscriber.expect_message().body == "heads up"

    refused = stomp(target=topic_broker)
    refused.connect(login="sensor", passcode="sensor")
    refused.conn.subscribe("/topic/sensors.x", "refused-sub", ack="auto")
    error = refused.expect_error()
    assert "read access to topic 'sensors.x'" in error.body

    sender = stomp(target=topic_broker)
    sender.connect(login="sensor", passcode="sensor")
    sender.send("/exchange/events/bad.key", "refused", wait=False)
    error = sender.expect_error()
    assert "write access to topic 'bad.key' in exchange 'events'" in error.body
