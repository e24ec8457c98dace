"""``[definitions] load``: a file in RabbitMQ's ``definitions.json`` format (as
``rabbitmqctl export_definitions`` writes it, RabbitMQ 3's comma-separated tags and 4's lists
alike) is applied at start: its users log in with their passwords (salted SHA-256 hashes),
with their permissions and topic permissions; its vhosts, exchanges, queues and bindings
(exchange-to-exchange too) exist and route. Applying it again at the next start changes
nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pika
import pika.exceptions
import pytest


def rabbit_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions() -> dict:
    return {
        "rabbit_version": "3.13.7",
        "rabbitmq_version": "3.13.7",
        "product_name": "RabbitMQ",
        "users": [
            {"name": "ops", "password_hash": rabbit_hash("ops-pw"),
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator,monitoring", "limits": {}},
            {"name": "app", "password_hash": rabbit_hash("app-pw"),
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []},
        ],
        "vhosts": [{"name": "/"}, {"name": "prod", "metadata": {"description": "", "tags": []}}],
        "permissions": [
            {"user": "ops", "vhost": "prod", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": "app", "vhost": "prod", "configure": "^$", "write": "^orders$", "read": "^orders-q$"},
        ],
        "topic_permissions": [
            {"user": "app", "vhost": "prod", "exchange": "orders", "write": "^eu\\.", "read": ".*"},
        ],
        "parameters": [],
        "global_parameters": [{"name": "cluster_name", "value": "rabbit@old"}],
        "policies": [{"vhost": "prod", "name": "ttl", "pattern": ".*", "apply-to": "queues",
                      "definition": {"message-ttl": 60000}, "priority": 0}],
        "queues": [
            {"name": "orders-q", "vhost": "prod", "durable": True, "auto_delete": False,
             "arguments": {"x-queue-type": "classic", "x-max-length": 1000}},
        ],
        "exchanges": [
            {"name": "orders", "vhost": "prod", "type": "topic", "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}},
            {"name": "ingress", "vhost": "prod", "type": "fanout", "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}},
        ],
        "bindings": [
            {"source": "orders", "vhost": "prod", "destination": "orders-q",
             "destination_type": "queue", "routing_key": "eu.#", "arguments": {}},
            {"source": "ingress", "vhost": "prod", "destination": "orders",
             "destination_type": "exchange", "routing_key": "", "arguments": {}},
        ],
    }


def connect(broker, user: str, password: str) -> pika.BlockingConnection:
    parameters = broker.pika_parameters(virtual_host="prod")
    parameters.credentials = pika.PlainCredentials(user, password)
    return pika.BlockingConnection(parameters)


def test_a_rabbitmq_definitions_file_is_applied_at_start_and_again_idempotently(
    start_broker, tmp_path
):
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps(definitions()))
    config = tmp_path / "junction.toml"
    config.write_text(f'[definitions]\nload = "{path.as_posix()}"\n')
    broker = start_broker(extra_args=["--config", str(config)])

    app_connection = connect(broker, "app", "app-pw")
    app = app_connection.channel()
    persistent = pika.BasicProperties(delivery_mode=2)
    app.basic_publish("orders", "eu.paris", b"via the topic exchange", persistent)
    ops_connection = connect(broker, "ops", "ops-pw")
    ops = ops_connection.channel()
    ops.basic_publish("ingress", "eu.berlin", b"via the exchange-to-exchange binding", persistent)
    assert ops.queue_declare("orders-q", passive=True).method.message_count == 2
    # The topic permission from the file: app may not publish under us.*.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        app.basic_publish("orders", "us.nyc", b"refused")
        app.queue_declare("orders-q", passive=True)
    assert refused.value.reply_code == 403
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(broker, "app", "wrong")
    data_dir = broker.data_dir
    ops_connection.close()
    app_connection.close()
    broker.stop()

    # The durable queue and its persistent messages are kept; declaring them again is a no-op.
    again = start_broker(data_dir=data_dir, extra_args=["--config", str(config)])
    ops_connection = connect(again, "ops", "ops-pw")
    assert ops_connection.channel().queue_declare("orders-q", passive=True).method.message_count == 2
    ops_connection.close()
    assert "definitions imported" in again.log_path.read_text()
