"""The JWT auth backend (``[auth] backends = ["jwt", "internal"]``), in the manner of RabbitMQ's
OAuth 2.0 plugin, with tokens this test signs (PyJWT, HS256 and RS256): the token is the
password on AMQP (pika), MQTT (paho, over TCP and WebSocket) and STOMP (stomp.py, over TCP
and WebSocket); its scopes are the permissions; an expired or forged token is refused; a
password that is not a token goes on to the internal users.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import jwt
import paho.mqtt.client as paho
import pika
import pika.exceptions
import pytest

from processes import JunctionBroker

SECRET = "a shared secret for the test, long enough"
KEYS = Path(__file__).resolve().parents[3] / "plugins" / "auth-jwt" / "testdata"
ACCESS_REFUSED = 403


def config() -> str:
    public = (KEYS / "public.pem").as_posix()
    return f"""
[auth]
backends = ["jwt", "internal"]

[auth.jwt]
resource_server_id = "rabbitmq"
keys = [
  {{ id = "hmac", algorithm = "HS256", secret = "{SECRET}" }},
  {{ id = "rsa", algorithm = "RS256", public_key_file = "{public}" }},
]

[[users]]
name = "local"
password = "local-pw"
permissions = [{{ vhost = "/", configure = ".*", write = ".*", read = ".*" }}]
"""


@pytest.fixture(scope="module")
def jwt_broker(junction_bin: Path, tmp_path_factory) -> Iterator[JunctionBroker]:
    root = tmp_path_factory.mktemp("jwt")
    path = root / "junction.toml"
    path.write_text(config())
    broker = JunctionBroker(
        junction_bin, root / "data", root / "junction.log", ["--config", str(path)]
    ).start()
    yield broker
    broker.stop()


def token(scope: str, *, rsa: bool = False, expires_in: int = 300) -> str:
    claims = {"sub": "svc-orders", "aud": "rabbitmq", "exp": int(time.time()) + expires_in, "scope": scope}
    if rsa:
        private = (KEYS / "private.pem").read_text()
        return jwt.encode(claims, private, algorithm="RS256", headers={"kid": "rsa"})
    return jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "hmac"})


# Everything on queues and exchanges whose names start with "jwt-" (and MQTT's session
# queues), amq.topic for writes under "ok.", and reading anything.
SCOPE = (
    "rabbitmq.configure:*/jwt-* rabbitmq.write:*/jwt-* rabbitmq.read:*/* "
    "rabbitmq.configure:*/mqtt-subscription-* rabbitmq.write:*/mqtt-subscription-* "
    "rabbitmq.write:*/amq.topic/ok.* rabbitmq.write:*/amq.default"
)


def amqp(broker: JunctionBroker, password: str, user: str = "whoever") -> pika.BlockingConnection:
    parameters = broker.pika_parameters()
    parameters.credentials = pika.PlainCredentials(user, password)
    return pika.BlockingConnection(parameters)


@pytest.mark.parametrize("rsa", [False, True], ids=["hs256", "rs256"])
def test_amqp_logs_in_with_a_token_and_its_scopes_are_the_permissions(jwt_broker, names, rsa):
    connection = amqp(jwt_broker, token(SCOPE, rsa=rsa))
    channel = connection.channel()
    queue = "jwt-" + names("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"through the default exchange")
    channel.basic_publish("amq.topic", "ok.1", b"allowed topic")
    assert channel.queue_declare(queue, passive=True).method.message_count == 1
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.queue_declare("other-" + names("q"))
    assert refused.value.reply_code == ACCESS_REFUSED
    assert "for user 'svc-orders'" in refused.value.reply_text
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.basic_publish("amq.topic", "bad.1", b"refused topic")
        channel.queue_declare(queue, passive=True)
    assert refused.value.reply_code == ACCESS_REFUSED
    connection.close()


def test_expired_and_forged_tokens_are_refused_and_passwords_go_to_the_internal_users(jwt_broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(jwt_broker, token(SCOPE, expires_in=-10))
    forged = token(SCOPE)[:-2] + "xx"
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(jwt_broker, forged)
    amqp(jwt_broker, "local-pw", user="local").close()


@pytest.mark.parametrize("listener", ["mqtt", "web-mqtt"])
def test_mqtt_over_tcp_and_websocket_logs_in_with_a_token(jwt_broker, mqtt, names, listener):
    device = mqtt(
        names("dev"), listener=listener, target=jwt_broker, username="device", password=token(SCOPE, rsa=True)
    )
    device.connect()
    assert device.subscribe(("ok/#", 1)) == [1]
    device.publish("ok/reading", b"42", qos=1)
    assert device.expect_message().payload == b"42"
    expired = mqtt(
        names("old"), listener=listener, target=jwt_broker, username="device", password=token(SCOPE, expires_in=-10)
    )
    expired.connect(expect=paho.convert_connack_rc_to_reason_code(4).value)


@pytest.mark.parametrize("over_websocket", [False, True], ids=["tcp", "websocket"])
def test_stomp_over_tcp_and_websocket_logs_in_with_a_token(jwt_broker, stomp, names, over_websocket):
    listener = "web-stomp" if over_websocket else "stomp"
    client = stomp(listener=listener, target=jwt_broker, over_websocket=over_websocket)
    client.connect(login="whoever", passcode=token(SCOPE))
    queue = "jwt-" + names("q")
    client.subscribe(f"/queue/{queue}")
    client.send(f"/queue/{queue}", "hello")
    assert client.expect_message().body == "hello"
    refused = stomp(listener=listener, target=jwt_broker, over_websocket=over_websocket)
    error = refused.connect_refused(login="whoever", passcode=token(SCOPE, expires_in=-10))
    assert "Access refused" in error.body
