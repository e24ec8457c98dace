"""rabbitmqadmin v2 (the crates.io ``rabbitmqadmin`` CLI, installed by scripts/test.sh with
``cargo install``) driven unchanged against Junction's management API, each command's effect
checked with pika or the API: vhosts, users and permissions (then used by a pika client),
exchanges, queues and bindings, publish and get, listing, closing a connection, health
checks, and definitions exported from one broker and imported into another.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pika
import pika.exceptions
import pytest
import requests

from processes import JunctionBroker


def rabbitmqadmin_binary() -> str:
    found = shutil.which("rabbitmqadmin") or str(Path.home() / ".cargo" / "bin" / "rabbitmqadmin")
    if not os.access(found, os.X_OK):
        pytest.fail("rabbitmqadmin v2 is not installed: scripts/test.sh installs it with cargo install", pytrace=False)
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("rabbitmqadmin 2."), version
    return found


class Admin:
    """rabbitmqadmin pointed at one broker, as one user."""

    def __init__(self, broker: JunctionBroker, user: str = "guest", password: str = "guest"):
        self.binary = rabbitmqadmin_binary()
        host, port = broker.listeners["http"]
        self.base = [self.binary, "--host", host, "--port", str(port), "--username", user, "--password", password, "--non-interactive"]

    def run(self, *args: str, vhost: str | None = None, ok: bool = True) -> str:
        command = list(self.base)
        if vhost is not None:
            command += ["--vhost", vhost]
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
        if ok:
            assert done.returncode == 0, f"rabbitmqadmin {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout if ok else done

    def rows(self, *args: str, vhost: str | None = None) -> list[list[str]]:
        """A list command's rows, split on runs of two or more spaces."""
        import re

        return [re.split(r"\s{2,}", line.strip()) for line in self.run(*args, vhost=vhost).splitlines() if line.strip()]


def api(broker: JunctionBroker, *path: str):
    host, port = broker.listeners["http"]
    url = f"http://{host}:{port}/api/" + "/".join(requests.utils.quote(p, safe="") for p in path)
    return requests.get(url, auth=("guest", "guest"), timeout=10)


def test_objects_users_and_messages(broker, names):
    admin = Admin(broker)
    vhost, user = names("vh"), names("user")
    admin.run("declare", "vhost", "--name", vhost)
    admin.run("declare", "user", "--name", user, "--password", "s3cret", "--tags", "management")
    admin.run("declare", "permissions", "--user", user, "--configure", ".*", "--write", ".*", "--read", ".*", vhost=vhost)
    assert any(row[0] == vhost for row in admin.rows("list", "vhosts"))
    assert any(row[0] == user for row in admin.rows("list", "users"))
    assert any(user in row and vhost in row for row in admin.rows("list", "permissions"))

    exchange, queue = names("events"), names("audit")
    admin.run("declare", "exchange", "--name", exchange, "--type", "topic", vhost=vhost)
    admin.run("declare", "queue", "--name", queue, "--durable", "true", vhost=vhost)
    admin.run("declare", "binding", "--source", exchange, "--destination-type", "queue", "--destination", queue, "--routing-key", "order.#", vhost=vhost)
    assert any(row[0] == queue for row in admin.rows("list", "queues", vhost=vhost))
    assert any(exchange in row and queue in row and "order.#" in row for row in admin.rows("list", "bindings", vhost=vhost))

    # The new user publishes with pika through the new binding.
    connection = pika.BlockingConnection(broker.pika_parameters(virtual_host=vhost, credentials=pika.PlainCredentials(user, "s3cret")))
    connection.channel().basic_publish(exchange, "order.created", b"from pika")
    connection.close()
    admin.run("publish", "message", "--exchange", exchange, "--routing-key", "order.paid", "--payload", "from rabbitmqadmin", vhost=vhost)
    got = admin.run("get", "messages", "--queue", queue, "--count", "2", "--ack-mode", "ack_requeue_false", vhost=vhost)
    assert "from pika" in got and "from rabbitmqadmin" in got
    shown = api(broker, "queues", vhost, queue).json()
    assert shown["messages"] == 0

    admin.run("publish", "message", "--routing-key", queue, "--payload", "to purge", vhost=vhost)
    admin.run("purge", "queue", "--name", queue, vhost=vhost)
    assert api(broker, "queues", vhost, queue).json()["messages"] == 0

    admin.run("delete", "binding", "--source", exchange, "--destination-type", "queue", "--destination", queue, "--routing-key", "order.#", vhost=vhost)
    assert not any(exchange in row for row in admin.rows("list", "bindings", vhost=vhost))
    admin.run("delete", "queue", "--name", queue, vhost=vhost)
    admin.run("delete", "exchange", "--name", exchange, vhost=vhost)
    assert api(broker, "queues", vhost, queue).status_code == 404
    assert api(broker, "exchanges", vhost, exchange).status_code == 404
    admin.run("delete", "permissions", "--user", user, vhost=vhost)
    admin.run("delete", "user", "--name", user)
    admin.run("delete", "vhost", "--name", vhost)
    assert api(broker, "users", user).status_code == 404
    assert api(broker, "vhosts", vhost).status_code == 404


def test_connections_health_and_overview(broker, names):
    admin = Admin(broker)
    connection = pika.BlockingConnection(broker.pika_parameters(client_properties={"connection_name": names("svc")}))
    rows = admin.rows("list", "connections")
    mine = [row for row in rows if "AMQP 0-9-1" in " ".join(row)]
    assert mine, rows
    name = mine[0][0]
    assert api(broker, "connections", name).status_code == 200
    assert "guest" in admin.run("list", "user_connections", "--username", "guest")
    admin.run("close", "connection", "--name", name)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.process_data_events(time_limit=5)
        connection.process_data_events(time_limit=5)
    assert closed.value.reply_code == 320

    admin.run("health_check", "local_alarms")
    admin.run("health_check", "cluster_wide_alarms")
    admin.run("health_check", "port_listener", "--port", str(broker.port))
    admin.run("health_check", "protocol_listener", "--protocol", "amqp")
    assert "Junction" in admin.run("show", "overview")
    assert admin.rows("list", "nodes")[0][0].startswith("junction@")
    refused = Admin(broker, "guest", "wrong").run("list", "queues", ok=False)
    assert refused.returncode != 0


def test_definitions_move_between_brokers(start_broker, tmp_path: Path):
    first, second = start_broker(), start_broker()
    source, target = Admin(first), Admin(second)
    source.run("declare", "exchange", "--name", "moved.x", "--type", "direct")
    source.run("declare", "queue", "--name", "moved.q", "--durable", "true")
    source.run("declare", "binding", "--source", "moved.x", "--destination-type", "queue", "--destination", "moved.q", "--routing-key", "k")
    source.run("declare", "user", "--name", "mover", "--password", "pw", "--tags", "monitoring")
    exported = tmp_path / "definitions.json"
    source.run("definitions", "export", "--file", str(exported))
    target.run("definitions", "import", "--file", str(exported))
    assert api(second, "queues", "/", "moved.q").json()["durable"] is True
    assert api(second, "exchanges", "/", "moved.x").json()["type"] == "direct"
    assert api(second, "users", "mover").json()["tags"] == ["monitoring"]
    bindings = api(second, "bindings", "/", "e", "moved.x", "q", "moved.q").json()
    assert [b["routing_key"] for b in bindings] == ["k"]
    # The imported password hash logs in.
    assert requests.get(f"http://{second.listeners['http'][0]}:{second.listeners['http'][1]}/api/whoami", auth=("mover", "pw"), timeout=10).json()["name"] == "mover"
