"""TLS on every listener, with clients we did not write: pika (ssl_options), paho-mqtt,
mosquitto_pub/sub (--cafile/--cert/--key), stomp.py and requests over HTTPS; certificate
login on AMQP (EXTERNAL), MQTT and STOMP; a SIGHUP that swaps the certificate under an open
connection. The certificates are made for each test by ``junction-test-certs`` (rcgen): no
private key is committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pika
import pytest
import requests
import stomp

from processes import JunctionBroker

WAIT = 10.0
TLS_LISTENERS = ["amqps", "mqtts", "stomps", "https", "web-stomps", "web-mqtts", "prometheus-tls"]


def certs_tool(junction_bin: Path) -> Path:
    """junction-test-certs, built beside the broker binary (cargo build --workspace)."""
    for candidate in (
        os.environ.get("JUNCTION_TEST_CERTS"),
        junction_bin.parent / "junction-test-certs",
        Path(__file__).resolve().parents[3] / "target" / "debug" / "junction-test-certs",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    pytest.fail("junction-test-certs is missing: cargo build --workspace builds it", pytrace=False)


def make_certs(junction_bin: Path, directory: Path, *clients: str) -> Path:
    subprocess.run([str(certs_tool(junction_bin)), str(directory), *clients], check=True)
    return directory


@pytest.fixture
def certs(junction_bin: Path, tmp_path: Path) -> Path:
    return make_certs(junction_bin, tmp_path / "certs", "device-7", "stranger")


def tls_config(
    path: Path,
    certs: Path,
    verify_peer: bool = True,
    fail_if_no_peer_cert: bool = False,
    cert_login: bool = True,
    login_from: str = "common_name",
    extra: str = "",
) -> Path:
    path.write_text(
        f"""
[tls]
certfile = "{certs / 'server.pem'}"
keyfile = "{certs / 'server.key'}"
cacertfile = "{certs / 'ca.pem'}"
verify_peer = {str(verify_peer).lower()}
fail_if_no_peer_cert = {str(fail_if_no_peer_cert).lower()}
ssl_cert_login = {str(cert_login).lower()}
ssl_cert_login_from = "{login_from}"

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [{{ vhost = "/", configure = ".*", write = ".*", read = ".*" }}]

[[users]]
name = "device-7"
password = "device-7-password"
permissions = [{{ vhost = "/", configure = ".*", write = ".*", read = ".*" }}]

[[users]]
name = "device-7.clients.test"
password = "other"
permissions = [{{ vhost = "/", configure = ".*", write = ".*", read = ".*" }}]
{extra}
"""
    )
    return path


def start_tls(start_broker, config: Path) -> JunctionBroker:
    args = ["--config", str(config)]
    for name in TLS_LISTENERS:
        args += [f"--{name}", "127.0.0.1:0"]
    return start_broker(extra_args=args)


def client_context(certs: Path, client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if client:
        context.load_cert_chain(str(certs / f"{client}.pem"), str(certs / f"{client}.key"))
    return context


def pika_tls(broker: JunctionBroker, context: ssl.SSLContext, credentials) -> pika.BlockingConnection:
    _, port = broker.listeners["amqps"]
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host="localhost",
            port=port,
            ssl_options=pika.SSLOptions(context, "localhost"),
            credentials=credentials,
            connection_attempts=1,
            socket_timeout=5,
        )
    )


def round_trip(connection: pika.BlockingConnection) -> bytes:
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", queue, b"over TLS")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        _, _, body = channel.basic_get(queue, auto_ack=True)
        if body is not None:
            return body
        connection.sleep(0.02)
    raise AssertionError("no message came back")


def test_every_tls_listener_prints_its_line_and_stays_off_without_a_certificate(
    start_broker, certs, tmp_path
):
    secured = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs))
    for name in TLS_LISTENERS:
        assert name in secured.listeners, secured.diagnostics()
    # No [tls] certfile: the TLS flags are accepted and nothing listens on them.
    plain = start_broker(extra_args=[arg for name in TLS_LISTENERS for arg in (f"--{name}", "127.0.0.1:0")])
    assert not set(TLS_LISTENERS) & set(plain.listeners)


def test_pika_over_tls_with_a_password_and_tls_1_2_and_1_3_only(start_broker, certs, tmp_path):
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs))
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = client_context(certs)
        context.minimum_version = context.maximum_version = version
        connection = pika_tls(broker, context, pika.PlainCredentials("guest", "guest"))
        assert round_trip(connection) == b"over TLS"
        connection.close()
    # TLS 1.1 is refused by the server (OpenSSL may refuse it on the client side first).
    context = client_context(certs)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    _, port = broker.listeners["amqps"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(raw, server_hostname="localhost").do_handshake()


def test_amqp_external_logs_in_as_the_certificate_common_name(start_broker, certs, tmp_path):
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs))
    connection = pika_tls(
        broker, client_context(certs, "device-7"), pika.credentials.ExternalCredentials()
    )
    assert round_trip(connection) == b"over TLS"
    connection.close()
    # Without a certificate EXTERNAL is not offered: pika cannot log in with it.
    with pytest.raises(pika.exceptions.AMQPError):
        pika_tls(broker, client_context(certs), pika.credentials.ExternalCredentials())
    # A certificate naming a user the broker does not know is refused.
    with pytest.raises(pika.exceptions.AMQPError):
        pika_tls(broker, client_context(certs, "stranger"), pika.credentials.ExternalCredentials())


def test_certificate_login_can_take_the_subject_alternative_name(start_broker, certs, tmp_path):
    config = tls_config(tmp_path / "tls.toml", certs, login_from="subject_alternative_name")
    broker = start_tls(start_broker, config)
    connection = pika_tls(
        broker, client_context(certs, "device-7"), pika.credentials.ExternalCredentials()
    )
    user = requests.get(
        f"http://127.0.0.1:{broker.listeners['http'][1]}/api/connections",
        auth=("guest", "guest"),
        timeout=5,
    ).json()
    assert [c["user"] for c in user] == ["device-7.clients.test"]
    connection.close()


def test_certificate_login_is_off_unless_configured(start_broker, certs, tmp_path):
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs, cert_login=False))
    with pytest.raises(pika.exceptions.AMQPError):
        pika_tls(broker, client_context(certs, "device-7"), pika.credentials.ExternalCredentials())
    # Passwords still work with a client certificate.
    connection = pika_tls(
        broker,
        client_context(certs, "device-7"),
        pika.PlainCredentials("device-7", "device-7-password"),
    )
    assert round_trip(connection) == b"over TLS"
    connection.close()


def paho_client(certs: Path, client: str | None, client_id: str) -> paho.Client:
    mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
    if client:
        mqtt.tls_set(
            ca_certs=str(certs / "ca.pem"),
            certfile=str(certs / f"{client}.pem"),
            keyfile=str(certs / f"{client}.key"),
        )
    else:
        mqtt.tls_set(ca_certs=str(certs / "ca.pem"))
    return mqtt


def connack(mqtt: paho.Client, port: int) -> int:
    """Connects and returns the CONNACK reason code's value."""
    codes: list = []
    mqtt.on_connect = lambda client, userdata, flags, reason, properties: codes.append(reason)
    mqtt.connect("localhost", port)
    deadline = time.monotonic() + WAIT
    while not codes and time.monotonic() < deadline:
        mqtt.loop(timeout=0.1)
    assert codes, "no CONNACK"
    return codes[0].value


def test_paho_mqtt_logs_in_with_its_certificate_and_no_user_name(start_broker, certs, tmp_path):
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs))
    _, port = broker.listeners["mqtts"]
    topic = f"tls/{uuid.uuid4().hex}"
    received: list[bytes] = []
    subscriber = paho_client(certs, "device-7", f"sub-{uuid.uuid4().hex[:8]}")
    subscriber.on_message = lambda client, userdata, message: received.append(message.payload)
    assert connack(subscriber, port) == 0
    subscriber.subscribe(topic, qos=1)
    subscriber.loop(timeout=0.5)
    publisher = paho_client(certs, "device-7", f"pub-{uuid.uuid4().hex[:8]}")
    assert connack(publisher, port) == 0
    publisher.publish(topic, b"reading", qos=1)
    deadline = time.monotonic() + WAIT
    while not received and time.monotonic() < deadline:
        publisher.loop(timeout=0.05)
        subscriber.loop(timeout=0.05)
    assert received == [b"reading"]
    connections = requests.get(
        f"http://127.0.0.1:{broker.listeners['http'][1]}/api/connections",
        auth=("guest", "guest"),
        timeout=5,
    ).json()
    assert {c["user"] for c in connections} == {"device-7"}
    for client in (publisher, subscriber):
        client.disconnect()
    # A certificate naming an unknown user, without a user name: not authorised (5).
    stranger = paho_client(certs, "stranger", f"s-{uuid.uuid4().hex[:8]}")
    assert connack(stranger, port) != 0
    # A user name and password still log in over TLS, certificate or not.
    plain = paho_client(certs, None, f"p-{uuid.uuid4().hex[:8]}")
    plain.username_pw_set("device-7", "device-7-password")
    assert connack(plain, port) == 0
    plain.disconnect()


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients missing")
def test_mosquitto_clients_over_tls_with_cafile_cert_and_key(start_broker, certs, tmp_path):
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs))
    _, port = broker.listeners["mqtts"]
    tls = ["--cafile", str(certs / "ca.pem"), "--cert", str(certs / "device-7.pem"), "--key", str(certs / "device-7.key")]
    topic = f"tls/{uuid.uuid4().hex}"
    # Retained, so mosquitto_sub needs no wait for its subscription.
    subprocess.run(
        ["mosquitto_pub", "-h", "localhost", "-p", str(port), *tls, "-t", topic, "-m", "21.5", "-q", "1", "-r"],
        check=True,
        timeout=WAIT,
    )
    received = subprocess.run(
        ["mosquitto_sub", "-h", "localhost", "-p", str(port), *tls, "-t", topic, "-C", "1", "-W", "10"],
        capture_output=True,
        text=True,
        timeout=WAIT + 5,
    )
    assert received.stdout.strip() == "21.5", received.stderr
    # The MQTT listener offers "mqtt" in ALPN.
    context = client_context(certs)
    context.set_alpn_protocols(["mqtt"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls_socket:
            assert tls_socket.selected_alpn_protocol() == "mqtt"


def stomp_tls(broker: JunctionBroker, certs: Path, client: str | None) -> stomp.Connection12:
    _, port = broker.listeners["stomps"]
    connection = stomp.Connection12([("localhost", port)], timeout=5, vhost="/")
    if client:
        connection.set_ssl(
            for_hosts=[("localhost", port)],
            cert_file=str(certs / f"{client}.pem"),
            key_file=str(certs / f"{client}.key"),
            ca_certs=str(certs / "ca.pem"),
        )
    else:
        connection.set_ssl(for_hosts=[("localhost", port)], ca_certs=str(certs / "ca.pem"))
    return connection


def test_stomp_py_over_tls_by_certificate_and_by_password(start_broker, certs, tmp_path):
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs))
    by_certificate = stomp_tls(broker, certs, "device-7")
    by_certificate.connect(wait=True)
    assert by_certificate.is_connected()
    users = {
        c["user"]
        for c in requests.get(
            f"http://127.0.0.1:{broker.listeners['http'][1]}/api/connections",
            auth=("guest", "guest"),
            timeout=5,
        ).json()
    }
    assert users == {"device-7"}
    by_certificate.disconnect()
    by_password = stomp_tls(broker, certs, None)
    by_password.connect("device-7", "device-7-password", wait=True)
    assert by_password.is_connected()
    by_password.disconnect()
    # No login and no certificate: refused.
    anonymous = stomp_tls(broker, certs, None)
    with pytest.raises(stomp.exception.ConnectFailedException):
        anonymous.connect(wait=True)


def test_no_tls_1_3_session_ticket_follows_the_handshake(start_broker, certs, tmp_path):
    # stomp.py reads on one thread and writes on another over one OpenSSL session: a ticket
    # arriving just after the handshake raced its CONNECT (lost frames, EOF errors). Like
    # RabbitMQ, Junction sends none.
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs))
    _, port = broker.listeners["stomps"]
    context = client_context(certs, "device-7")
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
            reply = b""
            while b"\x00" not in reply:
                chunk = tls.recv(4096)
                assert chunk, reply
                reply += chunk
            assert reply.startswith(b"CONNECTED\n"), reply
            assert tls.version() == "TLSv1.3"
            # The CONNECTED frame came after anything the handshake sent.
            assert not tls.session.has_ticket


def test_the_management_api_shows_which_connections_use_tls(start_broker, certs, tmp_path):
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs))
    external = pika_tls(broker, client_context(certs, "device-7"), pika.credentials.ExternalCredentials())
    plain = pika.BlockingConnection(broker.pika_parameters())
    _, mqtts_port = broker.listeners["mqtts"]
    mqtt = paho_client(certs, "device-7", f"api-{uuid.uuid4().hex[:8]}")
    assert connack(mqtt, mqtts_port) == 0
    stomp_client = stomp_tls(broker, certs, "device-7")
    stomp_client.connect(wait=True)
    by_protocol: dict[str, list[dict]] = {}
    deadline = time.monotonic() + WAIT
    while True:
        listed = requests.get(
            f"http://127.0.0.1:{broker.listeners['http'][1]}/api/connections",
            auth=("guest", "guest"),
            timeout=5,
        ).json()
        if len(listed) == 4:
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.05)
    for connection in listed:
        by_protocol.setdefault(connection["protocol"].split()[0], []).append(connection)
    amqp = sorted(by_protocol["AMQP"], key=lambda c: c["ssl"])
    assert [(c["ssl"], c["user"], c["auth_mechanism"]) for c in amqp] == [
        (False, "guest", "PLAIN"),
        (True, "device-7", "EXTERNAL"),
    ]
    assert amqp[0]["ssl_protocol"] is None and amqp[0]["ssl_cipher"] is None
    for connection in [amqp[1], *by_protocol["MQTT"], *by_protocol["STOMP"]]:
        assert connection["ssl"] is True, connection
        assert connection["ssl_protocol"] == "tlsv1.3", connection
        assert connection["ssl_cipher"].startswith("TLS13_"), connection
    stomp_client.disconnect()
    mqtt.disconnect()
    plain.close()
    external.close()


def test_fail_if_no_peer_cert_refuses_clients_without_a_trusted_certificate(
    start_broker, junction_bin, certs, tmp_path
):
    config = tls_config(tmp_path / "tls.toml", certs, fail_if_no_peer_cert=True)
    broker = start_tls(start_broker, config)
    with pytest.raises((pika.exceptions.AMQPError, ssl.SSLError, OSError)):
        pika_tls(broker, client_context(certs), pika.PlainCredentials("guest", "guest"))
    # A certificate from another CA is refused too.
    other = make_certs(junction_bin, tmp_path / "other", "device-7")
    foreign = client_context(certs)
    foreign.load_cert_chain(str(other / "device-7.pem"), str(other / "device-7.key"))
    with pytest.raises((pika.exceptions.AMQPError, ssl.SSLError, OSError)):
        pika_tls(broker, foreign, pika.credentials.ExternalCredentials())
    connection = pika_tls(broker, client_context(certs, "device-7"), pika.credentials.ExternalCredentials())
    assert round_trip(connection) == b"over TLS"
    connection.close()


def test_https_serves_the_management_api_and_prometheus(start_broker, certs, tmp_path):
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", certs, verify_peer=False))
    _, port = broker.listeners["https"]
    overview = requests.get(
        f"https://localhost:{port}/api/overview", auth=("guest", "guest"), verify=str(certs / "ca.pem"), timeout=5
    )
    assert overview.status_code == 200
    listeners = {(l["protocol"], l["port"]) for l in overview.json()["listeners"]}
    assert ("amqp/ssl", broker.listeners["amqps"][1]) in listeners
    assert ("mqtt/ssl", broker.listeners["mqtts"][1]) in listeners
    _, metrics_port = broker.listeners["prometheus-tls"]
    metrics = requests.get(f"https://localhost:{metrics_port}/metrics", verify=str(certs / "ca.pem"), timeout=5)
    assert metrics.status_code == 200 and "rabbitmq_" in metrics.text
    # The HTTPS listener says http/1.1 in ALPN.
    context = client_context(certs)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"


def server_certificate(port: int, certs: Path) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def pem_to_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_sighup_swaps_the_certificate_for_new_connections_while_old_ones_stay(
    start_broker, junction_bin, certs, tmp_path
):
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server.key", "ca.pem", "device-7.pem", "device-7.key"):
        shutil.copy(certs / name, live / name)
    broker = start_tls(start_broker, tls_config(tmp_path / "tls.toml", live, verify_peer=False))
    _, port = broker.listeners["amqps"]
    assert server_certificate(port, live) == pem_to_der(certs / "server.pem")
    old = pika_tls(broker, client_context(certs), pika.PlainCredentials("guest", "guest"))
    assert round_trip(old) == b"over TLS"

    fresh = make_certs(junction_bin, tmp_path / "fresh")
    # A broken file first: the reload fails, is logged, and the old certificate stays.
    (live / "server.pem").write_text("garbage")
    broker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while "cannot reload TLS" not in broker.log_tail(200) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cannot reload TLS" in broker.log_tail(200)
    assert server_certificate(port, live) == pem_to_der(certs / "server.pem")

    shutil.copy(fresh / "server.pem", live / "server.pem")
    shutil.copy(fresh / "server.key", live / "server.key")
    broker.process.send_signal(signal.SIGHUP)
    want = pem_to_der(fresh / "server.pem")
    deadline = time.monotonic() + WAIT
    while server_certificate(port, live) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server_certificate(port, live) == want
    # A new client that trusts only the new CA gets in; the old connection still works.
    new = pika_tls(broker, client_context(fresh), pika.PlainCredentials("guest", "guest"))
    assert round_trip(new) == b"over TLS"
    assert round_trip(old) == b"over TLS"
    new.close()
    old.close()


def test_a_bad_certificate_file_stops_the_start_with_a_clear_error(
    junction_bin, certs, tmp_path
):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    config = tmp_path / "bad.toml"
    config.write_text(f'[tls]\ncertfile = "{bad}"\nkeyfile = "{certs / "server.key"}"\n')
    done = subprocess.run(
        [str(junction_bin), "--config", str(config), "--data-dir", str(tmp_path / "d"),
         "--amqp", "127.0.0.1:0", "--mqtt", "off", "--stomp", "off", "--http", "off",
         "--web-stomp", "off", "--web-mqtt", "off", "--prometheus", "off", "--amqps", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=WAIT,
    )
    assert done.returncode != 0
    assert "certificate file" in done.stderr and str(bad) in done.stderr, done.stderr


def test_a_silent_tls_client_is_closed_after_the_handshake_timeout(start_broker, certs, tmp_path):
    config = tls_config(tmp_path / "tls.toml", certs, extra="\n[limits]\nhandshake_timeout_ms = 500\n")
    broker = start_tls(start_broker, config)
    _, port = broker.listeners["mqtts"]
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b""
        assert time.monotonic() - started < WAIT


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    try:
        out = subprocess.run(
            ["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            return words[words.index("inet") + 1].split("/")[0]
    return None


def test_guest_stays_loopback_only_over_tls_and_by_certificate(start_broker, junction_bin, tmp_path):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    certs = make_certs(junction_bin, tmp_path / "certs", "guest", "device-7")
    config = tls_config(tmp_path / "tls.toml", certs)
    broker = start_broker(
        extra_args=["--config", str(config), "--amqps", "0.0.0.0:0", "--mqtts", "0.0.0.0:0", "--stomps", "0.0.0.0:0"]
    )
    amqps = broker.listeners["amqps"][1]

    def pika_from_afar(context, credentials):
        return pika.BlockingConnection(
            pika.ConnectionParameters(
                host=address,
                port=amqps,
                ssl_options=pika.SSLOptions(context, "localhost"),
                credentials=credentials,
                connection_attempts=1,
                socket_timeout=5,
            )
        )

    with pytest.raises(pika.exceptions.AMQPError):
        pika_from_afar(client_context(certs), pika.PlainCredentials("guest", "guest"))
    with pytest.raises(pika.exceptions.AMQPError):
        pika_from_afar(client_context(certs, "guest"), pika.credentials.ExternalCredentials())
    # device-7 may log in from anywhere, by certificate too.
    connection = pika_from_afar(client_context(certs, "device-7"), pika.credentials.ExternalCredentials())
    assert round_trip(connection) == b"over TLS"
    connection.close()
    # MQTT: guest's certificate, and the anonymous login (guest), are refused from afar.
    mqtts = broker.listeners["mqtts"][1]
    for client in ("guest", None):
        mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"afar-{uuid.uuid4().hex[:8]}")
        context = client_context(certs, client)
        context.check_hostname = False
        mqtt.tls_set_context(context)
        codes: list = []
        mqtt.on_connect = lambda c, u, f, reason, p: codes.append(reason)
        mqtt.connect(address, mqtts)
        deadline = time.monotonic() + WAIT
        while not codes and time.monotonic() < deadline:
            mqtt.loop(timeout=0.1)
        assert codes and codes[0].value != 0, f"guest logged in from {address} ({client})"
    assert "can only connect via localhost" in broker.log_tail(200)
