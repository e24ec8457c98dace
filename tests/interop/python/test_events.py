"""Broker events on ``amq.rabbitmq.event``, as RabbitMQ's event exchange plugin publishes
them, read by a pika consumer and by a stomp.py subscription to
``/exchange/amq.rabbitmq.event/...``: connections of every protocol created and closed,
queues created and deleted, consumers created and deleted, logins that succeed and fail. The
routing key is the event's name, the body is empty and the properties are headers.
"""

from __future__ import annotations

import queue as queues
import time

import pika
import pika.exceptions
import pytest

from mqtt_clients import MqttClient


class EventReader:
    """A pika consumer of every event, collecting them from its own connection."""

    def __init__(self, broker, binding: str = "#"):
        self.connection = pika.BlockingConnection(broker.pika_parameters())
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, "amq.rabbitmq.event", binding)
        self.events: list[tuple[str, dict]] = []

    def wait_for(self, kind: str, timeout: float = 10.0, **headers) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for key, found in self.events:
                if key == kind and all(found.get(k) == v for k, v in headers.items()):
                    return found
            assert time.monotonic() < deadline, f"no {kind} {headers} in {self.events}"
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                self.connection.process_data_events(time_limit=0.1)
                continue
            assert body == b""
            self.events.append((method.routing_key, decode(properties.headers or {})))

    def close(self):
        self.connection.close()


def decode(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    return value


@pytest.fixture
def events(broker):
    reader = EventReader(broker)
    yield reader
    reader.close()


def test_connection_queue_and_consumer_events(broker, events, names):
    connection = pika.BlockingConnection(broker.pika_parameters(client_properties={"connection_name": names("app")}))
    created = events.wait_for("connection.created", protocol="AMQP 0-9-1", user="guest")
    assert created["vhost"] == "/"
    assert created["peer_host"] == "127.0.0.1"
    assert "timestamp_in_ms" in created
    channel = connection.channel()
    queue = names("evented")
    channel.queue_declare(queue, durable=True, arguments={"x-max-length": 5})
    declared = events.wait_for("queue.created", name=queue)
    assert declared["durable"] is True and declared["arguments"] == {"x-max-length": 5}
    tag = channel.basic_consume(queue, lambda *a: None)
    consumer = events.wait_for("consumer.created", consumer_tag=tag)
    assert consumer["queue"] == queue and consumer["ack_required"] is True
    channel.basic_cancel(tag)
    events.wait_for("consumer.deleted", consumer_tag=tag, queue=queue)
    channel.queue_delete(queue)
    events.wait_for("queue.deleted", name=queue, vhost="/")
    name = created["name"]
    connection.close()
    events.wait_for("connection.closed", name=name)


def test_logins_and_other_protocols(broker, events, names):
    client_id = names("device")
    device = MqttClient(broker.listeners["mqtt"], client_id=client_id)
    device.connect()
    events.wait_for("user.authentication.success", name="guest", protocol="mqtt")
    created = events.wait_for("connection.created", protocol="MQTT 3.1.1", client_id=client_id)
    device.close()
    events.wait_for("connection.closed", name=created["name"])
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(broker.pika_parameters(credentials=pika.PlainCredentials("guest", "wrong")))
    failure = events.wait_for("user.authentication.failure", name="guest", protocol="amqp")
    assert "invalid credentials" in failure["error"]


def test_a_stomp_subscription_reads_events(broker, stomp, names):
    listener = stomp(target=broker)
    listener.connect()
    listener.subscribe("/exchange/amq.rabbitmq.event/queue.*")
    queue = names("seen-by-stomp")
    connection = pika.BlockingConnection(broker.pika_parameters())
    connection.channel().queue_declare(queue)
    connection.close()
    deadline = time.monotonic() + 10
    while True:
        message = listener.expect_message(timeout=max(0.1, deadline - time.monotonic()))
        if message.headers.get("name") == queue:
            break
    assert message.headers["destination"].endswith("queue.created")
