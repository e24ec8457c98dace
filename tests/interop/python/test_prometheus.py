"""Prometheus metrics (`--prometheus`, `/metrics` and `/metrics/per-object`), scraped raw and
by Debian's real ``prometheus`` server, which reads a queue's depth back through its HTTP
query API:

* the aggregated metrics carry RabbitMQ's names and labels (``rabbitmq_connections``,
  ``rabbitmq_queue_messages_ready``, ``rabbitmq_global_messages_received_total{protocol=...}``
  ...), so existing dashboards work, and ``junction_*`` metrics what only Junction has;
* counters follow pika, paho-mqtt and stomp.py clients: messages received per protocol,
  confirms, unroutable drops and returns, deliveries and acks;
* ``/metrics/per-object`` has one series per queue, gone when the queue is deleted.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pika
import pytest
import requests

from mqtt_clients import MqttClient


def scrape(broker, path: str = "/metrics") -> str:
    host, port = broker.listeners["prometheus"]
    response = requests.get(f"http://{host}:{port}{path}", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    return response.text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the series ``name`` with exactly these labels, or None."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'([a-z_]+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{check} stayed false"
        time.sleep(0.1)


def test_rabbitmq_names_follow_clients_of_every_protocol(start_broker, stomp):
    broker = start_broker()
    before = scrape(broker)
    for name in ("rabbitmq_connections", "rabbitmq_queues", "rabbitmq_consumers", "rabbitmq_process_resident_memory_bytes", "rabbitmq_disk_space_available_bytes", "rabbitmq_process_open_fds", "junction_mqtt_parked_connections", "junction_flow_held_connections", "junction_store_messages_per_fsync"):
        assert sample(before, name) is not None, name
    assert sample(before, "rabbitmq_global_messages_received_total", protocol="amqp091") == 0
    assert sample(before, "junction_connections", protocol="stomp") == 0

    connection = pika.BlockingConnection(broker.pika_parameters())
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("metered", durable=True)
    for _ in range(4):
        channel.basic_publish("", "metered", b"m", pika.BasicProperties(delivery_mode=2))
    channel.basic_publish("amq.direct", "nowhere", b"dropped")
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish("amq.direct", "nowhere", b"returned", mandatory=True)
    method, _, _ = channel.basic_get("metered")
    channel.basic_ack(method.delivery_tag)
    device = MqttClient(broker.listeners["mqtt"], client_id="metered-device")
    device.connect()
    device.publish("sensors/t", "21", qos=1)
    client = stomp(target=broker)
    client.connect()
    client.send("/queue/metered", "from stomp")

    def counted():
        text = scrape(broker)
        return (
            sample(text, "rabbitmq_global_messages_received_total", protocol="amqp091") == 6
            and sample(text, "rabbitmq_global_messages_received_total", protocol="mqtt311") == 1
            and sample(text, "rabbitmq_global_messages_received_total", protocol="stomp") == 1
            and text
        )

    text = eventually(counted)
    assert sample(text, "rabbitmq_global_messages_confirmed_total", protocol="amqp091") == 6
    assert sample(text, "rabbitmq_global_messages_confirmed_total", protocol="mqtt311") == 1
    assert sample(text, "rabbitmq_global_messages_unroutable_dropped_total", protocol="amqp091") == 1
    assert sample(text, "rabbitmq_global_messages_unroutable_returned_total", protocol="amqp091") == 1
    assert sample(text, "rabbitmq_global_messages_delivered_get_manual_ack_total") == 1
    assert sample(text, "rabbitmq_global_messages_acknowledged_total") == 1
    assert sample(text, "rabbitmq_connections") == 3
    assert sample(text, "junction_connections", protocol="amqp091") == 1
    assert sample(text, "junction_connections", protocol="mqtt311") == 1
    assert sample(text, "rabbitmq_queue_messages_ready") == 4, "3 from pika, 1 from STOMP"
    assert sample(text, "junction_store_messages_written_total") >= 4
    assert sample(text, "junction_store_messages_per_fsync") >= 1
    per_object = scrape(broker, "/metrics/per-object")
    assert sample(per_object, "rabbitmq_queue_messages_ready", vhost="/", queue="metered") == 4
    assert sample(per_object, "rabbitmq_queue_messages_published_total", vhost="/", queue="metered") == 5
    assert sample(per_object, "rabbitmq_queue_messages_ready") is None, "per queue, not aggregated"
    connection.close()
    device.close()

    # A deleted queue's series go with it.
    connection = pika.BlockingConnection(broker.pika_parameters())
    connection.channel().queue_delete("metered")
    connection.close()
    eventually(lambda: 'queue="metered"' not in scrape(broker, "/metrics/per-object"))
    after = scrape(broker)
    assert sample(after, "rabbitmq_global_messages_received_total", protocol="amqp091") == 6, "totals outlive connections"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_debian_prometheus_scrapes_a_queue_depth(start_broker, tmp_path: Path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is not installed: scripts/test.sh installs it", pytrace=False)
    broker = start_broker()
    connection = pika.BlockingConnection(broker.pika_parameters())
    channel = connection.channel()
    channel.queue_declare("scraped")
    for _ in range(7):
        channel.basic_publish("", "scraped", b"x")
    connection.close()

    host, port = broker.listeners["prometheus"]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: junction\n"
        "    metrics_path: /metrics/per-object\n"
        f"    static_configs:\n      - targets: ['{host}:{port}']\n"
    )
    web = free_port()
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    try:
        def depth():
            try:
                answer = requests.get(
                    f"http://127.0.0.1:{web}/api/v1/query",
                    params={"query": 'rabbitmq_queue_messages_ready{queue="scraped"}'},
                    timeout=5,
                ).json()
            except requests.RequestException:
                return None
            results = answer.get("data", {}).get("result", [])
            return results[0]["value"][1] if results else None

        assert eventually(depth, timeout=30) == "7"
        up = requests.get(f"http://127.0.0.1:{web}/api/v1/query", params={"query": "up"}, timeout=5).json()
        assert up["data"]["result"][0]["value"][1] == "1"
    finally:
        server.terminate()
        server.wait(timeout=10)
