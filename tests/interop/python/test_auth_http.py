"""The HTTP auth backend (``[auth] backends = ["http", "internal"]``), compatible with RabbitMQ's
``rabbitmq_auth_backend_http``, against a real HTTP server this test runs: pika, paho-mqtt and
stomp.py log in (or are refused) as the server says; resource and topic questions reach it
with RabbitMQ's parameter names; POST and GET both work; and when the server is down,
logins it would answer are refused ("unavailable", logged) while the internal users, asked
next, still log in.
"""

from __future__ import annotations

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as paho
import pika
import pika.exceptions
import pytest

from processes import JunctionBroker

ACCESS_REFUSED = 403


class AuthServer:
    """RabbitMQ's HTTP auth protocol: alice/alice-pw may log in (tags management); only vhost
    "/"; no resource whose name starts with "forbidden"; topic writes only with keys that
    start with "ok.". Every request is recorded as (path, method, parameters)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.method = ""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def answer(self, method: str, query: str) -> None:
                path = urllib.parse.urlparse(self.path).path
                parameters = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
                server.requests.append((path, method, parameters))
                body = server.decide(path, parameters).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self.answer("GET", urllib.parse.urlparse(self.path).query)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                self.answer("POST", self.rfile.read(length).decode())

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def decide(self, path: str, p: dict[str, str]) -> str:
        if path == "/auth/user":
            ok = p.get("username") == "alice" and p.get("password") == "alice-pw"
            return "allow management" if ok else "deny"
        if path == "/auth/vhost":
            return "allow" if p.get("vhost") == "/" else "deny"
        if path == "/auth/resource":
            return "deny" if p.get("name", "").startswith("forbidden") else "allow"
        if path == "/auth/topic":
            if p.get("permission") == "write" and not p.get("routing_key", "").startswith("ok."):
                return "deny"
            return "allow"
        return "deny"

    def asked(self, path: str) -> list[dict[str, str]]:
        return [parameters for (p, _, parameters) in self.requests if p == path]

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def config(port: int, method: str) -> str:
    base = f"http://127.0.0.1:{port}/auth"
    return f"""
[auth]
backends = ["http", "internal"]
cache_ttl_ms = 60000

[auth.http]
method = "{method}"
user_path = "{base}/user"
vhost_path = "{base}/vhost"
resource_path = "{base}/resource"
topic_path = "{base}/topic"
timeout_ms = 2000

[[users]]
name = "local"
password = "local-pw"
permissions = [{{ vhost = "/", configure = ".*", write = ".*", read = ".*" }}]
"""


@pytest.fixture(params=["post", "get"])
def http_broker(request, junction_bin: Path, tmp_path: Path) -> Iterator[tuple[JunctionBroker, AuthServer]]:
    server = AuthServer()
    server.method = request.param.upper()
    path = tmp_path / "junction.toml"
    path.write_text(config(server.port, request.param))
    broker = JunctionBroker(
        junction_bin, tmp_path / "data", tmp_path / "junction.log", ["--config", str(path)]
    ).start()
    yield broker, server
    broker.stop()
    server.stop()


def amqp(broker: JunctionBroker, user: str, password: str) -> pika.BlockingConnection:
    parameters = broker.pika_parameters()
    parameters.credentials = pika.PlainCredentials(user, password)
    return pika.BlockingConnection(parameters)


def test_amqp_logins_resources_and_topics_are_asked_with_rabbitmqs_parameters(http_broker, names):
    broker, server = http_broker
    connection = amqp(broker, "alice", "alice-pw")
    channel = connection.channel()
    queue = names("q")
    channel.queue_declare(queue)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.queue_declare("forbidden-" + queue)
    assert refused.value.reply_code == ACCESS_REFUSED
    channel = connection.channel()
    channel.basic_publish("amq.topic", "ok.fine", b"allowed")
    channel.queue_declare(queue, passive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.basic_publish("amq.topic", "not.fine", b"refused")
        channel.queue_declare(queue, passive=True)
    assert refused.value.reply_code == ACCESS_REFUSED
    connection.close()

    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(broker, "alice", "wrong")

    (login, *_) = server.asked("/auth/user")
    assert login["username"] == "alice" and login["password"] == "alice-pw"
    vhost = server.asked("/auth/vhost")[0]
    assert vhost["vhost"] == "/" and vhost["ip"] == "127.0.0.1"
    assert vhost["tags"] == "management"
    declared = [r for r in server.asked("/auth/resource") if r["name"] == queue]
    assert {"resource": "queue", "permission": "configure", "vhost": "/"}.items() <= declared[0].items()
    topic = [r for r in server.asked("/auth/topic") if r["routing_key"] == "not.fine"][0]
    assert topic["resource"] == "topic" and topic["name"] == "amq.topic"
    assert topic["permission"] == "write" and topic["variable_map.username"] == "alice"
    assert {method for (_, method, _) in server.requests} == {server.method}


def test_mqtt_and_stomp_logins_follow_the_server(http_broker, mqtt, stomp, names):
    broker, server = http_broker
    device = mqtt(names("dev"), target=broker, username="alice", password="alice-pw")
    device.connect()
    assert device.subscribe(("ok/#", 1)) == [1]
    intruder = mqtt(names("bad"), target=broker, username="alice", password="nope")
    intruder.connect(expect=paho.convert_connack_rc_to_reason_code(4).value)
    mqtt_login = [r for r in server.asked("/auth/user") if r.get("client_id")]
    assert mqtt_login and mqtt_login[0]["vhost"] == "/"

    client = stomp(target=broker)
    client.connect(login="alice", passcode="alice-pw")
    refused = stomp(target=broker)
    error = refused.connect_refused(login="alice", passcode="nope")
    assert "Access refused for user 'alice'" in error.body


def test_when_the_server_is_down_logins_are_refused_and_internal_users_still_work(
    http_broker, mqtt, names
):
    broker, server = http_broker
    server.stop()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(broker, "alice", "alice-pw")
    device = mqtt(names("dev"), target=broker, username="alice", password="alice-pw")
    device.connect(expect=paho.convert_connack_rc_to_reason_code(4).value)
    assert "auth backend unavailable" in broker.log_path.read_text(errors="replace")
    # As RabbitMQ passes over a failing backend: the internal users still log in.
    amqp(broker, "local", "local-pw").close()
