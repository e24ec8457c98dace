"""STOMP 1.0/1.1/1.2 as Junction speaks it, through stomp.py and a raw socket client.

Pinned here: version negotiation (``accept-version``; none at all means 1.0; nothing in
common is an ERROR and the connection closes), CONNECT and STOMP both opening a session,
login/passcode checks, the ``host`` header choosing the vhost (a host that names no vhost
is refused, as in RabbitMQ, unless a setting says it means the default one), SEND/SUBSCRIBE/UNSUBSCRIBE, RECEIPTs, the headers of a MESSAGE, the
three ack modes with ACK and NACK, ``prefetch-count``, transactions, heart-beats both ways,
header escaping per version, ``content-length`` bodies with NUL bytes, and persistence across
a restart.

Every queue name comes from ``names``, so tests sharing the broker never see each other's
messages. Negative checks ("nothing else arrives") are bounded and made after something
later was already seen.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pika
import pytest

from stomp_clients import GUEST, WAIT, RawStomp, StompClient

VERSIONS = ["1.0", "1.1", "1.2"]


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "junction-stomp.toml"
    path.write_text(text)
    return str(path)


def queue_depth(channel, queue: str) -> int:
    """Messages ready in ``queue`` (pika's passive queue.declare)."""
    return channel.queue_declare(queue, passive=True).method.message_count


# ---------------------------------------------------------------------------------------------
# Versions and CONNECT.


@pytest.mark.parametrize("version", VERSIONS)
def test_each_version_connects_with_its_stomp_py_connection_and_carries_messages(
    stomp, names, version
):
    """stomp.py's Connection10/11/12 each get CONNECTED naming their version and the
    negotiated heart-beats (1.0 too, and 0,0 for a client that asks for none, as RabbitMQ sends
    them) and can move a message through a queue."""
    client = stomp(version)
    connected = client.connect()
    assert connected.headers["version"] == version
    assert connected.headers["server"].startswith("Junction/")
    assert connected.headers.get("session")
    assert connected.headers["heart-beat"] == "0,0"
    client.round_trip(names)


@pytest.mark.parametrize(
    "accept_version, expected",
    [(None, "1.0"), ("1.0", "1.0"), ("1.0,1.1", "1.1"), ("1.1,1.2", "1.2"), ("1.2,2.0", "1.2")],
    ids=["absent", "1.0", "1.0,1.1", "1.1,1.2", "1.2,2.0"],
)
def test_the_highest_version_both_sides_accept_is_chosen(raw_stomp, accept_version, expected):
    """A raw CONNECT's accept-version list is answered with the highest version Junction also
    speaks; no accept-version header at all is a STOMP 1.0 client."""
    client = raw_stomp()
    headers = [("login", "guest"), ("passcode", "guest")]
    if accept_version is not None:
        headers.insert(0, ("accept-version", accept_version))
    client.send_frame("CONNECT", headers)
    connected = client.expect_frame("CONNECTED")
    assert connected["version"] == expected


def test_a_client_accepting_only_version_2_gets_an_error_and_is_disconnected(raw_stomp):
    """accept-version 2.0 shares no version with Junction: an ERROR 'Version mismatch' whose
    body names the supported versions, then the socket is closed."""
    client = raw_stomp()
    client.send_frame(
        "CONNECT", [("accept-version", "2.0"), ("login", "guest"), ("passcode", "guest")]
    )
    error = client.expect_error_and_close()
    assert error["message"] == "Version mismatch"
    assert error.body == b"Supported versions are 1.0,1.1,1.2\n"


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
def test_connect_and_stomp_commands_both_open_a_session(raw_stomp, names, command):
    """CONNECT and its 1.2 alias STOMP are both answered with CONNECTED, after which the
    connection takes SEND frames (a RECEIPT proves the SEND was handled)."""
    client = raw_stomp()
    connected = client.connect("1.2", command=command)
    assert connected["version"] == "1.2"
    client.send_frame(
        "SEND",
        [("destination", f"/queue/{names('q')}"), ("receipt", "sent")],
        b"hello",
        version="1.2",
    )
    assert client.expect_frame("RECEIPT")["receipt-id"] == "sent"


def test_a_second_connect_on_a_connected_session_is_an_error(raw_stomp):
    """A connection sends CONNECT once: another one is an ERROR and the connection closes."""
    client = raw_stomp()
    client.connect("1.2")
    client.send_frame("CONNECT", [("accept-version", "1.2"), *GUEST])
    client.expect_error_and_close()


@pytest.mark.parametrize("version", VERSIONS)
def test_good_credentials_are_accepted(stomp, version):
    """guest/guest, the configured user, is let in with every version."""
    assert stomp(version).connect("guest", "guest").command == "CONNECTED"


@pytest.mark.parametrize(
    "login, passcode",
    [("guest", "wrong"), ("nobody", "guest"), (None, None)],
    ids=["bad-passcode", "unknown-user", "no-login"],
)
def test_bad_credentials_get_a_bad_connect_error_and_the_connection_closes(
    stomp, login, passcode
):
    """A wrong passcode, an unknown user, or no login at all (allow_anonymous is off by
    default) is refused: ERROR with message 'Bad CONNECT' and a body saying why, then the
    broker closes the connection."""
    client = stomp("1.2")
    error = client.connect_refused(login, passcode)
    assert error.headers["message"] == "Bad CONNECT"
    assert error.body.strip()


VHOSTS_CONFIG = """
[[vhosts]]
name = "/"

[[vhosts]]
name = "v2"

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [
    { vhost = "/", configure = ".*", write = ".*", read = ".*" },
    { vhost = "v2", configure = ".*", write = ".*", read = ".*" },
]
"""


def test_the_host_header_names_the_vhost(start_broker, tmp_path, stomp, names):
    """With vhosts '/' and 'v2', a client whose host header is 'v2' works in v2: the same
    /queue/ name is a different queue there, so messages sent in one vhost are only seen in
    that one; pika on v2 sees the queue STOMP declared there."""
    private = start_broker(extra_args=["--config", write_config(tmp_path, VHOSTS_CONFIG)])
    queue = names("q")
    in_v2 = stomp("1.2", target=private, vhost="v2")
    in_root = stomp("1.2", target=private, vhost="/")
    in_v2.connect()
    in_root.connect()
    in_v2.subscribe(f"/queue/{queue}")
    in_root.subscribe(f"/queue/{queue}")
    in_v2.send(f"/queue/{queue}", "for v2")
    in_root.send(f"/queue/{queue}", "for /")
    assert in_v2.expect_message().body == "for v2"
    assert in_root.expect_message().body == "for /"
    in_v2.expect_no_message(0.3)
    in_root.expect_no_message(0.3)

    connection = pika.BlockingConnection(private.pika_parameters(virtual_host="v2"))
    try:
        connection.channel().queue_declare(queue, passive=True)
    finally:
        connection.close()


def test_a_host_header_that_names_no_vhost_is_refused_as_rabbitmq_refuses_it(raw_stomp):
    """RabbitMQ reads the host header as the vhost and refuses one that does not exist (or
    that the user may not use), with the same words for both."""
    client = raw_stomp()
    client.send_frame(
        "CONNECT",
        [("accept-version", "1.2"), ("host", "my-laptop"), ("login", "guest"), ("passcode", "guest")],
    )
    error = client.expect_error_and_close()
    assert error.get("message") == "Bad CONNECT"
    assert error.body.decode().strip() == "Virtual host 'my-laptop' access denied"


def test_a_setting_lets_a_host_that_names_no_vhost_mean_the_default_vhost(
    start_broker, tmp_path, raw_stomp, names
):
    """Some clients send the machine's name as host: with ``[stomp]
    unknown_host_uses_default_vhost = true`` they are connected to '/' instead of refused, so
    a message they send to /queue/N is in queue N of '/' (pika sees it)."""
    lenient = start_broker(
        extra_args=[
            "--config",
            write_config(tmp_path, "[stomp]\nunknown_host_uses_default_vhost = true\n"),
        ]
    )
    queue = names("q")
    client = raw_stomp(target=lenient)
    client.connect("1.2", host=socket.gethostname())
    client.send_frame(
        "SEND", [("destination", f"/queue/{queue}"), ("receipt", "r")], b"via host", version="1.2"
    )
    client.expect_frame("RECEIPT")
    connection = pika.BlockingConnection(lenient.pika_parameters())
    try:
        method, _, body = connection.channel().basic_get(queue, auto_ack=True)
    finally:
        connection.close()
    assert method is not None and body == b"via host"


# ---------------------------------------------------------------------------------------------
# SEND, SUBSCRIBE, UNSUBSCRIBE, RECEIPT, MESSAGE.


@pytest.mark.parametrize("version", VERSIONS)
def test_unsubscribe_stops_deliveries_and_the_queue_keeps_what_follows(
    stomp_connected, names, channel, version
):
    """SUBSCRIBE to /queue/N gets what is sent there; after UNSUBSCRIBE nothing more arrives
    and later messages wait in the queue (pika fetches them)."""
    queue = names("q")
    client = stomp_connected(version)
    subscription = client.subscribe(f"/queue/{queue}")
    client.send(f"/queue/{queue}", "one")
    message = client.expect_message()
    assert (message.body, message.headers["subscription"]) == ("one", subscription)
    client.unsubscribe(subscription)
    client.send(f"/queue/{queue}", "two")
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None and body == b"two"
    client.expect_no_message(0.3)


def test_stomp_1_0_subscriptions_without_an_id_are_named_by_their_destination(raw_stomp, names):
    """In STOMP 1.0 a SUBSCRIBE may leave out id: as in RabbitMQ its MESSAGEs carry no
    subscription header and a message-id made from the destination
    (``Q_<destination>@@<session>@@<n>``), and UNSUBSCRIBE by destination ends it."""
    destination = f"/queue/{names('q')}"
    client = raw_stomp()
    client.connect("1.0")
    client.send_frame("SUBSCRIBE", [("destination", destination), ("receipt", "s")])
    client.expect_frame("RECEIPT")
    client.send_frame("SEND", [("destination", destination)], b"1.0 style")
    message = client.expect_frame("MESSAGE")
    assert message.get("subscription") is None
    assert message["message-id"].startswith(f"Q_{destination}@@session-")
    assert message.body == b"1.0 style"
    client.send_frame("UNSUBSCRIBE", [("destination", destination), ("receipt", "u")])
    assert client.expect_frame("RECEIPT")["receipt-id"] == "u"


def test_send_subscribe_unsubscribe_and_disconnect_each_get_their_receipt(raw_stomp, names):
    """A receipt header on SEND, SUBSCRIBE, UNSUBSCRIBE and DISCONNECT is answered with a
    RECEIPT carrying it as receipt-id, in order; after the DISCONNECT receipt the broker
    closes the connection."""
    destination = f"/queue/{names('q')}"
    client = raw_stomp()
    client.connect("1.2")
    client.send_frame(
        "SUBSCRIBE", [("destination", destination), ("id", "s1"), ("receipt", "r-sub")]
    )
    assert client.expect_frame("RECEIPT")["receipt-id"] == "r-sub"
    client.send_frame("SEND", [("destination", destination), ("receipt", "r-send")], b"x")
    frames = [client.read_frame(), client.read_frame()]
    assert sorted(f.command for f in frames) == ["MESSAGE", "RECEIPT"]
    assert [f["receipt-id"] for f in frames if f.command == "RECEIPT"] == ["r-send"]
    client.send_frame("UNSUBSCRIBE", [("id", "s1"), ("receipt", "r-unsub")])
    assert client.expect_frame("RECEIPT")["receipt-id"] == "r-unsub"
    client.send_frame("DISCONNECT", [("receipt", "r-bye")])
    assert client.expect_frame("RECEIPT")["receipt-id"] == "r-bye"
    assert client.wait_closed().strip(b"\n") == b""


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("ack", ["auto", "client", "client-individual"])
def test_messages_carry_subscription_message_id_destination_and_in_1_2_an_ack_id(
    stomp_connected, names, version, ack
):
    """Every MESSAGE has subscription, message-id and destination headers; a 1.2 client on a
    client or client-individual subscription also gets the ack header it must ACK with
    (auto subscriptions and older versions get none)."""
    destination = f"/queue/{names('q')}"
    client = stomp_connected(version)
    subscription = client.subscribe(destination, ack=ack)
    client.send(destination, "headers")
    message = client.expect_message()
    assert message.headers["subscription"] == subscription
    assert message.headers["destination"] == destination
    assert message.headers["message-id"]
    if version == "1.2" and ack != "auto":
        assert message.headers["ack"]
    else:
        assert "ack" not in message.headers


# ---------------------------------------------------------------------------------------------
# Acknowledgements.


def send_numbered(client: StompClient, destination: str, count: int) -> None:
    for n in range(1, count + 1):
        client.send(destination, f"m{n}")


def test_auto_ack_settles_messages_as_they_are_delivered(stomp_connected, names, channel):
    """On an auto subscription delivered messages are gone from the queue: after the client
    disconnects, the queue is empty."""
    queue = names("q")
    client = stomp_connected("1.2")
    client.subscribe(f"/queue/{queue}")
    send_numbered(client, f"/queue/{queue}", 3)
    assert [m.body for m in client.expect_messages(3)] == ["m1", "m2", "m3"]
    client.disconnect()
    assert queue_depth(channel, queue) == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ack_is_cumulative(stomp_connected, names, version):
    """In client mode an ACK settles the named message and every earlier one of the
    subscription: acking m2 of m1..m3 and disconnecting leaves only m3, which the next
    subscriber gets marked redelivered."""
    destination = f"/queue/{names('q')}"
    client = stomp_connected(version)
    client.subscribe(destination, ack="client")
    send_numbered(client, destination, 3)
    received = client.expect_messages(3)
    assert [m.body for m in received] == ["m1", "m2", "m3"]
    client.ack(received[1])
    client.disconnect()

    again = stomp_connected(version)
    again.subscribe(destination, ack="client")
    message = again.expect_message()
    assert message.body == "m3"
    assert message.headers.get("redelivered") == "true"
    again.expect_no_message(0.3)


def test_a_cumulative_ack_stays_within_its_subscription(stomp_connected, names):
    """Two client-mode subscriptions on one connection: acking the later message of one
    settles nothing of the other, whose earlier message comes back to the next subscriber."""
    first, second = f"/queue/{names('a')}", f"/queue/{names('b')}"
    client = stomp_connected("1.2")
    client.subscribe(first, id="first", ack="client")
    client.subscribe(second, id="second", ack="client")
    client.send(second, "earlier, other subscription")
    assert client.expect_message().headers["subscription"] == "second"
    client.send(first, "later")
    later = client.expect_message()
    assert later.headers["subscription"] == "first"
    client.ack(later)
    client.disconnect()

    again = stomp_connected("1.2")
    again.subscribe(second, ack="client")
    assert again.expect_message().body == "earlier, other subscription"
    again.subscribe(first, ack="client")
    again.expect_no_message(0.3)


@pytest.mark.parametrize("version", VERSIONS)
def test_client_individual_ack_settles_only_the_named_message(stomp_connected, names, version):
    """In client-individual mode an ACK settles that message alone: acking m2 of m1..m3 and
    disconnecting leaves m1 and m3 for the next subscriber."""
    destination = f"/queue/{names('q')}"
    client = stomp_connected(version)
    client.subscribe(destination, ack="client-individual")
    send_numbered(client, destination, 3)
    received = client.expect_messages(3)
    client.ack(received[1])
    client.disconnect()

    again = stomp_connected(version)
    again.subscribe(destination, ack="client-individual")
    assert sorted(m.body for m in again.expect_messages(2)) == ["m1", "m3"]
    again.expect_no_message(0.3)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_requeues_and_the_message_comes_back_redelivered(stomp_connected, names, version):
    """NACK puts the message back in its queue (RabbitMQ's default): it is delivered again,
    with redelivered:true, and an ACK then settles it for good."""
    queue = names("q")
    client = stomp_connected(version)
    client.subscribe(f"/queue/{queue}", ack="client-individual")
    client.send(f"/queue/{queue}", "try again")
    first = client.expect_message()
    assert first.headers["redelivered"] == "false"
    client.nack(first)
    second = client.expect_message()
    assert second.body == "try again"
    assert second.headers["redelivered"] == "true"
    client.ack(second)
    client.expect_no_message(0.3)


@pytest.mark.parametrize("requeue", ["false", "False"])
def test_nack_with_requeue_false_drops_the_message(stomp_connected, names, channel, requeue):
    """NACK with requeue:false discards the message instead of redelivering it; ``False``
    (what stomp.py makes of a Python boolean) reads the same, as in RabbitMQ."""
    queue = names("q")
    client = stomp_connected("1.2")
    client.subscribe(f"/queue/{queue}", ack="client-individual")
    client.send(f"/queue/{queue}", "drop me")
    message = client.expect_message()
    client.conn.nack(message.headers["ack"], receipt="nacked", requeue=requeue)
    client.wait_receipt("nacked")
    client.send(f"/queue/{queue}", "after")
    assert client.expect_message().body == "after"
    client.expect_no_message(0.3)


def test_prefetch_count_limits_unacknowledged_deliveries(stomp_connected, names):
    """prefetch-count:2 on a client-individual subscription: of 5 messages only 2 arrive
    until one is acked, then exactly one more."""
    destination = f"/queue/{names('q')}"
    client = stomp_connected("1.2")
    client.subscribe(destination, ack="client-individual", prefetch_count="2")
    send_numbered(client, destination, 5)
    first_two = client.expect_messages(2)
    assert [m.body for m in first_two] == ["m1", "m2"]
    client.expect_no_message(0.5)
    client.ack(first_two[0])
    assert client.expect_message().body == "m3"
    client.expect_no_message(0.5)


# ---------------------------------------------------------------------------------------------
# Transactions.


def test_sends_in_a_transaction_are_delivered_only_on_commit(stomp_connected, names):
    """SENDs naming a transaction are held (their receipts too, until COMMIT): a SEND
    outside it overtakes them, and COMMIT delivers them, in order."""
    destination = f"/queue/{names('q')}"
    client = stomp_connected("1.2")
    client.subscribe(destination)
    tx = client.begin("tx-commit")
    client.send(destination, "held 1", transaction=tx, wait=False)
    client.send(destination, "held 2", transaction=tx, wait=False)
    client.send(destination, "outside")
    assert client.expect_message().body == "outside"
    client.expect_no_message(0.3)
    client.commit(tx)
    assert [m.body for m in client.expect_messages(2)] == ["held 1", "held 2"]


def test_abort_drops_the_transactions_sends(stomp_connected, names):
    """ABORT discards the transaction's SENDs: only a later message arrives."""
    destination = f"/queue/{names('q')}"
    client = stomp_connected("1.2")
    client.subscribe(destination)
    tx = client.begin("tx-abort")
    client.send(destination, "never", transaction=tx, wait=False)
    client.abort(tx)
    client.send(destination, "after abort")
    assert client.expect_message().body == "after abort"
    client.expect_no_message(0.3)


@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_acks_in_a_transaction_take_effect_only_on_commit(stomp_connected, names, outcome):
    """With prefetch-count:1 the next message comes only when the first is settled: an ACK
    in a transaction releases it on COMMIT, not before, and never after ABORT (a plain ACK
    still can)."""
    destination = f"/queue/{names('q')}"
    client = stomp_connected("1.2")
    client.subscribe(destination, ack="client-individual", prefetch_count="1")
    send_numbered(client, destination, 2)
    first = client.expect_message()
    assert first.body == "m1"
    tx = client.begin(f"tx-{outcome}")
    client.ack(first, transaction=tx)
    client.expect_no_message(0.5)
    if outcome == "commit":
        client.commit(tx)
    else:
        client.abort(tx)
        client.expect_no_message(0.5)
        client.ack(first)
    assert client.expect_message().body == "m2"


# ---------------------------------------------------------------------------------------------
# Heart-beats.

FAST_HEARTBEATS = "[stomp]\nheartbeat_ms = 500\n"


def test_a_client_exchanging_heartbeats_stays_connected(start_broker, tmp_path, stomp, names):
    """Broker and stomp.py both at 500 ms: heart-beats flow from the broker, the broker is
    content with the client's, and after more than 3 s the connection still carries
    messages."""
    private = start_broker(extra_args=["--config", write_config(tmp_path, FAST_HEARTBEATS)])
    client = stomp("1.2", target=private, heartbeats=(500, 500))
    connected = client.connect()
    assert connected.headers["heart-beat"] == "500,500"
    started = time.monotonic()
    client.wait_heartbeats(6, timeout=WAIT)
    assert time.monotonic() - started > 2.5
    deadline = started + 3.5
    while time.monotonic() < deadline:
        assert not client.disconnected.wait(0.1), "the broker dropped a heart-beating client"
    client.round_trip(names)


def test_a_client_that_promised_heartbeats_and_went_silent_is_disconnected(
    start_broker, tmp_path
):
    """A raw client offering heart-beats every 500 ms (and wanting none) that then sends
    nothing is closed once twice the interval has passed without a byte: after about 1 s,
    within a few seconds."""
    private = start_broker(extra_args=["--config", write_config(tmp_path, FAST_HEARTBEATS)])
    client = RawStomp(private.listeners["stomp"])
    try:
        client.connect("1.2", heart_beat="500,0")
        connected_at = time.monotonic()
        client.wait_closed(timeout=5)
        assert client.closed_at is not None
        assert 0.8 <= client.closed_at - connected_at <= 4
    finally:
        client.close()


def test_the_broker_sends_eol_heartbeats_when_asked(start_broker, tmp_path):
    """A raw client that wants heart-beats every 500 ms (and sends none) gets end-of-line
    bytes from the otherwise idle broker, several within 3 s, and stays connected."""
    private = start_broker(extra_args=["--config", write_config(tmp_path, FAST_HEARTBEATS)])
    client = RawStomp(private.listeners["stomp"])
    try:
        connected = client.connect("1.2", heart_beat="0,500")
        # The broker sends every 500 ms and expects nothing from a client that sends none.
        assert connected["heart-beat"] == "500,0"
        client.wait_heartbeats(4, timeout=3.5)
        client.send_frame("DISCONNECT", [("receipt", "bye")])
        assert client.expect_frame("RECEIPT")["receipt-id"] == "bye"
    finally:
        client.close()


def test_a_client_asking_for_one_second_heart_beats_gets_them_on_the_default_configuration(
    raw_stomp,
):
    """``heart-beat:1000,1000`` against the default configuration (``heartbeat_ms`` 10,000
    is an offer, not a floor): CONNECTED answers 1000,1000, the broker's first heart-beat
    comes after about a second, and the silent client is disconnected within 2-3 s."""
    client = raw_stomp()
    connected = client.connect("1.2", heart_beat="1000,1000")
    assert connected["heart-beat"] == "1000,1000"
    started = time.monotonic()
    # Heart-beats come every second: the first one well before the broker gives up on the
    # silent client (two missed intervals).
    client.wait_heartbeats(1, timeout=1.8)
    client.wait_closed(timeout=6)
    assert client.closed_at is not None
    assert 1.8 <= client.closed_at - started <= 4.0, client.closed_at - started


def test_no_heartbeats_are_sent_to_a_client_that_wants_none(raw_stomp):
    """heart-beat 0,0 (or none): the idle broker sends nothing at all."""
    client = raw_stomp()
    client.connect("1.2", heart_beat="0,0")
    with pytest.raises(AssertionError, match="no frame"):
        client.read_frame(timeout=1.0)
    assert client.heartbeats == 0


# ---------------------------------------------------------------------------------------------
# Header escaping and bodies.

AWKWARD = {"x-colon": "a:b:c", "x-newline": "line1\nline2", "x-backslash": "C:\\temp\\x"}


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_escaped_header_values_round_trip_through_a_queue(stomp_connected, names, version):
    """Header values with ':' , '\\n' and '\\\\' (and '\\r' in 1.2) are escaped by the
    sender, unescaped by the broker, stored, escaped again on the MESSAGE and arrive
    unchanged."""
    destination = f"/queue/{names('q')}"
    headers = dict(AWKWARD)
    if version == "1.2":
        headers["x-return"] = "cr\rhere"
    client = stomp_connected(version)
    client.subscribe(destination)
    client.conn.send(destination, "escaped", headers={**headers, "receipt": "sent"})
    client.wait_receipt("sent")
    message = client.expect_message()
    assert {name: message.headers.get(name) for name in headers} == headers


def test_messages_are_escaped_on_the_wire_for_a_1_2_subscriber(stomp_connected, raw_stomp, names):
    """What a raw 1.2 subscriber reads: ':' as \\c, newline as \\n, backslash as \\\\."""
    destination = f"/queue/{names('q')}"
    subscriber = raw_stomp()
    subscriber.connect("1.2")
    subscriber.send_frame(
        "SUBSCRIBE", [("destination", destination), ("id", "s"), ("receipt", "s")]
    )
    subscriber.expect_frame("RECEIPT")
    sender = stomp_connected("1.2")
    sender.conn.send(destination, "escaped", headers={**AWKWARD, "receipt": "sent"})
    sender.wait_receipt("sent")
    message = subscriber.expect_frame("MESSAGE")
    assert message["x-colon"] == "a\\cb\\cc"
    assert message["x-newline"] == "line1\\nline2"
    assert message["x-backslash"] == "C\\c\\\\temp\\\\x"


def test_stomp_1_0_headers_are_not_escaped(raw_stomp, stomp_connected, names):
    """In 1.0 a header value is everything after the first colon, backslashes included: a
    1.0 sender's 'a\\cb' and '12:30' reach a 1.0 subscriber byte for byte, and a 1.2
    subscriber reads them as the same text (escaped for it, then unescaped by stomp.py)."""
    destination = f"/topic/{names('k')}"
    modern = stomp_connected("1.2")
    modern.subscribe(destination)
    old = raw_stomp()
    old.connect("1.0")
    old.send_frame("SUBSCRIBE", [("destination", destination), ("id", "s"), ("receipt", "s")])
    old.expect_frame("RECEIPT")
    old.send(
        b"SEND\ndestination:" + destination.encode()
        + b"\nx-path:a\\cb\nx-time:12:30\nreceipt:sent\n\nold\x00"
    )
    frames = [old.read_frame(), old.read_frame()]
    assert sorted(f.command for f in frames) == ["MESSAGE", "RECEIPT"], frames
    message = next(f for f in frames if f.command == "MESSAGE")
    assert message["x-path"] == "a\\cb"
    assert message["x-time"] == "12:30"
    seen = modern.expect_message()
    assert (seen.headers["x-path"], seen.headers["x-time"]) == ("a\\cb", "12:30")


def test_a_newline_in_a_header_value_is_dropped_for_a_1_0_subscriber(
    raw_stomp, stomp_connected, names
):
    """STOMP 1.0 cannot carry a newline in a header: a 1.2 sender's 'line1\\nline2' reaches a
    1.0 subscriber as 'line1line2' (the frame stays well formed)."""
    destination = f"/queue/{names('q')}"
    old = raw_stomp()
    old.connect("1.0")
    old.send_frame("SUBSCRIBE", [("destination", destination), ("id", "s"), ("receipt", "s")])
    old.expect_frame("RECEIPT")
    sender = stomp_connected("1.2")
    sender.conn.send(destination, "nl", headers={"x-newline": "line1\nline2", "receipt": "r"})
    sender.wait_receipt("r")
    message = old.expect_frame("MESSAGE")
    assert message["x-newline"] == "line1line2"
    assert message.body == b"nl"


def test_content_length_bodies_may_contain_nul_bytes(raw_stomp, names, channel):
    """With content-length a body is exactly that many bytes, NULs included: a raw SEND of
    b'a\\0b\\0\\0c' reaches a raw subscriber whole (its MESSAGE has content-length 6), and
    AMQP consumers get the same bytes."""
    queue = names("q")
    body = b"a\x00b\x00\x00c"
    subscriber = raw_stomp()
    subscriber.connect("1.2")
    subscriber.send_frame(
        "SUBSCRIBE", [("destination", f"/queue/{queue}"), ("id", "s"), ("receipt", "s")]
    )
    subscriber.expect_frame("RECEIPT")
    sender = raw_stomp()
    sender.connect("1.2")
    sender.send_frame(
        "SEND", [("destination", f"/queue/{queue}"), ("receipt", "r")], body, content_length=True
    )
    sender.expect_frame("RECEIPT")
    message = subscriber.expect_frame("MESSAGE")
    assert message.body == body
    assert message["content-length"] == "6"

    subscriber.send_frame("UNSUBSCRIBE", [("id", "s"), ("receipt", "u")])
    subscriber.expect_frame("RECEIPT")
    sender.send_frame(
        "SEND", [("destination", f"/queue/{queue}"), ("receipt", "r2")], body, content_length=True
    )
    sender.expect_frame("RECEIPT")
    method, _, fetched = channel.basic_get(queue, auto_ack=True)
    assert method is not None and fetched == body


def test_a_one_mebibyte_binary_body_round_trips(stomp, names):
    """1 MiB of every byte value (NULs included; stomp.py sends content-length) goes through a
    queue unchanged: the broker reads it across many socket reads and writes it back whole."""
    destination = f"/queue/{names('q')}"
    client = stomp("1.2", auto_decode=False)
    client.connect()
    client.subscribe(destination)
    body = bytes(range(256)) * 4096
    client.send(destination, body)
    message = client.expect_message()
    assert message.body == body
    assert message.headers["content-length"] == str(len(body))


def test_frames_may_use_crlf_line_endings(raw_stomp, names):
    """STOMP 1.2 allows CRLF at the end of the command and header lines (and after the NUL):
    such SUBSCRIBE and SEND frames work."""
    destination = f"/queue/{names('q')}".encode()
    client = raw_stomp()
    client.connect("1.2")
    client.send(
        b"SUBSCRIBE\r\ndestination:" + destination + b"\r\nid:s\r\nreceipt:r\r\n\r\n\x00\r\n"
    )
    assert client.expect_frame("RECEIPT")["receipt-id"] == "r"
    client.send(b"SEND\r\ndestination:" + destination + b"\r\n\r\ncrlf\x00\r\n")
    message = client.expect_frame("MESSAGE")
    assert (message["subscription"], message.body) == ("s", b"crlf")


# ---------------------------------------------------------------------------------------------
# Persistence.


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_persistent_send_to_a_queue_survives_a_restart_and_a_transient_one_does_not(
    start_broker, names, stop
):
    """persistent:true SENDs to a /queue/ (durable) are on disk when their RECEIPT comes: after
    SIGTERM, or SIGKILL right after the RECEIPT, and a restart on the same data directory the
    persistent message is delivered and the transient one is gone."""
    first = start_broker()
    queue = names("q")
    sender = StompClient(first.listeners["stomp"], "1.2")
    try:
        sender.connect()
        sender.send(f"/queue/{queue}", "transient")
        sender.send(f"/queue/{queue}", "persistent", persistent="true")
        if stop == "sigkill":
            first.process.kill()
            first.process.wait()
    finally:
        sender.close()
    first.stop()

    second = start_broker(data_dir=first.data_dir)
    receiver = StompClient(second.listeners["stomp"], "1.2")
    try:
        receiver.connect()
        receiver.subscribe(f"/queue/{queue}")
        message = receiver.expect_message()
        assert message.body == "persistent"
        assert message.headers["persistent"] == "true"
        receiver.expect_no_message(0.5)
    finally:
        receiver.close()


# ---------------------------------------------------------------------------------------------
# Headers as RabbitMQ's STOMP plugin sends them.


@pytest.mark.parametrize("accept_version", [None, "1.0", "1.1", "1.2"])
def test_connected_always_carries_heart_beat(raw_stomp, accept_version):
    """CONNECTED names the heart-beats for every version, STOMP 1.0 included, and when the
    client asked for none (RabbitMQ sends the header in every case; clients read it)."""
    client = raw_stomp()
    headers = [("login", "guest"), ("passcode", "guest"), ("heart-beat", "0,0")]
    if accept_version is not None:
        headers.insert(0, ("accept-version", accept_version))
    client.send_frame("CONNECT", headers)
    connected = client.expect_frame("CONNECTED")
    sends, wants = connected["heart-beat"].split(",")
    assert int(sends) >= 0 and int(wants) >= 0


def test_a_message_always_says_whether_it_was_redelivered(raw_stomp, names):
    """MESSAGE carries ``redelivered:false`` on a first delivery (RabbitMQ always sends the
    header), and ``redelivered:true`` once a NACK requeued it."""
    destination = f"/queue/{names('q')}"
    client = raw_stomp()
    client.connect("1.2")
    client.send_frame(
        "SUBSCRIBE",
        [("destination", destination), ("id", "s"), ("ack", "client-individual")],
        version="1.2",
    )
    client.send_frame("SEND", [("destination", destination)], b"once", version="1.2")
    first = client.expect_frame("MESSAGE")
    assert first["redelivered"] == "false"
    client.send_frame("NACK", [("id", first["ack"])], version="1.2")
    again = client.expect_frame("MESSAGE")
    assert (again["redelivered"], again.body) == ("true", b"once")


def test_an_exchange_destination_with_an_empty_key_comes_back_without_a_slash(
    raw_stomp, names, channel
):
    """A message published to exchange X with an empty routing key reaches a STOMP
    subscriber with ``destination:/exchange/X``, not ``/exchange/X/``."""
    exchange = names("x")
    channel.exchange_declare(exchange, "fanout", auto_delete=True)
    client = raw_stomp()
    client.connect("1.2")
    client.subscribe(f"/exchange/{exchange}")
    channel.basic_publish(exchange, "", b"fanned")
    message = client.expect_frame("MESSAGE")
    assert (message["destination"], message.body) == (f"/exchange/{exchange}", b"fanned")


def test_stray_nuls_and_eols_before_a_command_are_skipped(raw_stomp, names):
    """Bytes a sloppy client leaves between frames, NULs as well as EOLs, are skipped before
    the next command, as RabbitMQ does."""
    destination = f"/queue/{names('q')}".encode()
    client = raw_stomp()
    client.connect("1.2")
    client.send(b"\x00\n\x00SUBSCRIBE\ndestination:" + destination + b"\nid:s\nreceipt:r\n\n\x00")
    assert client.expect_frame("RECEIPT")["receipt-id"] == "r"
    client.send(b"\x00\x00\r\nSEND\ndestination:" + destination + b"\n\nnul-led\x00")
    assert client.expect_frame("MESSAGE").body == b"nul-led"


def test_persistent_true_in_any_case_makes_a_persistent_message(stomp_connected, names, channel):
    """stomp.py passes Python booleans as ``True``/``False``; RabbitMQ reads them, and so does
    Junction: ``persistent:True`` makes a persistent message (``requeue:False`` is pinned with
    NACK above)."""
    queue = names("q")
    channel.queue_declare(queue)
    client = stomp_connected("1.2")
    client.send(f"/amq/queue/{queue}", "kept", persistent="True")
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert (body, properties.delivery_mode) == (b"kept", 2)


def test_the_receipt_of_a_send_in_a_transaction_comes_at_commit(raw_stomp, names):
    """A SEND inside a transaction is not applied before COMMIT, and neither is its receipt
    sent before then (as RabbitMQ answers it): at COMMIT the SEND's receipt comes first, then
    the COMMIT's."""
    destination = f"/queue/{names('q')}"
    client = raw_stomp()
    client.connect("1.2")
    client.send_frame("BEGIN", [("transaction", "t")], version="1.2")
    client.send_frame(
        "SEND",
        [("destination", destination), ("transaction", "t"), ("receipt", "sent")],
        b"in t",
        version="1.2",
    )
    client.send_frame("SUBSCRIBE", [("destination", destination), ("id", "s"), ("receipt", "subscribed")], version="1.2")
    assert client.expect_frame("RECEIPT")["receipt-id"] == "subscribed", (
        "the SEND's receipt came before COMMIT"
    )
    client.send_frame("COMMIT", [("transaction", "t"), ("receipt", "committed")], version="1.2")
    frames = [client.read_frame() for _ in range(3)]
    receipts = [frame["receipt-id"] for frame in frames if frame.command == "RECEIPT"]
    assert receipts == ["sent", "committed"]
    assert [frame.body for frame in frames if frame.command == "MESSAGE"] == [b"in t"]
