"""The README's IoT example as a reader would run it: examples/python/iot_consumer.py (pika)
reads what mosquitto_pub (Debian's mosquitto-clients) publishes over MQTT."""

import shutil
import subprocess

import pytest


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients missing")
def test_a_reading_published_with_mosquitto_pub_reaches_the_pika_consumer(examples, broker, names):
    queue = names("readings")
    consumer = examples("iot_consumer.py", "--queue", queue, "--count", "2")
    consumer.wait_ready()
    host, port = broker.listeners["mqtt"]
    for qos, topic, reading in [
        ("0", "sensors/kitchen/temperature", "21.5"),
        ("1", "sensors/hall/humidity", "40"),
    ]:
        subprocess.run(
            ["mosquitto_pub", "-h", host, "-p", str(port), "-u", "guest", "-P", "guest"]
            + ["-q", qos, "-t", topic, "-m", reading],
            check=True,
            timeout=10,
        )
    assert consumer.finish()[-2:] == [
        "sensors.kitchen.temperature: 21.5",
        "sensors.hall.humidity: 40",
    ]
