"""Limits against abuse ([limits] and the per-vhost and per-user limits): each one exceeded
with a real client, which gets its protocol's error, while other clients carry on.
"""

from __future__ import annotations

import resource
import select
import socket
import time

import pika
import pytest
import requests

from processes import JunctionBroker

WAIT = 10.0

#: guest as the default configuration has it (arrays of tables replace the default's).
GUEST = """
[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]
"""


def raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open files limit ({hard}) is below {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the broker has closed the socket (EOF or reset), without blocking."""
    poller = select.poll()  # select.select cannot take descriptors above 1023
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return data == b""  # else the broker answered what was trickled: still open


def test_a_thousand_silent_sockets_are_closed_after_the_handshake_timeout(
    start_broker, tmp_path
):
    """1,000 clients connect to every listener and say nothing (or trickle a byte now and
    then); with a 2 s handshake timeout all of them are closed, and a real client logs in
    and works the whole time."""
    raise_open_files(4096)
    config = tmp_path / "limits.toml"
    config.write_text("[limits]\nhandshake_timeout_ms = 2000\n")
    broker = start_broker(extra_args=["--config", str(config)])
    names = ["amqp", "mqtt", "stomp", "http", "web-mqtt", "web-stomp"]
    silent: list[socket.socket] = []
    for i in range(1000):
        host, port = broker.listeners[names[i % len(names)]]
        sock = socket.create_connection((host, port), timeout=WAIT)
        sock.setblocking(False)
        silent.append(sock)
    # Some trickle a byte at a time: they are closed all the same.
    tricklers = silent[:12]
    openings = {
        "amqp": b"AMQP\x00\x00\x09\x01",
        "mqtt": b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c",
        "stomp": b"CONNECT\naccept-version:1.2\n",
        "http": b"GET /ws HTTP/1.1\r\nHost: x\r\n",
        "web-mqtt": b"GET /ws HTTP/1.1\r\nHost: x\r\n",
        "web-stomp": b"GET /ws HTTP/1.1\r\nHost: x\r\n",
    }
    sent = 0

    # Meanwhile a client that logs in properly is served.
    connection = pika.BlockingConnection(broker.pika_parameters())
    channel = connection.channel()
    channel.queue_declare("limits-canary", exclusive=True)

    deadline = time.monotonic() + 30
    open_sockets = list(silent)
    while open_sockets and time.monotonic() < deadline:
        for i, sock in enumerate(tricklers):
            opening = openings[names[i % len(names)]]
            if sent < len(opening) and sock in open_sockets:
                try:
                    sock.send(opening[sent : sent + 1])
                except OSError:
                    pass
        sent += 1
        open_sockets = [sock for sock in open_sockets if not closed_by_peer(sock)]
        channel.basic_publish("", "limits-canary", b"still here")
        connection.process_data_events(time_limit=0.25)
    assert not open_sockets, f"{len(open_sockets)} of 1,000 silent sockets still open"
    assert channel.queue_declare("limits-canary", passive=True).method.message_count > 0
    connection.close()
    for sock in silent:
        sock.close()
    assert "handshake timed out" in broker.log_tail(3000) or "no CONNECT in time" in broker.log_tail(3000)


def limited_broker(start_broker, tmp_path, toml: str) -> JunctionBroker:
    config = tmp_path / "limits.toml"
    config.write_text(toml)
    return start_broker(extra_args=["--config", str(config)])


def mqtt_connack(broker: JunctionBroker, client_id: str, user: str = "guest", password: str = "guest") -> int:
    """The return code of a raw MQTT 3.1.1 CONNECT; the socket is closed afterwards."""
    from mqtt_raw import connect_packet

    host, port = broker.listeners["mqtt"]
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        sock.sendall(connect_packet(client_id, username=user, password=password))
        data = b""
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                break
            data += chunk
        assert data[:2] == b"\x20\x02", data
        return data[3]


def stomp_connect(broker: JunctionBroker, login: str = "guest", passcode: str = "guest") -> str:
    """CONNECT over raw STOMP; returns the whole answer (command, headers, body)."""
    host, port = broker.listeners["stomp"]
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        sock.sendall(
            f"CONNECT\naccept-version:1.2\nhost:/\nlogin:{login}\npasscode:{passcode}\n\n\x00".encode()
        )
        data = b""
        while b"\x00" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


def refused_amqp(broker: JunctionBroker, **overrides) -> str:
    """Opens a pika connection that the broker must refuse at connection.open; returns the
    refusal as pika reports it (it wraps a close during the handshake as "probable access
    denied"), reply code included."""
    with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
        pika.BlockingConnection(broker.pika_parameters(**overrides))
    return str(refused.value)


def test_connection_max_refuses_every_protocol_past_it_and_frees_places_on_close(
    start_broker, tmp_path
):
    broker = limited_broker(start_broker, tmp_path, "[limits]\nconnection_max = 2\n")
    first = pika.BlockingConnection(broker.pika_parameters())
    second = pika.BlockingConnection(broker.pika_parameters())
    refused = refused_amqp(broker)
    assert "(530)" in refused and "node connection limit (2) is reached" in refused
    assert mqtt_connack(broker, "over-the-limit") == 3  # server unavailable
    assert stomp_connect(broker).startswith("ERROR")
    assert "node connection limit (2)" in stomp_connect(broker)
    # The two inside carry on.
    channel = first.channel()
    channel.queue_declare("connection-max", exclusive=True)
    second.close()
    third = pika.BlockingConnection(broker.pika_parameters())
    assert third.is_open
    assert "node connection limit" in broker.log_tail(200)
    first.close()
    third.close()


def test_vhost_limits_cap_its_connections_and_queues(start_broker, tmp_path):
    broker = limited_broker(
        start_broker,
        tmp_path,
        """
[[vhosts]]
name = "/"
max_queues = 3

[[vhosts]]
name = "small"
max_connections = 1

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [
    { vhost = "/", configure = ".*", write = ".*", read = ".*" },
    { vhost = "small", configure = ".*", write = ".*", read = ".*" },
]
""",
    )
    inside = pika.BlockingConnection(broker.pika_parameters(virtual_host="small"))
    refused = refused_amqp(broker, virtual_host="small")
    assert "(530)" in refused
    assert "access to vhost 'small' refused for user 'guest': connection limit (1) is reached" in refused
    assert mqtt_connack(broker, "small-vhost", user="small:guest") == 5
    # Other vhosts are not affected.
    other = pika.BlockingConnection(broker.pika_parameters())
    channel = other.channel()
    for i in range(3):
        channel.queue_declare(f"max-queues-{i}")
    channel.queue_declare("max-queues-0")  # a redeclaration is no new queue
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as full:
        channel.queue_declare("max-queues-3")
    assert full.value.reply_code == 406
    assert "queue limit in vhost '/' (3) is reached" in full.value.reply_text
    channel = other.channel()
    channel.queue_delete("max-queues-2")
    channel.queue_declare("max-queues-3")
    inside.close()
    other.close()


def test_user_limits_cap_its_connections_and_channels(start_broker, tmp_path):
    broker = limited_broker(
        start_broker,
        tmp_path,
        GUEST + """

[[users]]
name = "capped"
password = "capped"
max_connections = 2
max_channels = 3
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]
""",
    )
    capped = pika.PlainCredentials("capped", "capped")
    one = pika.BlockingConnection(broker.pika_parameters(credentials=capped))
    two = pika.BlockingConnection(broker.pika_parameters(credentials=capped))
    refused = refused_amqp(broker, credentials=capped)
    assert "(530)" in refused and "user connection limit (2) is reached" in refused
    assert mqtt_connack(broker, "capped-user", user="capped", password="capped") == 5
    assert "user connection limit" in stomp_connect(broker, "capped", "capped")
    # guest is not capped.
    guest = pika.BlockingConnection(broker.pika_parameters())
    # Channels count over both connections.
    one.channel()
    one.channel()
    kept = two.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as too_many:
        two.channel()
    assert too_many.value.reply_code == 530
    assert "maximum allowed user limit of (3)" in too_many.value.reply_text
    # A closed channel gives its place back (the connection that went over is gone too).
    three = pika.BlockingConnection(broker.pika_parameters(credentials=capped))
    three.channel()
    assert guest.channel().is_open
    for connection in (one, three, guest):
        connection.close()
    del kept


def test_consumer_max_per_channel(start_broker, tmp_path):
    broker = limited_broker(start_broker, tmp_path, "[limits]\nconsumer_max_per_channel = 2\n")
    connection = pika.BlockingConnection(broker.pika_parameters())
    channel = connection.channel()
    channel.queue_declare("consumer-max", exclusive=True)
    for _ in range(2):
        channel.basic_consume("consumer-max", lambda *args: None)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as refused:
        channel.basic_consume("consumer-max", lambda *args: None)
    assert refused.value.reply_code == 530
    assert "reached maximum (2) of consumers per channel" in refused.value.reply_text
    # Other clients carry on.
    other = pika.BlockingConnection(broker.pika_parameters())
    other.channel().queue_declare("", exclusive=True)
    other.close()


def test_max_queues_refuses_mqtt_and_stomp_subscriptions_that_need_a_new_queue(
    start_broker, tmp_path
):
    from mqtt_raw import connect_packet, subscribe_packet

    broker = limited_broker(
        start_broker,
        tmp_path,
        """
[[vhosts]]
name = "/"
max_queues = 1
""",
    )
    connection = pika.BlockingConnection(broker.pika_parameters())
    connection.channel().queue_declare("the-only-queue")
    # MQTT: the session's queue cannot be made: SUBACK says failure (0x80).
    host, port = broker.listeners["mqtt"]
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        sock.sendall(connect_packet("max-queues-device"))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        sock.sendall(subscribe_packet(1, ("sensors/#", 1)))
        suback = b""
        while len(suback) < 5:
            chunk = sock.recv(5 - len(suback))
            if not chunk:
                break
            suback += chunk
        assert suback[:1] == b"\x90" and suback[-1:] == b"\x80", suback
    # STOMP: a /topic/ subscription needs a queue: ERROR.
    host, port = broker.listeners["stomp"]
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
        sock.sendall(b"SUBSCRIBE\nid:1\ndestination:/topic/news\nreceipt:r1\n\n\x00")
        data = b""
        while b"ERROR" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        assert b"ERROR" in data and b"queue limit in vhost '/' (1) is reached" in data, data
    connection.close()


def test_strangers_past_the_unauthenticated_cap_are_closed_at_once(start_broker, tmp_path):
    broker = limited_broker(
        start_broker,
        tmp_path,
        "[limits]\nhandshake_timeout_ms = 30000\nunauthenticated_connection_max = 10\n",
    )
    inside = pika.BlockingConnection(broker.pika_parameters())
    channel = inside.channel()
    channel.queue_declare("cap-canary", exclusive=True)
    names = ["amqp", "mqtt", "stomp"]
    # Thirteen strangers on the three listeners: each admitted one holds its place for the
    # handshake timeout (30 s) unless it logs in or leaves, so three are closed at once. Which
    # three depends on the order the three accept loops take them in, not on the listener.
    strangers = [socket.create_connection(broker.listeners[names[i % 3]], timeout=WAIT) for i in range(13)]
    started = time.monotonic()
    closed: list[socket.socket] = []
    while len(closed) < 3:
        assert time.monotonic() - started < 5, f"only {len(closed)} of 13 strangers were closed"
        readable, _, _ = select.select([s for s in strangers if s not in closed], [], [], 0.5)
        for sock in readable:
            assert sock.recv(1) == b""
            closed.append(sock)
    silent = [sock for sock in strangers if sock not in closed]
    # The ten admitted ones stay open.
    readable, _, _ = select.select(silent, [], [], 1.0)
    assert readable == [], "an admitted stranger was closed"
    for sock in closed:
        sock.close()
    # Logged-in clients carry on.
    channel.basic_publish("", "cap-canary", b"still here")
    assert channel.basic_get("cap-canary", auto_ack=True)[2] == b"still here"
    assert "too many connections logging in at once" in broker.log_tail(200)
    # A stranger that leaves frees its place.
    silent.pop().close()
    deadline = time.monotonic() + WAIT
    while True:
        try:
            late = pika.BlockingConnection(broker.pika_parameters())
            break
        except pika.exceptions.AMQPConnectionError:
            assert time.monotonic() < deadline, "the freed place was not given back"
            time.sleep(0.05)
    late.close()
    for sock in silent:
        sock.close()
    inside.close()


def queue_depth(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def test_a_user_past_its_publish_rate_is_slowed_by_flow_control_and_loses_nothing(
    start_broker, tmp_path
):
    """max_publish_rate = 50 for one user: 150 messages need at least 2 s (50 at once, then
    50 a second), all of them arrive, and another user publishing meanwhile is not slowed."""
    broker = limited_broker(
        start_broker,
        tmp_path,
        GUEST + """

[[users]]
name = "meter"
password = "meter"
max_publish_rate = 50
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]
""",
    )
    observer = pika.BlockingConnection(broker.pika_parameters())
    watch = observer.channel()
    watch.queue_declare("rate-limited")
    watch.queue_declare("rate-free")
    limited = pika.BlockingConnection(broker.pika_parameters(credentials=pika.PlainCredentials("meter", "meter")))
    limited_channel = limited.channel()
    started = time.monotonic()
    for i in range(150):
        limited_channel.basic_publish("", "rate-limited", str(i).encode())
    # guest is not limited: its 500 are all in while meter's are still coming.
    free = pika.BlockingConnection(broker.pika_parameters())
    free_channel = free.channel()
    free_channel.confirm_delivery()
    for i in range(500):
        free_channel.basic_publish("", "rate-free", b"x")
    assert queue_depth(watch, "rate-free") == 500
    assert queue_depth(watch, "rate-limited") < 150
    deadline = time.monotonic() + 30
    while queue_depth(watch, "rate-limited") < 150:
        assert time.monotonic() < deadline, "the limited publisher's messages did not all arrive"
        limited.process_data_events(time_limit=0.05)
    elapsed = time.monotonic() - started
    assert elapsed >= 1.8, f"150 messages at 50/s took only {elapsed:.2f} s"
    bodies = [watch.basic_get("rate-limited", auto_ack=True)[2] for _ in range(150)]
    assert bodies == [str(i).encode() for i in range(150)], "nothing dropped, order kept"
    for connection in (limited, free, observer):
        connection.close()


def test_an_mqtt_client_past_its_publish_rate_is_slowed_and_loses_nothing(start_broker, tmp_path):
    import paho.mqtt.client as paho

    broker = limited_broker(start_broker, tmp_path, "[mqtt]\nmax_publish_rate_per_client = 50\n")
    observer = pika.BlockingConnection(broker.pika_parameters())
    watch = observer.channel()
    watch.queue_declare("mqtt-rate")
    watch.queue_bind("mqtt-rate", "amq.topic", "meter.readings")
    device = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rate-device")
    device.username_pw_set("guest", "guest")
    host, port = broker.listeners["mqtt"]
    device.connect(host, port)
    device.loop_start()
    try:
        started = time.monotonic()
        for i in range(150):
            device.publish("meter/readings", str(i).encode(), qos=1)
        deadline = time.monotonic() + 30
        while queue_depth(watch, "mqtt-rate") < 150:
            assert time.monotonic() < deadline, "the device's messages did not all arrive"
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        assert elapsed >= 1.8, f"150 messages at 50/s took only {elapsed:.2f} s"
    finally:
        device.loop_stop()
        device.disconnect()
    bodies = [watch.basic_get("mqtt-rate", auto_ack=True)[2] for _ in range(150)]
    assert bodies == [str(i).encode() for i in range(150)]
    observer.close()


def test_channel_max_and_max_message_size_over_amqp(start_broker, tmp_path):
    """[amqp] channel_max = 4: channel 5 closes the connection with 504; max_message_size =
    1024: a 2 KiB body closes its channel with 406; other clients and channels carry on."""
    from amqp_raw import Closed, RawAmqp, method, shortstr

    broker = limited_broker(start_broker, tmp_path, "[amqp]\nchannel_max = 4\nmax_message_size = 1024\n")
    client = RawAmqp(broker.listeners["amqp"]).open()
    for number in (2, 3, 4):
        client.send(method(number, 20, 10, shortstr("")))
        client.read_method()
    client.send(method(5, 20, 10, shortstr("")))
    with pytest.raises(Closed) as refused:
        client.read_method()
    assert (refused.value.scope, refused.value.code) == ("connection", 504)
    assert "channel number 5 exceeds channel_max 4" in refused.value.text
    client.close()

    connection = pika.BlockingConnection(broker.pika_parameters())
    channel = connection.channel()
    channel.queue_declare("size-limited", exclusive=True)
    channel.confirm_delivery()
    channel.basic_publish("", "size-limited", b"x" * 1000)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as too_big:
        channel.basic_publish("", "size-limited", b"x" * 2048)
    assert too_big.value.reply_code == 406
    assert "message size 2048 is larger than configured max size 1024" in too_big.value.reply_text
    other = connection.channel()
    assert other.queue_declare("size-limited", passive=True).method.message_count == 1
    connection.close()
