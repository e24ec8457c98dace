"""The MQTT basics with paho: QoS 0, 1 and 2 through one subscription, over TCP and over
WebSocket on both WebSocket listeners."""

import pytest


@pytest.mark.parametrize("listener", ["mqtt", "web-mqtt", "http"])
def test_a_subscriber_receives_qos_0_1_and_2_publications(mqtt, names, listener):
    topic = names("smoke").replace("-", "/")
    subscriber = mqtt(names("sub"), listener=listener)
    subscriber.connect()
    assert subscriber.subscribe((topic, 2)) == [2]
    publisher = mqtt(names("pub"), listener=listener)
    publisher.connect()
    for qos in (0, 1, 2):
        publisher.publish(topic, f"reading {qos}", qos=qos)
    received = [subscriber.expect_message() for _ in range(3)]
    assert [(m.topic, m.payload, m.qos) for m in received] == [
        (topic, b"reading 0", 0),
        (topic, b"reading 1", 1),
        (topic, b"reading 2", 2),
    ]
