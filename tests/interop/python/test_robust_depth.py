"""Issue 13, defects 1 and 20 with real clients: pika, paho-mqtt and stomp.py.

A blank password is refused on every protocol even when it is the configured one (RabbitMQ's
internal backend refuses blank passwords), and message headers nested deeper than 32 levels
close only the publisher's connection with 502 while headers at 32 levels travel intact.
"""

from __future__ import annotations

import paho.mqtt.client as paho
import pika
import pika.exceptions
import pytest

from mqtt_clients import MqttClient
from stomp_clients import StompClient

USERS = """
[[users]]
name = "guest"
password = "guest"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "blank"
password = ""
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "carol"
password = "pw"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]
"""


@pytest.fixture
def users_broker(start_broker, tmp_path):
    config = tmp_path / "users.toml"
    config.write_text(USERS)
    return start_broker(extra_args=["--config", str(config)])


def test_a_blank_password_is_refused_by_pika(users_broker):
    carol = pika.BlockingConnection(
        users_broker.pika_parameters(credentials=pika.PlainCredentials("carol", "pw"))
    )
    carol.close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(
            users_broker.pika_parameters(credentials=pika.PlainCredentials("blank", ""))
        )


def test_a_blank_password_is_refused_by_paho(users_broker):
    carol = MqttClient(users_broker.listeners["mqtt"], "carol", username="carol", password="pw")
    carol.connect()
    carol.close()
    blank = MqttClient(users_broker.listeners["mqtt"], "blank", username="blank", password="")
    blank.connect(expect=paho.convert_connack_rc_to_reason_code(4).value)
    blank.close()


def test_a_blank_password_is_refused_by_stomp_py(users_broker):
    carol = StompClient(users_broker.listeners["stomp"])
    carol.connect("carol", "pw")
    carol.close()
    blank = StompClient(users_broker.listeners["stomp"])
    error = blank.connect_refused("blank", "")
    # RabbitMQ's words, whatever the reason (the log says it was the blank password).
    assert error.headers.get("message") == "Bad CONNECT"
    assert error.body == "Access refused for user 'blank'\n"
    blank.close()


def nested(depth: int) -> dict:
    """Headers nested ``depth`` levels deep (the headers table itself is level 1)."""
    value: object = "leaf"
    for _ in range(depth - 1):
        value = {"k": value}
    return {"k": value}


def test_headers_past_the_limit_close_only_the_publisher(broker, names):
    queue = names("q")
    canary = pika.BlockingConnection(broker.pika_parameters())
    canary_channel = canary.channel()
    canary_channel.queue_declare(queue)

    publisher = pika.BlockingConnection(broker.pika_parameters())
    channel = publisher.channel()
    channel.basic_publish("", queue, b"at the limit", pika.BasicProperties(headers=nested(32)))
    channel.basic_publish("", queue, b"too deep", pika.BasicProperties(headers=nested(33)))
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(50):
            publisher.process_data_events(time_limit=0.1)
    assert closed.value.reply_code == 502
    assert "nested deeper than 32 levels" in closed.value.reply_text

    method, properties, body = canary_channel.basic_get(queue, auto_ack=True)
    assert body == b"at the limit"
    assert properties.headers == nested(32)
    assert canary_channel.basic_get(queue, auto_ack=True) == (None, None, None)
    canary.close()
