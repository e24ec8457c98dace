"""MQTT CONNECT end to end: the CONNACK return codes, client ids, credentials and vhosts,
anonymous access, keep-alive and takeover.

paho reports a refused CONNACK of MQTT 3.1.1 as an MQTT 5 reason code (4 "bad user name or
password" arrives as 134, for example); ``refused(code)`` gives the value paho reports for a
3.1.1 return code. What paho cannot send (an empty client id without a clean session, another
protocol level) and what must not answer at all (a client that stays silent) is done with a
raw socket and hand-built packets.
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as paho
import pika
import pytest

from mqtt_clients import wait_until
from mqtt_raw import connect_packet


def refused(code: int) -> int:
    """The reason code paho reports for the MQTT 3.1.1 CONNACK return code ``code``."""
    return paho.convert_connack_rc_to_reason_code(code).value


@pytest.fixture
def amqp():
    """Opens pika connections to a given broker; closes them when the test ends."""
    opened: list[pika.BlockingConnection] = []

    def open_connection(target, **overrides) -> pika.BlockingConnection:
        conn = pika.BlockingConnection(target.pika_parameters(**overrides))
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        if conn.is_open:
            conn.close()


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "junction-test.toml"
    path.write_text(text)
    return str(path)


def topic_for(names, role: str) -> str:
    return names(role).replace("-", "/")


def round_trip(subscriber, publisher, topic: str, payload: bytes) -> None:
    """Subscribes, publishes at QoS 1 and asserts the subscriber gets exactly that."""
    assert subscriber.subscribe((topic, 1)) == [1]
    publisher.publish(topic, payload, qos=1)
    message = subscriber.expect_message()
    assert (message.topic, message.payload) == (topic, payload)


# ---------------------------------------------------------------------------------------------
# Return codes.


@pytest.mark.parametrize(
    "protocol_name, level",
    [(b"MQIsdp", 3), (b"MQTT", 3), (b"MQTT", 5)],
    ids=["MQIsdp-3", "MQTT-3", "MQTT-5"],
)
def test_an_unsupported_protocol_level_gets_connack_1_and_is_closed(
    raw, names, protocol_name, level
):
    """MQTT 3.1 (MQIsdp level 3) and any level but 4 get CONNACK 1 (unacceptable protocol
    version), after which the broker closes the connection [MQTT-3.1.2-2]."""
    client = raw()
    client.send(connect_packet(names("c"), protocol_name=protocol_name, level=level))
    assert client.read_packet() == (0x20, b"\x00\x01")
    client.wait_closed()


def test_an_mqtt_5_connect_with_its_property_block_gets_connack_1(raw, names):
    """A real MQTT 5 CONNECT (level 5 with the property block 3.1.1 does not have) is still
    answered with CONNACK 1, not dropped: the level decides before the rest is parsed, so a
    v5 client learns to fall back to 3.1.1 [MQTT-3.1.2-2]."""
    client = raw()
    client.send(connect_packet(names("c"), level=5, v5_properties=True))
    assert client.read_packet() == (0x20, b"\x00\x01")
    client.wait_closed()


def test_an_empty_client_id_without_clean_session_gets_connack_2(raw):
    """A client that sends no id must ask for a clean session; otherwise CONNACK 2
    (identifier rejected) and the connection closes [MQTT-3.1.3-8]. (paho refuses to send
    this, so it is a raw CONNECT.)"""
    client = raw()
    client.send(connect_packet("", clean_session=False))
    assert client.read_packet() == (0x20, b"\x00\x02")
    client.wait_closed()


def test_a_wrong_password_gets_connack_4(mqtt, names):
    """A known user with the wrong password is refused with CONNACK 4 (bad user name or
    password)."""
    client = mqtt(names("c"), password="not-the-password")
    client.connect(expect=refused(4))
    client.close()


def test_an_unknown_user_gets_connack_4(mqtt, names):
    """A user name the broker does not know is refused with CONNACK 4 as well."""
    client = mqtt(names("c"), username=names("nobody"), password="guest")
    client.connect(expect=refused(4))
    client.close()


def test_no_credentials_get_connack_5_when_anonymous_access_is_off(
    start_broker, tmp_path, mqtt, names
):
    """With ``[mqtt] allow_anonymous = false`` a CONNECT without a user name gets CONNACK 5
    (not authorised), from loopback too."""
    config = write_config(tmp_path, "[mqtt]\nallow_anonymous = false\n")
    private = start_broker(extra_args=["--config", config])
    client = mqtt(names("c"), target=private, username=None, password=None)
    client.connect(expect=refused(5))
    client.close()


def test_a_vhost_that_does_not_exist_gets_connack_5(mqtt, names):
    """``vhost:user`` naming a vhost that does not exist: the user authenticates, but is not
    authorised there, so CONNACK 5."""
    client = mqtt(names("c"), username=f"{names('no-such-vhost')}:guest", password="guest")
    client.connect(expect=refused(5))
    client.close()


# A vhost "devices" guest may use, and a vhost "locked" nobody has permissions on. Arrays of
# tables replace the default's, so "/" and guest's permission there are repeated.
VHOSTS_CONFIG = """
[[vhosts]]
name = "/"

[[vhosts]]
name = "devices"

[[vhosts]]
name = "locked"

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [
    { vhost = "/", configure = ".*", write = ".*", read = ".*" },
    { vhost = "devices", configure = ".*", write = ".*", read = ".*" },
]
"""


def test_a_vhost_the_user_may_not_access_gets_connack_5(start_broker, tmp_path, mqtt, names):
    """``locked:guest`` names an existing vhost guest has no permissions on: CONNACK 5, while
    the same user on a vhost it may use is accepted."""
    private = start_broker(extra_args=["--config", write_config(tmp_path, VHOSTS_CONFIG)])
    locked = mqtt(names("c"), target=private, username="locked:guest", password="guest")
    locked.connect(expect=refused(5))
    locked.close()
    allowed = mqtt(names("c"), target=private, username="devices:guest", password="guest")
    allowed.connect()


def test_a_vhost_prefixed_user_name_publishes_into_that_vhost(
    start_broker, tmp_path, mqtt, amqp, names
):
    """A user name ``devices:guest`` puts the session in vhost ``devices``: what it publishes
    goes to that vhost's amq.topic (an AMQP consumer there gets it, routing key with ``/``
    turned into ``.``) and not to the default vhost's."""
    private = start_broker(extra_args=["--config", write_config(tmp_path, VHOSTS_CONFIG)])
    topic = topic_for(names, "reading")
    routing_key = topic.replace("/", ".")

    def bound_queue(vhost: str):
        channel = amqp(private, virtual_host=vhost).channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "amq.topic", routing_key)
        return channel, queue

    devices_channel, devices_queue = bound_queue("devices")
    default_channel, default_queue = bound_queue("/")

    publisher = mqtt(names("pub"), target=private, username="devices:guest", password="guest")
    publisher.connect()
    publisher.publish(topic, b"21.5 C", qos=1)  # PUBACK: routing is done

    got = []

    def delivered() -> bool:
        method, _, body = devices_channel.basic_get(devices_queue, auto_ack=True)
        if method is not None:
            got.append((method.routing_key, body))
        return bool(got)

    wait_until(delivered)
    assert got == [(routing_key, b"21.5 C")]
    # Routing happened before the PUBACK, so the default vhost's queue has had its chance.
    assert default_channel.basic_get(default_queue, auto_ack=True)[0] is None


def test_an_empty_client_id_with_clean_session_is_accepted_with_an_assigned_id(mqtt, names):
    """An empty client id with a clean session is accepted; the broker assigns each such
    client its own id, so two of them do not take each other over and both keep working."""
    first = mqtt("")
    second = mqtt("")
    assert first.connect() is False
    assert second.connect() is False
    round_trip(first, second, topic_for(names, "t"), b"from the second")
    round_trip(second, first, topic_for(names, "t"), b"from the first")
    assert not first.disconnected.is_set() and not second.disconnected.is_set()


# ---------------------------------------------------------------------------------------------
# Anonymous access.


def test_anonymous_clients_connect_by_default(mqtt, names):
    """With the default configuration (``allow_anonymous = true``, as RabbitMQ and Mosquitto 2
    on loopback) a CONNECT without a user name from loopback logs in as the anonymous user
    (guest) and can publish and subscribe; credentials that are given are still checked (a
    wrong password is CONNACK 4)."""
    subscriber = mqtt(names("sub"), username=None, password=None)
    publisher = mqtt(names("pub"), username=None, password=None)
    subscriber.connect()
    publisher.connect()
    round_trip(subscriber, publisher, topic_for(names, "t"), b"anonymous")
    wrong = mqtt(names("wrong"), password="not-the-password")
    wrong.connect(expect=refused(4))
    wrong.close()


def test_refused_logins_are_logged_once_per_peer_and_window(start_broker, raw, names):
    """A client retrying with a wrong password in a loop gets CONNACK 4 every time, but the
    broker writes one log line for it per 10 s window, not one per attempt. (Raw packets: paho
    takes about a second per connection, which made the loop slower than the check.)"""
    private = start_broker()
    started = time.monotonic()
    for n in range(200):
        client = raw(private)
        client.send(connect_packet(names(f"retry-{n}"), password="not-the-password"))
        assert client.read_packet() == (0x20, b"\x00\x04")
        client.close()
    # One line per 10 s window the loop touched (a slow machine may take several windows),
    # never one per attempt; each later line says how many it left out.
    windows = int((time.monotonic() - started) // 10) + 1
    log = private.log_path.read_text(errors="replace")
    lines = log.count("login refused")
    assert 1 <= lines <= windows + 1, f"{lines} log lines for 200 refused logins in {windows} windows"
    assert lines < 200


# ---------------------------------------------------------------------------------------------
# Keep-alive.


def test_a_client_that_pings_within_its_keep_alive_stays_connected(mqtt, names):
    """A client with keep-alive 2 s that sends nothing but its PINGREQs is still connected
    after more than twice that (the broker allows 1.5 times the interval between packets),
    and still works."""
    client = mqtt(names("c"))
    client.connect(keepalive=2)
    assert not client.disconnected.wait(5.0), "the broker closed a client that kept pinging"
    round_trip(client, client, topic_for(names, "t"), b"still here")


def test_a_silent_client_is_disconnected_after_one_and_a_half_keep_alives(raw, names):
    """A client that sends CONNECT with keep-alive 1 s and then nothing is disconnected by the
    broker once 1.5 s pass without a packet [MQTT-3.1.2-24]: not within the first second, but
    well within five."""
    client = raw()
    client.connect(names("c"), keepalive=1)
    connected = time.monotonic()
    client.sock.settimeout(1.0)
    try:
        data = client.sock.recv(1)
    except TimeoutError:
        pass  # still open after 1 s: as it should be
    else:
        raise AssertionError(f"the connection ended within 1 s of CONNACK (read {data!r})")
    client.wait_closed(timeout=5.0 - (time.monotonic() - connected))
    assert client.closed_at - connected >= 1.0


# ---------------------------------------------------------------------------------------------
# Takeover.


def test_a_second_connection_with_the_same_client_id_takes_the_session_over(mqtt, names):
    """A CONNECT with a client id that is already connected makes the broker close the first
    connection [MQTT-3.1.4-2]; the new one is accepted and works."""
    client_id = names("device")
    first = mqtt(client_id)
    first.paho.reconnect_delay_set(60, 120)  # paho would otherwise reconnect and take it back
    first.connect()
    second = mqtt(client_id)
    second.connect()
    first.wait_disconnected()
    round_trip(second, second, topic_for(names, "t"), b"after the takeover")
    assert not second.disconnected.is_set()
