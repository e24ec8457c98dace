"""The management HTTP API (`/api` on the HTTP port), driven over raw HTTP with ``requests``
while pika, paho-mqtt and stomp.py clients do real work, as RabbitMQ's management plugin
would be used:

* authentication (basic auth, the auth chain) and tags: no credentials, a wrong password and a
  user without a management tag get 401 with RabbitMQ's JSON error; ``monitoring`` sees every
  connection but may not manage users; ``management`` sees only the vhosts it may use;
* queues: declare (201, then 204), inequivalent redeclare (400), depth following a pika
  publisher, get with each ack mode, purge, delete; exchanges, bindings (queue and
  exchange-to-exchange, properties keys), publish (routed or not);
* connections of all three protocols, with their protocol, user and client id; closing each
  through DELETE (AMQP: connection.close 320; STOMP: an ERROR frame; MQTT: the socket);
  channels and consumers;
* vhosts, users, permissions and topic permissions managed through the API, used by a client,
  and still there after a restart (a deleted configuration user stays deleted);
* definitions: export, import of a file in RabbitMQ's format into a fresh broker, and a round
  trip that exports the same definitions again;
* overview, nodes, whoami, health checks, aliveness test, pagination and columns, rates.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pika
import pika.exceptions
import pytest
import requests

from mqtt_clients import MqttClient, wait_until
from processes import JunctionBroker

CONFIG = r"""
[[vhosts]]
name = "/"

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "watcher"
password = "watcher"
tags = ["monitoring"]
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "tenant"
password = "tenant"
tags = ["management"]

[[users]]
name = "device"
password = "device"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "leaving"
password = "leaving"
tags = ["management"]

[[users]]
name = "limited"
password = "limited"
tags = ["management"]
permissions = [{ vhost = "/", configure = "^limited\\.", write = "^limited\\.", read = ".*" }]
topic_permissions = [{ vhost = "/", exchange = "amq.topic", write = ".*", read = "^public\\." }]
"""


class Api:
    """The management API of one broker, as one user."""

    def __init__(self, broker: JunctionBroker, user: str | None = "guest", password: str | None = None):
        host, port = broker.listeners["http"]
        self.base = f"http://{host}:{port}/api"
        self.auth = (user, password or user) if user else None
        self.session = requests.Session()

    def url(self, *parts: str) -> str:
        return self.base + "".join(
            "/" + requests.utils.quote(part, safe="") for part in parts
        )

    def call(self, method: str, *parts: str, json: Any = None, params=None, headers=None):
        return self.session.request(
            method,
            self.url(*parts),
            json=json,
            params=params,
            headers=headers,
            auth=self.auth,
            timeout=10,
        )

    def get(self, *parts: str, params=None) -> Any:
        response = self.call("GET", *parts, params=params)
        assert response.status_code == 200, f"GET {parts}: {response.status_code} {response.text}"
        return response.json()

    def put(self, *parts: str, json: Any = None) -> requests.Response:
        return self.call("PUT", *parts, json=json if json is not None else {})

    def post(self, *parts: str, json: Any = None) -> requests.Response:
        return self.call("POST", *parts, json=json if json is not None else {})

    def delete(self, *parts: str, params=None, headers=None) -> requests.Response:
        return self.call("DELETE", *parts, params=params, headers=headers)


def start(junction_bin: Path, root: Path, data: str = "data") -> JunctionBroker:
    config = root / "junction.toml"
    config.write_text(CONFIG)
    return JunctionBroker(
        junction_bin, root / data, root / f"{data}.log", ["--config", str(config)]
    ).start()


@pytest.fixture(scope="module")
def managed(junction_bin: Path, tmp_path_factory) -> Iterator[JunctionBroker]:
    started = start(junction_bin, tmp_path_factory.mktemp("management"))
    yield started
    started.stop()


@pytest.fixture
def api(managed: JunctionBroker) -> Api:
    return Api(managed)


def pika_connection(
    broker: JunctionBroker, user: str = "guest", password: str | None = None, vhost: str = "/", **properties
):
    parameters = pika.ConnectionParameters(
        host=broker.host,
        port=broker.port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password or user),
        client_properties=properties or None,
        connection_attempts=1,
    )
    return pika.BlockingConnection(parameters)


def rabbit_hash(password: str, salt: bytes = b"\x01\x02\x03\x04") -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ password))."""
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def eventually(check, timeout: float = 10.0):
    """Polls ``check`` until it returns a true value (or raises nothing), with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            last = AssertionError(f"{check} stayed false")
        except AssertionError as error:
            last = error
        if time.monotonic() > deadline:
            raise last
        time.sleep(0.1)


# --- authentication and tags -------------------------------------------------------------


def test_refusals_are_401_with_rabbitmqs_json_error(managed):
    anonymous = Api(managed, user=None).call("GET", "overview")
    assert anonymous.status_code == 401
    assert anonymous.json() == {"error": "not_authorized", "reason": "Login failed"}
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    wrong = Api(managed, "guest", "wrong").call("GET", "overview")
    assert wrong.status_code == 401
    untagged = Api(managed, "device").call("GET", "overview")
    assert untagged.status_code == 401
    assert untagged.json()["reason"] == "Not management user"
    missing = Api(managed).call("GET", "no-such-endpoint")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Object Not Found", "reason": "Not Found"}


def test_whoami_and_overview(api, managed):
    assert api.get("whoami") == {"name": "guest", "tags": ["administrator"]}
    overview = api.get("overview")
    assert overview["product_name"] == "Junction"
    assert overview["node"].startswith("junction@")
    listeners = {(l["protocol"], l["port"]) for l in overview["listeners"]}
    assert ("amqp", managed.port) in listeners
    assert ("mqtt", managed.listeners["mqtt"][1]) in listeners
    assert ("http", managed.listeners["http"][1]) in listeners
    for key in ("connections", "channels", "exchanges", "queues", "consumers"):
        assert key in overview["object_totals"]
    assert "publish" in overview["message_stats"]
    assert "messages" in overview["queue_totals"]
    node = api.get("nodes")[0]
    assert node["running"] and node["mem_used"] > 0 and node["fd_used"] > 0
    assert node["disk_free"] > 0 and node["uptime"] >= 0
    assert api.get("nodes", node["name"])["name"] == node["name"]


def test_tags_decide_what_a_user_sees_and_does(managed, names):
    guest, watcher, tenant = Api(managed), Api(managed, "watcher"), Api(managed, "tenant")
    queue = names("seen")
    assert guest.put("queues", "/", queue).status_code == 201
    # monitoring sees every vhost's queues; management only vhosts it has access to.
    assert queue in {q["name"] for q in watcher.get("queues")}
    assert tenant.get("queues") == []
    assert tenant.call("GET", "queues", "/").status_code == 401
    # Only administrators manage users, vhosts and permissions, and see definitions.
    for response in (
        watcher.call("GET", "users"),
        watcher.put("vhosts", names("v")),
        tenant.put("users", names("u"), json={"password": "x", "tags": ""}),
        tenant.call("GET", "definitions"),
    ):
        assert response.status_code == 401, response.text
        assert response.json()["reason"] == "Not administrator user"
    # Management users see only their own connections, monitors everyone's.
    connection = pika_connection(managed)
    try:
        eventually(lambda: any(c["user"] == "guest" for c in watcher.get("connections")))
        assert tenant.get("connections") == []
    finally:
        connection.close()
    guest.delete("queues", "/", queue)


# --- queues, exchanges, bindings ------------------------------------------------------------


def test_queue_lifecycle_with_a_pika_publisher(api, managed, names):
    queue = names("orders")
    assert api.put("queues", "/", queue, json={"durable": True}).status_code == 201
    assert api.put("queues", "/", queue, json={"durable": True}).status_code == 204
    inequivalent = api.put("queues", "/", queue, json={"durable": False})
    assert inequivalent.status_code == 400
    assert "durable" in inequivalent.json()["reason"]

    connection = pika_connection(managed)
    channel = connection.channel()
    for i in range(5):
        channel.basic_publish("", queue, f"order {i}".encode(), pika.BasicProperties(delivery_mode=2))
    eventually(lambda: api.get("queues", "/", queue)["messages_ready"] == 5)
    shown = api.get("queues", "/", queue)
    assert shown["durable"] is True and shown["type"] == "classic"
    assert shown["message_stats"]["publish"] == 5
    assert shown["message_bytes_ready"] == sum(len(f"order {i}") for i in range(5))

    peeked = api.post("queues", "/", queue, "get", json={"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert peeked.status_code == 200
    assert [m["payload"] for m in peeked.json()] == ["order 0", "order 1"]
    assert peeked.json()[0]["properties"]["delivery_mode"] == 2
    eventually(lambda: api.get("queues", "/", queue)["messages_ready"] == 5)

    taken = api.post("queues", "/", queue, "get", json={"count": 2, "ackmode": "ack_requeue_false", "encoding": "base64"}).json()
    assert [base64.b64decode(m["payload"]) for m in taken] == [b"order 0", b"order 1"]
    assert taken[0]["redelivered"] is True, "requeued by the peek before"
    assert taken[1]["message_count"] == 3
    eventually(lambda: api.get("queues", "/", queue)["messages_ready"] == 3)

    assert api.delete("queues", "/", queue, "contents").status_code == 204
    eventually(lambda: api.get("queues", "/", queue)["messages"] == 0)
    method, _, _ = channel.basic_get(queue, auto_ack=True)
    assert method is None, "purged through the API"
    connection.close()

    assert api.delete("queues", "/", queue).status_code == 204
    assert api.call("GET", "queues", "/", queue).status_code == 404
    assert api.delete("queues", "/", queue).status_code == 404


def test_delete_refuses_a_queue_in_use_when_asked(api, managed, names):
    queue = names("busy")
    api.put("queues", "/", queue)
    connection = pika_connection(managed)
    channel = connection.channel()
    channel.basic_publish("", queue, b"x")
    eventually(lambda: api.get("queues", "/", queue)["messages"] == 1)
    refused = api.delete("queues", "/", queue, params={"if-empty": "true"})
    assert refused.status_code == 400
    connection.close()
    assert api.delete("queues", "/", queue).status_code == 204


def test_exchanges_bindings_and_publish(api, managed, names):
    exchange, inner, queue = names("events"), names("inner"), names("audit")
    assert api.put("exchanges", "/", exchange, json={"type": "topic", "durable": True}).status_code == 201
    assert api.put("exchanges", "/", inner, json={"type": "fanout", "durable": True}).status_code == 201
    assert api.put("exchanges", "/", exchange, json={"type": "direct"}).status_code == 400
    assert api.put("exchanges", "/", names("nokind"), json={}).status_code == 400
    api.put("queues", "/", queue)
    created = api.post("bindings", "/", "e", exchange, "q", queue, json={"routing_key": "order.*"})
    assert created.status_code == 201
    assert created.headers["location"] == "order.%2A"
    assert api.post("bindings", "/", "e", exchange, "e", inner, json={"routing_key": "#"}).status_code == 201

    from_source = api.get("exchanges", "/", exchange, "bindings", "source")
    assert {(b["destination"], b["destination_type"], b["routing_key"]) for b in from_source} == {
        (queue, "queue", "order.*"),
        (inner, "exchange", "#"),
    }
    to_queue = api.get("queues", "/", queue, "bindings")
    assert {b["source"] for b in to_queue} == {"", exchange}, "the default exchange's binding is listed"
    assert api.get("exchanges", "/", inner, "bindings", "destination")[0]["source"] == exchange
    between = api.get("bindings", "/", "e", exchange, "q", queue)
    assert len(between) == 1
    props = between[0]["properties_key"]
    assert api.get("bindings", "/", "e", exchange, "q", queue, props)["routing_key"] == "order.*"

    routed = api.post("exchanges", "/", exchange, "publish", json={"routing_key": "order.new", "payload": "{}", "payload_encoding": "string", "properties": {"content_type": "application/json", "headers": {"k": 1}}})
    assert routed.json() == {"routed": True}
    unrouted = api.post("exchanges", "/", inner, "publish", json={"routing_key": "x", "payload": "", "payload_encoding": "string", "properties": {}})
    assert unrouted.json() == {"routed": False}
    bad = api.post("exchanges", "/", exchange, "publish", json={"routing_key": "x", "payload": "", "payload_encoding": "string", "properties": {"no_such": 1}})
    assert bad.status_code == 400
    got = api.post("queues", "/", queue, "get", json={"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}).json()
    assert got[0]["routing_key"] == "order.new"
    assert got[0]["properties"]["headers"] == {"k": 1}
    stats = api.get("exchanges", "/", exchange)["message_stats"]
    assert stats["publish_in"] == 1 and stats["publish_out"] == 1

    assert api.delete("bindings", "/", "e", exchange, "q", queue, props).status_code == 204
    assert api.get("bindings", "/", "e", exchange, "q", queue) == []
    assert api.delete("bindings", "/", "e", exchange, "q", queue, props).status_code == 404
    assert api.delete("exchanges", "/", exchange, params={"if-unused": "true"}).status_code == 400
    assert api.delete("exchanges", "/", inner).status_code == 204
    assert api.delete("exchanges", "/", exchange).status_code == 204
    assert api.call("GET", "exchanges", "/", exchange).status_code == 404
    assert api.get("exchanges", "/", "amq.default")["name"] == ""
    api.delete("queues", "/", queue)


def test_lists_sort_filter_paginate_and_cut_columns(api, names):
    prefix = names("page")
    for i in range(5):
        api.put("queues", "/", f"{prefix}-{i}")
    page = api.get("queues", "/", params={"page": 2, "page_size": 2, "name": prefix, "columns": "name,messages", "sort": "name", "sort_reverse": "true"})
    assert page["filtered_count"] == 5 and page["page_count"] == 3 and page["page"] == 2
    assert [q["name"] for q in page["items"]] == [f"{prefix}-2", f"{prefix}-1"]
    assert set(page["items"][0]) == {"name", "messages"}
    regex = api.get("queues", params={"name": f"^{prefix}-[03]$", "use_regex": "true", "columns": "name"})
    assert [q["name"] for q in regex] == [f"{prefix}-0", f"{prefix}-3"]
    assert api.call("GET", "queues", params={"page": 99, "page_size": 2, "name": prefix}).status_code == 400
    for i in range(5):
        api.delete("queues", "/", f"{prefix}-{i}")


# --- connections, channels, consumers ----------------------------------------------------


def test_connections_of_every_protocol_are_listed_and_closed(api, managed, names, stomp):
    amqp = pika_connection(managed, connection_name="billing-service")
    channel = amqp.channel()
    queue = names("consumed")
    channel.queue_declare(queue)
    tag = channel.basic_consume(queue, lambda *args: None)
    device = MqttClient(managed.listeners["mqtt"], client_id=names("device"))
    device.connect()
    dashboard = stomp(target=managed)
    dashboard.connect()

    def listed():
        by_protocol = {c["protocol"]: c for c in api.get("connections")}
        assert {"AMQP 0-9-1", "MQTT 3.1.1", "STOMP 1.2"} <= set(by_protocol), by_protocol
        return by_protocol

    by_protocol = eventually(listed)
    amqp_info = by_protocol["AMQP 0-9-1"]
    assert amqp_info["user"] == "guest" and amqp_info["vhost"] == "/"
    assert amqp_info["user_provided_name"] == "billing-service"
    assert amqp_info["client_properties"]["connection_name"] == "billing-service"
    assert amqp_info["peer_host"] == "127.0.0.1"
    assert by_protocol["MQTT 3.1.1"]["client_properties"]["client_id"] == device.paho._client_id.decode()
    eventually(lambda: api.get("connections", amqp_info["name"])["channels"] == 1)
    assert eventually(lambda: api.get("connections", amqp_info["name"])["recv_oct"] > 0)

    channels = api.get("connections", amqp_info["name"], "channels")
    assert [c["number"] for c in channels] == [1]
    assert any(c["connection_details"]["name"] == amqp_info["name"] for c in api.get("channels"))
    consumers = eventually(lambda: [c for c in api.get("consumers") if c["queue"]["name"] == queue])
    assert consumers[0]["consumer_tag"] == tag
    assert consumers[0]["ack_required"] is True
    assert consumers[0]["channel_details"]["connection_name"] == amqp_info["name"]
    assert api.get("queues", "/", queue)["consumer_details"][0]["consumer_tag"] == tag

    assert api.delete("connections", amqp_info["name"], headers={"X-Reason": "maintenance"}).status_code == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        amqp.process_data_events(time_limit=5)
        amqp.process_data_events(time_limit=5)
    assert closed.value.reply_code == 320
    assert "maintenance" in closed.value.reply_text

    mqtt_name = by_protocol["MQTT 3.1.1"]["name"]
    assert api.delete("connections", mqtt_name).status_code == 204
    device.wait_disconnected()
    stomp_name = by_protocol["STOMP 1.2"]["name"]
    assert api.delete("connections", stomp_name).status_code == 204
    error = dashboard.expect_error()
    assert "Closed via management plugin" in error.body
    dashboard.wait_disconnected()
    eventually(lambda: not ({amqp_info["name"], mqtt_name, stomp_name} & {c["name"] for c in api.get("connections")}))
    assert api.delete("connections", mqtt_name).status_code == 404
    device.close()


# --- vhosts, users, permissions --------------------------------------------------------------


def test_vhosts_users_and_permissions_are_managed_and_survive_a_restart(junction_bin, tmp_path):
    broker = start(junction_bin, tmp_path)
    try:
        api = Api(broker)
        assert api.put("vhosts", "v1", json={"description": "tenant one", "tags": "prod,eu"}).status_code == 201
        assert api.put("vhosts", "v1", json={"description": "tenant one"}).status_code == 204
        assert api.get("vhosts", "v1")["description"] == "tenant one"
        assert api.put("users", "u1", json={"password": "secret-1", "tags": "management"}).status_code == 201
        assert api.get("users", "u1")["tags"] == ["management"]
        # New passwords are hashed with Argon2id (RabbitMQ's SHA-256 hashes still import).
        assert api.get("users", "u1")["hashing_algorithm"] == "junction_password_hashing_argon2"
        assert api.get("users", "u1")["password_hash"].startswith("$argon2id$v=19$")
        assert api.put("permissions", "v1", "u1", json={"configure": ".*", "write": ".*", "read": ".*"}).status_code == 201
        assert api.put("topic-permissions", "v1", "u1", json={"exchange": "amq.topic", "write": "^u1\\.", "read": ".*"}).status_code == 201
        assert api.put("permissions", "nope", "u1", json={"configure": ".*", "write": ".*", "read": ".*"}).status_code == 400
        assert api.put("permissions", "v1", "u1", json={"configure": "(", "write": ".*", "read": ".*"}).status_code == 400
        assert api.get("permissions", "v1", "u1")["write"] == ".*"
        assert {p["user"] for p in api.get("vhosts", "v1", "permissions")} == {"guest", "u1"}, "its creator and u1"
        assert api.get("users", "u1", "topic-permissions")[0]["write"] == "^u1\\."
        assert api.delete("users", "leaving").status_code == 204
        assert api.call("GET", "users", "leaving").status_code == 404

        # The new user works over AMQP in the new vhost, and sees only it over the API.
        connection = pika_connection(broker, user="u1", password="secret-1", vhost="v1")
        connection.channel().queue_declare("in-v1")
        connection.close()
        u1 = Api(broker, "u1", "secret-1")
        assert [v["name"] for v in u1.get("vhosts")] == ["v1"]
        assert [q["name"] for q in u1.get("queues")] == ["in-v1"]
    finally:
        broker.stop()

    again = JunctionBroker(junction_bin, tmp_path / "data", tmp_path / "again.log", ["--config", str(tmp_path / "junction.toml")]).start()
    try:
        api = Api(again)
        assert api.get("vhosts", "v1")["description"] == "tenant one"
        assert api.get("permissions", "v1", "u1")["configure"] == ".*"
        assert api.get("users", "u1", "topic-permissions")[0]["exchange"] == "amq.topic"
        assert api.call("GET", "users", "leaving").status_code == 404, "deleted stays deleted"
        assert Api(again, "leaving").call("GET", "overview").status_code == 401
        connection = pika_connection(again, user="u1", password="secret-1", vhost="v1")
        connection.close()
        # Deleting the vhost closes its connections and removes its queues.
        client = pika_connection(again, user="u1", password="secret-1", vhost="v1")
        assert api.delete("vhosts", "v1").status_code == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
            client.process_data_events(time_limit=5)
            client.process_data_events(time_limit=5)
        assert api.call("GET", "vhosts", "v1").status_code == 404
        assert api.delete("permissions", "/", "watcher").status_code == 204
        assert api.call("GET", "permissions", "/", "watcher").status_code == 404
        assert api.delete("users", "u1").status_code == 204
    finally:
        again.stop()


# --- definitions -----------------------------------------------------------------------------

RABBITMQ_DEFINITIONS = {
    "rabbit_version": "3.13.7",
    "rabbitmq_version": "3.13.7",
    "product_name": "RabbitMQ",
    "product_version": "3.13.7",
    "users": [
        {"name": "ops", "password_hash": rabbit_hash("ops-pass"), "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator", "limits": {}},
        {"name": "app", "password_hash": rabbit_hash("app-pass"), "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"], "limits": {}},
    ],
    "vhosts": [{"name": "/"}, {"name": "shop", "description": "the shop", "tags": ["prod"], "metadata": {"description": "the shop", "tags": ["prod"]}}],
    "permissions": [
        {"user": "ops", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
        {"user": "app", "vhost": "shop", "configure": "^app\\.", "write": ".*", "read": ".*"},
    ],
    "topic_permissions": [{"user": "app", "vhost": "shop", "exchange": "amq.topic", "write": "^orders\\.", "read": ".*"}],
    "parameters": [],
    "global_parameters": [{"name": "cluster_name", "value": "rabbit@old"}],
    "policies": [],
    "queues": [
        {"name": "app.orders", "vhost": "shop", "durable": True, "auto_delete": False, "arguments": {"x-queue-type": "quorum"}},
        {"name": "app.audit", "vhost": "shop", "durable": True, "auto_delete": False, "arguments": {"x-max-length": 1000}},
    ],
    "exchanges": [
        {"name": "app.events", "vhost": "shop", "type": "topic", "durable": True, "auto_delete": False, "internal": False, "arguments": {}},
        {"name": "app.all", "vhost": "shop", "type": "fanout", "durable": True, "auto_delete": False, "internal": False, "arguments": {"alternate-exchange": "app.events"}},
    ],
    "bindings": [
        {"source": "app.events", "vhost": "shop", "destination": "app.orders", "destination_type": "queue", "routing_key": "order.#", "arguments": {}},
        {"source": "app.all", "vhost": "shop", "destination": "app.events", "destination_type": "exchange", "routing_key": "", "arguments": {}},
        {"source": "app.events", "vhost": "shop", "destination": "app.audit", "destination_type": "queue", "routing_key": "#", "arguments": {"x-match": "any"}},
    ],
}


def comparable(definitions: dict) -> dict:
    """What a round trip must keep: the objects, without versions or ordering."""

    def key(item):
        return sorted((k, str(v)) for k, v in item.items())

    out = {}
    for part in ("users", "vhosts", "permissions", "topic_permissions", "queues", "exchanges", "bindings"):
        items = [dict(item) for item in definitions.get(part, [])]
        for item in items:
            item.pop("limits", None)
            item.pop("metadata", None)
            if isinstance(item.get("tags"), str):
                item["tags"] = [t for t in item["tags"].split(",") if t]
        out[part] = sorted(items, key=key)
    return out


def test_definitions_from_rabbitmq_import_and_round_trip(junction_bin, tmp_path):
    first = start(junction_bin, tmp_path, "first")
    try:
        api = Api(first)
        assert api.post("definitions", json=RABBITMQ_DEFINITIONS).status_code == 204
        assert api.get("queues", "shop", "app.orders")["type"] == "quorum"
        assert api.get("exchanges", "shop", "app.all")["arguments"] == {"alternate-exchange": "app.events"}
        assert api.get("users", "ops")["tags"] == ["administrator"]
        # The imported hash logs in with its password, over HTTP and AMQP.
        assert Api(first, "ops", "ops-pass").get("whoami")["name"] == "ops"
        connection = pika.BlockingConnection(pika.ConnectionParameters(host=first.host, port=first.port, virtual_host="shop", credentials=pika.PlainCredentials("app", "app-pass")))
        channel = connection.channel()
        channel.basic_publish("app.all", "order.1", b"via the alternate chain")
        connection.close()
        eventually(lambda: api.get("queues", "shop", "app.orders")["messages"] == 1)
        exported = api.get("definitions")
        assert exported["product_name"] == "Junction"
        vhost_only = api.get("definitions", "shop")
        assert "users" not in vhost_only and all("vhost" not in q for q in vhost_only["queues"])
        assert {q["name"] for q in vhost_only["queues"]} == {"app.orders", "app.audit"}
        bad = api.call("POST", "definitions", json={"queues": [{"name": "q"}]})
        assert bad.status_code == 400
    finally:
        first.stop()

    second = start(junction_bin, tmp_path, "second")
    try:
        api = Api(second)
        assert api.post("definitions", json=exported).status_code == 204
        again = api.get("definitions")
        assert comparable(again) == comparable(exported)
        mine = comparable(RABBITMQ_DEFINITIONS)
        theirs = comparable(again)
        for part in ("queues", "exchanges", "bindings"):
            assert theirs[part] == mine[part], part
        imported = [t for t in theirs["topic_permissions"] if t["user"] in ("ops", "app")]
        assert imported == mine["topic_permissions"]
        assert {u["name"] for u in theirs["users"]} >= {"ops", "app"}
    finally:
        second.stop()


# --- health ------------------------------------------------------------------------------------


def test_health_checks_and_aliveness(api, managed):
    assert api.get("health", "checks", "alarms") == {"status": "ok"}
    assert api.get("health", "checks", "local-alarms") == {"status": "ok"}
    assert api.get("health", "checks", "virtual-hosts") == {"status": "ok"}
    assert api.get("health", "checks", "port-listener", str(managed.port))["status"] == "ok"
    missing = api.call("GET", "health", "checks", "port-listener", "1")
    assert missing.status_code == 503 and missing.json()["status"] == "failed"
    assert api.get("health", "checks", "protocol-listener", "amqp091")["status"] == "ok"
    assert api.get("aliveness-test", "/") == {"status": "ok"}
    assert api.call("GET", "aliveness-test", "no-such-vhost").status_code in (401, 404)


def test_rates_follow_a_publisher(api, managed, names):
    queue = names("rated")
    api.put("queues", "/", queue)
    connection = pika_connection(managed)
    channel = connection.channel()
    deadline = time.monotonic() + 20
    rate = 0.0
    while time.monotonic() < deadline and rate <= 0:
        for _ in range(50):
            channel.basic_publish("", queue, b"tick")
        connection.process_data_events(time_limit=0.2)
        rate = api.get("queues", "/", queue)["message_stats"]["publish_details"]["rate"]
    connection.close()
    assert rate > 0, "no publish rate within 20 s"
    api.delete("queues", "/", queue)


# --- every endpoint, every tag -----------------------------------------------------------------

#: GET endpoints any management user may call (for the vhosts it sees).
EVERYONE = [
    ("overview",), ("whoami",), ("cluster-name",), ("connections",), ("channels",), ("consumers",),
    ("exchanges",), ("queues",), ("bindings",), ("vhosts",), ("exchange-types",), ("extensions",),
    ("health", "checks", "alarms"), ("health", "checks", "local-alarms"), ("health", "checks", "virtual-hosts"),
    ("policies",), ("parameters",), ("feature-flags",),
]
#: GET endpoints in vhost `/`, which `tenant` (management, no permissions there) may not see.
IN_VHOST = [
    ("exchanges", "/"), ("exchanges", "/", "amq.direct"), ("exchanges", "/", "amq.direct", "bindings", "source"),
    ("exchanges", "/", "amq.direct", "bindings", "destination"), ("queues", "/"), ("bindings", "/"),
    ("vhosts", "/"), ("consumers", "/"), ("vhosts", "/", "connections"), ("vhosts", "/", "channels"),
]
#: GET endpoints for administrators only.
ADMINISTRATORS = [
    ("users",), ("users", "guest"), ("users", "guest", "permissions"), ("users", "guest", "topic-permissions"),
    ("users", "without-permissions"), ("permissions",), ("permissions", "/", "guest"), ("topic-permissions",),
    ("vhosts", "/", "permissions"), ("vhosts", "/", "topic-permissions"), ("definitions",), ("definitions", "/"),
]
#: GET endpoints for monitoring users and administrators.
MONITORS = [("nodes",), ("mqtt", "sessions"), ("mqtt", "retained", "/")]


@pytest.mark.parametrize("path", EVERYONE + IN_VHOST + ADMINISTRATORS + MONITORS, ids=lambda p: "/".join(p))
def test_every_endpoint_answers_each_tag_as_rabbitmq_does(managed, path):
    assert Api(managed).call("GET", *path).status_code == 200, path
    untagged = Api(managed, "device").call("GET", *path)
    assert untagged.status_code == 401 and untagged.json()["reason"] == "Not management user"
    tenant = Api(managed, "tenant").call("GET", *path)
    if path in ADMINISTRATORS:
        assert tenant.status_code == 401 and tenant.json()["reason"] == "Not administrator user"
    elif path in IN_VHOST:
        assert tenant.status_code == 401 and "access to vhost '/' refused" in tenant.json()["reason"]
        assert Api(managed, "watcher").call("GET", *path).status_code == 200
    elif path in MONITORS:
        assert tenant.status_code == 401 and tenant.json()["reason"] == "Not monitor user"
        assert Api(managed, "watcher").call("GET", *path).status_code == 200
    else:
        assert tenant.status_code == 200, (path, tenant.text)


# --- what a user may not do through the API either ------------------------------------------


def test_the_api_asks_the_permissions_amqp_asks(managed, names):
    limited = Api(managed, "limited")
    # configure on the queue is not enough for a dead-letter exchange it may not write to.
    refused = limited.put("queues", "/", "limited.q", json={"arguments": {"x-dead-letter-exchange": "amq.direct"}})
    assert refused.status_code == 401 and "amq.direct" in refused.json()["reason"]
    assert limited.put("queues", "/", "limited.q", json={"arguments": {"x-dead-letter-exchange": "limited.dlx"}}).status_code == 201
    refused = limited.put("exchanges", "/", "limited.x", json={"type": "fanout", "arguments": {"alternate-exchange": "amq.fanout"}})
    assert refused.status_code == 401
    # Topic permissions limit binding keys (read) on topic exchanges.
    refused = limited.post("bindings", "/", "e", "amq.topic", "q", "limited.q", json={"routing_key": "#"})
    assert refused.status_code == 401 and "topic" in refused.json()["reason"]
    assert limited.post("bindings", "/", "e", "amq.topic", "q", "limited.q", json={"routing_key": "public.news"}).status_code == 201
    # A message may not claim another user.
    assert limited.put("exchanges", "/", "limited.out", json={"type": "fanout"}).status_code == 201
    forged = limited.post("exchanges", "/", "limited.out", "publish", json={"routing_key": "", "payload": "x", "payload_encoding": "string", "properties": {"user_id": "guest"}})
    assert forged.status_code == 400 and "user_id" in forged.json()["reason"]
    honest = limited.post("exchanges", "/", "limited.out", "publish", json={"routing_key": "", "payload": "x", "payload_encoding": "string", "properties": {"user_id": "limited"}})
    assert honest.status_code == 200
    Api(managed).delete("exchanges", "/", "limited.out")
    # Bodies are JSON: a form post from a page elsewhere is refused.
    form = Api(managed).session.post(Api(managed).url("definitions"), data="x=1", auth=("guest", "guest"), headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert form.status_code == 415
    Api(managed).delete("queues", "/", "limited.q")


def test_exclusive_queues_and_other_users_connections_are_not_theirs(managed, names):
    guest, watcher = Api(managed), Api(managed, "watcher")
    owner = pika.BlockingConnection(managed.pika_parameters())
    queue = owner.channel().queue_declare("", exclusive=True).method.queue
    owner.channel().basic_publish("", queue, b"private")
    eventually(lambda: guest.get("queues", "/", queue)["messages"] == 1)
    for response in (
        guest.post("queues", "/", queue, "get", json={"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}),
        guest.delete("queues", "/", queue, "contents"),
    ):
        assert response.status_code == 400 and "exclusive" in response.json()["reason"], response.text
    # A monitor sees the connection but may not close it; an administrator may.
    # The queue names the connection that owns it.
    name = guest.get("queues", "/", queue)["owner_pid_details"]["name"]
    assert any(c["name"] == name for c in watcher.get("connections"))
    assert watcher.delete("connections", name).status_code == 401
    assert guest.delete("connections", name).status_code == 204
    # The owner hears connection.close (320) and answers close-ok, as a live client does (the
    # broker waits for it up to the handshake timeout); the connection is gone, and its
    # exclusive queue with it.
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(50):
            owner.process_data_events(time_limit=0.2)
    assert closed.value.reply_code == 320
    eventually(lambda: guest.call("GET", "queues", "/", queue).status_code == 404, timeout=5.0)


def test_deleting_a_user_closes_its_connections_and_a_vhost_takes_its_permissions(junction_bin, tmp_path):
    broker = start(junction_bin, tmp_path)
    try:
        api = Api(broker)
        assert api.put("users", "gone", json={"password": "pw", "tags": ""}).status_code == 201
        assert api.put("permissions", "/", "gone", json={"configure": ".*", "write": ".*", "read": ".*"}).status_code == 201
        connection = pika_connection(broker, user="gone", password="pw")
        assert api.delete("users", "gone").status_code == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            connection.process_data_events(time_limit=5)
            connection.process_data_events(time_limit=5)
        assert closed.value.reply_code == 320 and "is deleted" in closed.value.reply_text

        assert api.put("vhosts", "again").status_code == 201
        assert api.put("permissions", "again", "tenant", json={"configure": ".*", "write": ".*", "read": ".*"}).status_code == 201
        assert api.delete("vhosts", "again").status_code == 204
        assert api.put("vhosts", "again").status_code == 201
        assert {p["user"] for p in api.get("vhosts", "again", "permissions")} == {"guest"}, "only its new creator"
    finally:
        broker.stop()


def test_prometheus_labels_carry_any_queue_name(managed):
    connection = pika_connection(managed)
    odd = 'odd "name" \\ here'
    connection.channel().queue_declare(odd)
    connection.close()
    host, port = managed.listeners["prometheus"]
    text = requests.get(f"http://{host}:{port}/metrics/per-object", timeout=10).text
    escaped = odd.replace("\\", "\\\\").replace('"', '\\"')
    assert f'queue="{escaped}"' in text
    assert all(line.startswith("#") or line.count('"') % 2 == 0 for line in text.splitlines())
    Api(managed).delete("queues", "/", odd)


def test_the_event_exchange_takes_no_publishes(managed):
    connection = pika_connection(managed)
    channel = connection.channel()
    channel.basic_publish("amq.rabbitmq.event", "user.authentication.success", b"forged")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.basic_get("amq.rabbitmq.event-nothing")
    assert closed.value.reply_code == 403
    connection.close()
