"""The memory alarm with pika: above the watermark a publishing connection is told it is
blocked (the first time it publishes, as RabbitMQ does) and is no longer read, while a
connection that only consumes is still served."""

from __future__ import annotations

import time

import pika


def test_a_blocked_publisher_is_not_read_while_a_consumer_is_served(start_broker, tmp_path):
    config = tmp_path / "alarm.toml"
    config.write_text("[alarms]\nmemory_high_watermark_bytes = 1\ncheck_interval_ms = 20\n")
    broker = start_broker(extra_args=["--config", str(config)])

    consumer = pika.BlockingConnection(broker.pika_parameters())
    reader = consumer.channel()
    reader.queue_declare("alarm-held")

    blocked: list[str] = []
    publisher = pika.BlockingConnection(broker.pika_parameters(blocked_connection_timeout=30))
    publisher.add_on_connection_blocked_callback(
        lambda _conn, frame: blocked.append(frame.method.reason)
    )
    channel = publisher.channel()
    channel.basic_publish("", "alarm-held", b"held back")
    deadline = time.monotonic() + 10
    while not blocked and time.monotonic() < deadline:
        publisher.process_data_events(time_limit=0.05)
    assert blocked == ["low on memory"]

    # The publisher is not read any more: what it sends now never reaches the queue, while
    # the consumer's connection is answered throughout.
    channel.basic_publish("", "alarm-held", b"never read")
    publisher.process_data_events(time_limit=0)
    first_seen = 0
    watch_until = time.monotonic() + 1.0
    while time.monotonic() < watch_until:
        method, _, body = reader.basic_get("alarm-held", auto_ack=True)
        if method is not None:
            assert body == b"held back", "a message sent after the block was read"
            first_seen += 1
        consumer.process_data_events(time_limit=0.05)
    assert first_seen <= 1
    assert reader.queue_declare("alarm-held", passive=True).method.message_count == 0
    consumer.close()


def test_an_mqtt_publisher_is_not_read_during_an_alarm_while_subscribers_are_served(
    start_broker, tmp_path
):
    """MQTT has no 'blocked' notice: as in RabbitMQ, a publishing MQTT connection is simply
    not read while the alarm lasts, and a subscriber still receives what was routed."""
    from mqtt_clients import MqttClient

    config = tmp_path / "alarm.toml"
    config.write_text("[alarms]\nmemory_high_watermark_bytes = 1\ncheck_interval_ms = 20\n")
    broker = start_broker(extra_args=["--config", str(config)])
    subscriber = MqttClient(broker.listeners["mqtt"], "alarm-sub")
    publisher = MqttClient(broker.listeners["mqtt"], "alarm-pub")
    try:
        subscriber.connect()
        subscriber.subscribe(("alarm/readings", 1))
        publisher.connect()
        # The first publication is held like any later one: the connection is not read from
        # its first PUBLISH on, which is never acknowledged or routed while the alarm lasts.
        first = publisher.paho.publish("alarm/readings", "first", qos=1)
        held = publisher.paho.publish("alarm/readings", "held", qos=1)
        subscriber.expect_no_message(within=1.5)
        assert not first.is_published()
        assert not held.is_published()
        # The subscriber's connection is still served: PINGREQ/SUBSCRIBE are answered.
        assert subscriber.subscribe(("alarm/other", 0)) == [0]
    finally:
        publisher.close()
        subscriber.close()
