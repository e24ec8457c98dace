"""STOMP refusals: every error is an ERROR frame with a ``message`` header and a readable
body, in the words of RabbitMQ's STOMP plugin (its own test suite and tools match on them),
after which the broker closes that connection, and nothing else.

Pinned here: bad credentials, a destination of no known kind, an unknown command, a frame over
the configured size limits, frames missing a required header, a frame before CONNECT,
malformed frames (a header line without a colon, a bad content-length, an escape sequence the
version does not define), and a seeded fuzz of random and mutated frames. After each, the
broker is still running and a stomp.py client that connected beforehand still sends and
receives.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from stomp_clients import GUEST, RawStomp, StompClient, frame_bytes


@pytest.fixture
def bystander(stomp_connected, names):
    """A stomp.py client connected before the test misbehaves; the test ends by proving it
    still works (and so the broker survived)."""
    client = stomp_connected("1.2")
    yield client
    client.round_trip(names)


def refused(client: RawStomp, message: str) -> bytes:
    """The ERROR the client must get (its message header containing ``message``), then the
    close; returns the ERROR's body."""
    error = client.expect_error_and_close()
    assert message in error["message"], error
    return error.body


def connected_raw(raw_stomp, version: str = "1.2") -> RawStomp:
    client = raw_stomp()
    client.connect(version)
    return client


# ---------------------------------------------------------------------------------------------
# Refusals, one kind at a time.


@pytest.mark.parametrize(
    "login, passcode", [("guest", "nope"), ("ghost", "guest")], ids=["passcode", "user"]
)
def test_bad_credentials_are_an_error_that_closes_the_connection(
    raw_stomp, bystander, login, passcode
):
    """CONNECT with a wrong passcode or an unknown user: ERROR 'Bad CONNECT', "Access refused
    for user '<login>'" (the same either way, as in RabbitMQ); no CONNECTED."""
    client = raw_stomp()
    client.send_frame(
        "CONNECT", [("accept-version", "1.2"), ("login", login), ("passcode", passcode)]
    )
    body = refused(client, "Bad CONNECT")
    assert body == f"Access refused for user '{login}'\n".encode()


def test_an_invalid_heart_beat_header_is_a_bad_connect(raw_stomp, bystander):
    """CONNECT with heart-beat:abc is refused: ERROR 'Bad CONNECT' saying so."""
    client = raw_stomp()
    client.send_frame("CONNECT", [("accept-version", "1.2"), *GUEST, ("heart-beat", "abc")])
    assert b"heart-beat" in refused(client, "Bad CONNECT")


@pytest.mark.parametrize("command", ["SEND", "SUBSCRIBE"])
def test_a_destination_of_no_known_kind_is_an_error(raw_stomp, bystander, names, command):
    """/nowhere/x is none of /queue/, /topic/, /exchange/, /amq/queue/, /temp-queue/,
    /reply-queue/: ERROR 'Unknown destination' naming it and the kinds there are. The ERROR
    carries the frame's receipt as receipt-id."""
    client = connected_raw(raw_stomp)
    client.send_frame(
        command, [("destination", "/nowhere/x"), ("id", "s1"), ("receipt", "failing")], b"x"
    )
    error = client.expect_error_and_close()
    assert error["message"] == "Unknown destination"
    assert error["receipt-id"] == "failing"
    assert error.body == (
        b"'/nowhere/x' is not a valid destination.\n"
        b"Valid destination types are: /temp-queue, /exchange, /topic, /queue, /amq/queue,"
        b" /reply-queue/.\n"
    )


def test_sending_to_a_missing_exchange_is_an_error(raw_stomp, bystander, names):
    """SEND /exchange/X/k for an exchange that does not exist: ERROR not_found."""
    client = connected_raw(raw_stomp)
    missing = names("exchange")
    client.send_frame("SEND", [("destination", f"/exchange/{missing}/k")], b"x")
    assert missing.encode() in refused(client, "not_found")


def test_an_unknown_command_is_an_error(raw_stomp, bystander):
    """A command STOMP does not define, after CONNECT: ERROR 'Bad command' naming it."""
    client = connected_raw(raw_stomp)
    client.send_frame("PUBLISH", [("destination", "/queue/x")], b"x")
    assert refused(client, "Bad command") == b'Could not interpret command "PUBLISH"\n'


def test_a_frame_before_connect_is_an_error(raw_stomp, bystander, names):
    """A SEND as the first frame: ERROR 'Illegal command' (log in with CONNECT first)."""
    client = raw_stomp()
    client.send_frame("SEND", [("destination", f"/queue/{names('q')}")], b"too early")
    assert refused(client, "Illegal command") == b"You must log in using CONNECT first"


@pytest.mark.parametrize(
    "version, command, headers, message, body",
    [
        ("1.2", "SEND", [], "Missing destination",
         "\"SEND\" must include a 'destination' header\n"),
        ("1.2", "SUBSCRIBE", [("id", "s1")], "Missing destination",
         "\"SUBSCRIBE\" must include a 'destination' header\n"),
        ("1.2", "UNSUBSCRIBE", [], "Missing destination or id",
         "UNSUBSCRIBE must include a 'destination' or 'id' header"),
        ("1.2", "BEGIN", [], "Missing transaction",
         "\"BEGIN\" must include a 'transaction' header\n"),
        ("1.2", "COMMIT", [], "Missing transaction",
         "\"COMMIT\" must include a 'transaction' header\n"),
        ("1.2", "ABORT", [], "Missing transaction",
         "\"ABORT\" must include a 'transaction' header\n"),
        ("1.2", "ACK", [], "Missing header", "\"ACK\" must include the \"id\" header\n"),
        ("1.1", "NACK", [], "Missing header",
         "\"NACK\" must include the \"message-id\" header\n"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)  # fmt: skip
def test_a_frame_missing_a_required_header_is_an_error(
    raw_stomp, bystander, version, command, headers, message, body
):
    """SEND or SUBSCRIBE without destination, UNSUBSCRIBE without id or destination,
    BEGIN/COMMIT/ABORT without transaction, ACK/NACK without the id their version uses: an
    ERROR naming what is missing."""
    client = connected_raw(raw_stomp, version)
    client.send_frame(command, headers, b"", version=version)
    assert refused(client, message) == body.encode()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_a_subscription_without_an_id_is_named_by_its_destination(
    raw_stomp, bystander, names, version
):
    """As RabbitMQ allows it in every version: SUBSCRIBE without an id is a subscription
    named by its destination (its MESSAGEs carry no subscription header, and a message-id
    made from it), which UNSUBSCRIBE names too; ACK takes that message-id."""
    queue = f"/queue/{names('q')}"
    client = connected_raw(raw_stomp, version)
    client.send_frame(
        "SUBSCRIBE", [("destination", queue), ("ack", "client")], version=version
    )
    client.send_frame("SEND", [("destination", queue)], b"hello", version=version)
    message = client.expect_frame("MESSAGE")
    assert message.get("subscription") is None
    assert message["message-id"].startswith(f"Q_{queue}@@session-")
    named = message["ack"] if version == "1.2" else message["message-id"]
    header = "id" if version == "1.2" else "message-id"
    client.send_frame("ACK", [(header, named), ("receipt", "a")], version=version)
    assert client.expect_frame("RECEIPT")["receipt-id"] == "a"
    client.send_frame("UNSUBSCRIBE", [("destination", queue), ("receipt", "r")], version=version)
    assert client.expect_frame("RECEIPT")["receipt-id"] == "r"


@pytest.mark.parametrize(
    "frames, message",
    [
        ([("COMMIT", [("transaction", "never-begun")])], "Bad transaction"),
        ([("SEND", [("destination", "/queue/q"), ("transaction", "never-begun")])],
         "Bad transaction"),
        ([("BEGIN", [("transaction", "t")]), ("BEGIN", [("transaction", "t")])],
         "Invalid transaction"),
        ([("SUBSCRIBE", [("destination", "/topic/t"), ("id", "s"), ("ack", "sometimes")])],
         "Invalid ack mode"),
        ([("SUBSCRIBE", [("destination", "/topic/t"), ("id", "s"), ("prefetch-count", "many")])],
         "Invalid prefetch-count"),
        ([("SUBSCRIBE", [("destination", "/topic/t"), ("id", "s")]),
          ("SUBSCRIBE", [("destination", "/topic/t"), ("id", "s")])],
         "Duplicated subscription identifier"),
        ([("UNSUBSCRIBE", [("id", "never-subscribed")])], "No subscription found"),
        ([("SEND", [("destination", "/temp-queue/t")])], "Invalid destination"),
        ([("SUBSCRIBE", [("destination", "/reply-queue/r"), ("id", "s")])], "Invalid destination"),
    ],
    ids=[
        "commit-unknown-tx",
        "send-in-unknown-tx",
        "begin-twice",
        "bad-ack-mode",
        "bad-prefetch",
        "duplicate-subscription",
        "unsubscribe-unknown",
        "send-to-temp-queue",
        "subscribe-reply-queue",
    ],
)
def test_frames_that_make_no_sense_in_the_session_are_errors(
    raw_stomp, bystander, frames, message
):
    """Transactions that were never begun or begun twice, an ack mode or prefetch-count that
    is no such thing, a subscription id used twice or never, sending to /temp-queue/ or
    subscribing to /reply-queue/: each an ERROR naming the problem."""
    client = connected_raw(raw_stomp)
    for command, headers in frames:
        client.send_frame(command, headers, b"", version="1.2")
    refused(client, message)


@pytest.mark.parametrize(
    "data",
    [
        b"SEND\ndestination:/queue/q\nno colon here\n\nx\x00",
        b"SEND\ndestination:/queue/q\ncontent-length:lots\n\nx\x00",
        b"SEND\ndestination:/queue/q\ncontent-length:1\n\nxyz\x00",
        b"SEND\ndestination:/queue/q\nx-bad:tab\\there\n\nx\x00",
        b"SEND\ndestination:/queue/q\nx-bad:\xff\xfe\n\nx\x00",
    ],
    ids=["no-colon", "content-length-nan", "no-nul-after-body", "bad-escape", "not-utf8"],
)
def test_malformed_frames_are_errors(raw_stomp, bystander, data):
    """A header line without ':', a content-length that is no number or is followed by more
    than the NUL, an escape sequence 1.2 does not define, header bytes that are not UTF-8:
    ERROR 'Malformed frame'."""
    client = connected_raw(raw_stomp)
    client.send(data)
    refused(client, "Malformed frame")


SMALL_FRAMES = "[stomp]\nmax_body_size = 1024\nmax_header_size = 1024\nmax_headers = 16\n"


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "junction-stomp.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "frame",
    [
        frame_bytes("SEND", [("destination", "/queue/big")], b"x" * 2048, content_length=True),
        frame_bytes("SEND", [("destination", "/queue/big")], b"x" * 2048),
        frame_bytes("SEND", [("destination", "/queue/big"), ("x-big", "y" * 2048)], b"x"),
        frame_bytes("SEND", [("destination", "/queue/big")] + [(f"h{i}", "v") for i in range(20)], b"x"),
    ],
    ids=["body-with-content-length", "body-without-content-length", "headers", "header-count"],
)
def test_a_frame_over_the_size_limit_is_an_error(start_broker, tmp_path, names, frame):
    """With max_body_size and max_header_size 1024 and max_headers 16, a 2 KiB body (announced
    or not), a 2 KiB header block or 21 headers are refused with ERROR 'Frame too large'; the
    broker goes on serving others, and a 1000-byte body is fine."""
    private = start_broker(extra_args=["--config", write_config(tmp_path, SMALL_FRAMES)])
    bystander = StompClient(private.listeners["stomp"], "1.2")
    client = RawStomp(private.listeners["stomp"])
    try:
        bystander.connect()
        client.connect("1.2")
        client.send(frame)
        refused(client, "Frame too large")
        destination = f"/queue/{names('q')}"
        bystander.subscribe(destination)
        bystander.send(destination, "y" * 1000)
        assert bystander.expect_message().body == "y" * 1000
    finally:
        client.close()
        bystander.close()


# ---------------------------------------------------------------------------------------------
# Fuzz.


def valid_frames(destination: str) -> list[bytes]:
    """Frames a 1.2 session would accept, for the fuzzer to mutate."""
    return [
        frame_bytes("SEND", [("destination", destination), ("receipt", "r")], b"body"),
        frame_bytes("SEND", [("destination", destination)], b"a\x00b", content_length=True),
        frame_bytes("SUBSCRIBE", [("destination", destination), ("id", "s"), ("ack", "client")]),
        frame_bytes("UNSUBSCRIBE", [("id", "s")]),
        frame_bytes("BEGIN", [("transaction", "t")]),
        frame_bytes("ACK", [("id", "1"), ("transaction", "t")]),
        frame_bytes("NACK", [("id", "1")]),
        frame_bytes("COMMIT", [("transaction", "t")]),
        frame_bytes("ABORT", [("transaction", "t")]),
        frame_bytes("DISCONNECT", [("receipt", "bye")]),
        b"\n\r\n",
    ]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random change: flipped, inserted, deleted or duplicated bytes, a truncation, or a
    special byte (NUL, ':', '\\\\', newline) somewhere."""
    data = bytearray(data)
    choice = rng.randrange(6)
    at = rng.randrange(len(data) + 1)
    if choice == 0 and data:
        data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
    elif choice == 1:
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    elif choice == 2:
        del data[at : at + rng.randrange(1, 8)]
    elif choice == 3:
        data[at:at] = data[: rng.randrange(1, len(data) + 1)]
    elif choice == 4:
        data = data[:at]
    else:
        data[at:at] = rng.choice([b"\x00", b":", b"\\", b"\n", b"\r\n", b"\\c"])
    return bytes(data)


def fuzz_case(rng: random.Random, destination: str) -> tuple[bool, bytes]:
    """(CONNECT first?, the bytes to send)."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.random() < 0.5, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    frames = valid_frames(destination)
    if kind == 1:
        connect = frame_bytes("CONNECT", [("accept-version", "1.0,1.1,1.2"), *GUEST])
        return False, mutate(rng, connect) + mutate(rng, rng.choice(frames))
    picked = b"".join(rng.choice(frames) for _ in range(rng.randrange(1, 5)))
    for _ in range(rng.randrange(1, 4)):
        picked = mutate(rng, picked)
    return True, picked


def test_random_and_mutated_frames_never_kill_the_broker(broker, bystander, names):
    """100 connections (seed 20240229) each send random bytes or mutated frames, before or
    after a valid CONNECT, then half-close; whatever the broker answers, it keeps running and
    the bystander keeps working."""
    rng = random.Random(20240229)
    destination = f"/queue/{names('fuzz')}"
    for case in range(100):
        connect_first, data = fuzz_case(rng, destination)
        client = RawStomp(broker.listeners["stomp"])
        try:
            if connect_first:
                client.connect(rng.choice(["1.0", "1.1", "1.2"]))
            client.send(data)
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the broker closed it already
            client.wait_closed(timeout=5)
        except AssertionError as failure:
            raise AssertionError(f"fuzz case {case}: {data!r}: {failure}") from None
        finally:
            client.close()
        assert broker.running, f"the broker died on fuzz case {case}: {data!r}"


# ---------------------------------------------------------------------------------------------
# What RabbitMQ's STOMP plugin refuses, refused alike.


@pytest.mark.parametrize(
    "destination",
    ["/queue/a/b", "/topic/a/b", "/amq/queue/a/b", "/exchange/amq.topic/a/b", "/queue/"],
)
def test_a_name_with_a_slash_or_no_name_is_an_invalid_destination(
    raw_stomp, bystander, destination
):
    """A name is one path segment (a '/' in it must be percent-encoded) and never empty:
    SUBSCRIBE to such a destination is ERROR 'Invalid destination', quoting what follows the
    kind's prefix as RabbitMQ does."""
    client = connected_raw(raw_stomp)
    client.send_frame("SUBSCRIBE", [("destination", destination), ("id", "s")], version="1.2")
    body = refused(client, "Invalid destination")
    assert body.endswith(b" destination\n") and b"' is not a valid " in body


def test_a_send_naming_its_own_message_id_is_refused(raw_stomp, bystander, names):
    """The broker names messages: a SEND carrying message-id is ERROR 'Invalid header'."""
    client = connected_raw(raw_stomp)
    client.send_frame(
        "SEND",
        [("destination", f"/queue/{names('q')}"), ("message-id", "mine")],
        b"x",
        version="1.2",
    )
    refused(client, "Invalid header")


def test_a_stomp_1_2_ack_needs_id_even_with_a_message_id(raw_stomp, bystander):
    """STOMP 1.2 names the message to ACK by ``id``; one with only message-id is ERROR
    'Missing header'."""
    client = connected_raw(raw_stomp)
    client.send_frame("ACK", [("message-id", "1")], version="1.2")
    assert b"id" in refused(client, "Missing header")


@pytest.mark.parametrize("version", ["1.0", "1.2"])
def test_a_durable_subscription_needs_an_id(raw_stomp, bystander, names, version):
    """The durable queue is named after the subscription, so ``durable:true`` without an
    ``id`` is ERROR 'Missing Header' (RabbitMQ's capital H), in STOMP 1.0 too."""
    client = connected_raw(raw_stomp, version)
    client.send_frame(
        "SUBSCRIBE",
        [("destination", f"/topic/{names('t')}"), ("durable", "true")],
        version=version,
    )
    assert refused(client, "Missing Header") == b"Header 'id' is required for durable subscriptions"
