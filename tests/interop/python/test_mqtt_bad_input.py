"""Malformed and forbidden MQTT input on raw TCP sockets.

MQTT 3.1.1 has no error packet: the answer to a protocol violation is to close that one
connection [MQTT-4.8.0-1]. Every test here sends hand-built bytes (after a valid CONNECT, or
instead of it) and checks three things: the broker closes that connection (end of stream or a
reset within a deadline) without answering it, the broker process is still running, and a
paho subscriber/publisher pair that connected before the bad input still exchanges a message
afterwards. A SUBSCRIBE with one invalid filter is not a violation: that filter gets the
failure code 0x80 and the connection stays open.
"""

from __future__ import annotations

import random
import socket
import struct
import uuid
from pathlib import Path

import pytest

from mqtt_raw import (
    connect_packet,
    connected_publisher,
    packet,
    publish_packet,
    remaining_length,
    split_packets,
    string,
    subscribe_packet,
    subscriber_on,
)

PID = b"\x00\x07"  # packet identifier 7
SERVER_PACKET_TYPES = {2, 3, 4, 5, 6, 7, 9, 11, 13}


@pytest.fixture
def bystanders(broker, mqtt, names):
    """Connects a paho subscriber and publisher (to the shared broker, or ``target``) and
    returns a check that the broker is running and the pair still exchanges a message."""

    def connect_pair(target=None):
        chosen = target or broker
        topic = names("bystander").replace("-", "/")
        subscriber = subscriber_on(mqtt, names, (topic, 1), target=chosen)
        publisher = connected_publisher(mqtt, names, target=chosen)

        def still_fine() -> None:
            assert chosen.running, "the broker process died"
            payload = uuid.uuid4().bytes
            publisher.publish(topic, payload, qos=1)
            assert subscriber.expect_message().payload == payload
            assert not subscriber.disconnected.is_set() and not publisher.disconnected.is_set()

        return still_fine

    return connect_pair


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "junction-test.toml"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Violations after a valid CONNECT.

AFTER_CONNECT = {
    "second CONNECT": connect_packet("again"),
    "PUBREL with flags 0": packet(0x60, PID),
    "SUBSCRIBE with flags 0": packet(0x80, PID + string("a/b") + b"\x00"),
    "UNSUBSCRIBE with flags 0": packet(0xA0, PID + string("a/b")),
    "PINGREQ with flags 1": b"\xc1\x00",
    "PUBACK with flags 2": packet(0x42, PID),
    "DISCONNECT with flags 1": b"\xe1\x00",
    "PUBLISH with QoS 3": packet(0x36, string("a/b") + PID + b"x"),
    "PUBLISH QoS 0 with DUP": packet(0x38, string("a/b") + b"x"),
    "PUBLISH topic invalid UTF-8": publish_packet(b"a/\xff\xfe"),
    "PUBLISH topic UTF-16 surrogate": publish_packet(b"a/\xed\xa0\x80"),
    "PUBLISH topic with U+0000": publish_packet(b"a/\x00/b"),
    "PUBLISH topic with +": publish_packet("a/+/b"),
    "PUBLISH topic with #": publish_packet("a/#"),
    "PUBLISH topic empty": publish_packet(""),
    "PUBLISH QoS 1 packet id 0": publish_packet("a/b", qos=1, packet_id=0),
    "PUBLISH shorter than its topic": packet(0x30, b"\x00\x10abc"),
    "remaining length of 5 bytes": b"\x30\xff\xff\xff\xff\x01" + b"\x00" * 16,
    "packet type 0": b"\x00\x00",
    "packet type 15": b"\xf0\x00",
    "CONNACK from a client": b"\x20\x02\x00\x00",
    "SUBACK from a client": packet(0x90, PID + b"\x00"),
    "UNSUBACK from a client": packet(0xB0, PID),
    "PINGRESP from a client": b"\xd0\x00",
    "SUBSCRIBE without filters": packet(0x82, PID),
    "SUBSCRIBE with QoS 3": packet(0x82, PID + string("a/b") + b"\x03"),
    "SUBSCRIBE with reserved option bits": packet(0x82, PID + string("a/b") + b"\x04"),
    "SUBSCRIBE truncated inside a filter": packet(0x82, PID + b"\x00\x09a/"),
    "SUBSCRIBE without its QoS byte": packet(0x82, PID + string("a/b")),
    "UNSUBSCRIBE without filters": packet(0xA2, PID),
    "PUBACK with trailing bytes": packet(0x40, PID + b"\x00"),
    "PUBACK truncated": packet(0x40, b"\x00"),
    "PINGREQ with a body": packet(0xC0, b"\x00"),
}


@pytest.mark.parametrize("bad", list(AFTER_CONNECT.values()), ids=list(AFTER_CONNECT))
def test_a_protocol_violation_after_connect_closes_only_that_connection(
    broker, raw, bystanders, names, bad
):
    """Each of these packets breaks MQTT 3.1.1 (a second CONNECT, reserved flags, invalid
    UTF-8 or wildcards in a topic name, a five-byte remaining length, reserved packet types,
    server-only packets, malformed bodies): the broker closes the connection without
    answering, and nothing else is affected."""
    still_fine = bystanders()
    client = raw()
    client.connect(names("bad"))
    client.send(bad)
    assert client.wait_closed() == b""
    still_fine()


# ---------------------------------------------------------------------------------------------
# Violations as the first packet.

FIRST_PACKET = {
    "PUBLISH": publish_packet("a/b"),
    "SUBSCRIBE": packet(0x82, PID + string("a/b") + b"\x00"),
    "PINGREQ": b"\xc0\x00",
    "DISCONNECT": b"\xe0\x00",
    "HTTP request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "packet type 0": b"\x00\x00",
    "packet type 15": b"\xf0\x00",
    "CONNECT unknown protocol name": connect_packet("c", protocol_name=b"HTTP"),
    "CONNECT reserved flag set": connect_packet("c", extra_flags=0x01),
    "CONNECT password without user name": connect_packet("c", username=None, password="x"),
    "CONNECT will QoS 3": connect_packet("c", will=("w", b"m", 3, False)),
    "CONNECT will retain without will": connect_packet("c", extra_flags=0x20),
    "CONNECT will topic with #": connect_packet("c", will=("w/#", b"m", 0, False)),
    "CONNECT client id invalid UTF-8": connect_packet(b"\xc3\x28"),
    "CONNECT truncated": packet(0x10, string("MQTT") + b"\x04\xc2\x00"),
    "CONNECT over 64 KiB (header only)": b"\x10" + remaining_length(70_000),
}


@pytest.mark.parametrize("bad", list(FIRST_PACKET.values()), ids=list(FIRST_PACKET))
def test_a_bad_first_packet_closes_the_connection_without_connack(broker, raw, bystanders, bad):
    """The first packet must be a well-formed CONNECT [MQTT-3.1.0-1]: anything else (another
    packet type, an HTTP request, a CONNECT with reserved or inconsistent flags, a will topic
    with a wildcard, an unknown protocol name, one larger than the 64 KiB allowed before
    authentication) is closed without a CONNACK, and nothing else is affected."""
    still_fine = bystanders()
    client = raw()
    client.send(bad)
    assert client.wait_closed() == b""
    still_fine()


def test_a_connect_split_across_writes_is_reassembled(raw):
    """The control for the tests above: a valid CONNECT that arrives a few bytes at a time is
    waited for, not treated as truncated, and accepted."""
    client = raw()
    data = connect_packet(f"slow-{uuid.uuid4().hex[:8]}")
    for at in range(0, len(data), 5):
        client.send(data[at : at + 5])
    assert client.read_packet() == (0x20, b"\x00\x00")


# ---------------------------------------------------------------------------------------------
# The size limit.


def test_a_packet_larger_than_max_packet_size_closes_the_connection(
    start_broker, tmp_path, raw, bystanders, names
):
    """With ``[mqtt] max_packet_size = 1024`` a 2 KiB PUBLISH closes the connection; so does
    a header that merely declares such a packet (refused before the body is read). The limit
    counts the whole packet: exactly 1024 bytes is accepted, 1025 is not."""
    private = start_broker(
        extra_args=["--config", write_config(tmp_path, "[mqtt]\nmax_packet_size = 1024\n")]
    )
    still_fine = bystanders(private)

    def topic_packet(size: int, qos: int = 0) -> bytes:
        """A PUBLISH of exactly ``size`` bytes in all."""
        topic = names("big").replace("-", "/")
        overhead = len(publish_packet(topic, b"", qos=qos))
        data = publish_packet(topic, b"p" * (size - overhead - 1), qos=qos)  # 2-byte length
        assert len(data) == size
        return data

    too_big = raw(private)
    too_big.connect(names("big"))
    too_big.send(topic_packet(2048))
    assert too_big.wait_closed() == b""

    header_only = raw(private)
    header_only.connect(names("header"))
    header_only.send(b"\x30" + remaining_length(2045))
    assert header_only.wait_closed() == b""

    at_limit = raw(private)
    at_limit.connect(names("limit"))
    at_limit.send(topic_packet(1024, qos=1))
    assert at_limit.read_packet() == (0x40, struct.pack("!H", 1))  # PUBACK
    at_limit.send(topic_packet(1025, qos=1))
    assert at_limit.wait_closed() == b""

    still_fine()


# ---------------------------------------------------------------------------------------------
# Garbage.


def test_truncated_garbage_then_end_of_stream_closes_cleanly(broker, raw, bystanders, names):
    """Half a packet followed by the client closing its side: the broker waits for the rest,
    sees the end of the stream, and closes its side too; nothing else is affected."""
    still_fine = bystanders()
    client = raw()
    client.connect(names("half"))
    client.send(publish_packet(names("t").replace("-", "/"), b"payload " * 20)[:37])
    client.sock.shutdown(socket.SHUT_WR)
    assert client.wait_closed() == b""
    still_fine()


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4)
        at = rng.randrange(len(data))
        if kind == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at] = rng.randrange(256)
        elif kind == 2:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            del data[at:]
            if not data:
                data = bytearray(rng.randbytes(1))
    return bytes(data)


def _fuzz_inputs(seed: int, count: int) -> list[tuple[bool, bytes]]:
    """(after a valid CONNECT?, bytes): pure random bytes, mutated CONNECTs, and mutated
    packets of a connected client."""
    rng = random.Random(seed)
    connected_templates = [
        publish_packet("fuzz/a", b"hello"),
        publish_packet("fuzz/b", b"hello", qos=1),
        publish_packet("fuzz/c", b"hello", qos=2),
        packet(0x82, PID + string("fuzz/+") + b"\x01"),
        packet(0xA2, PID + string("fuzz/+")),
        packet(0x40, PID),
        packet(0x50, PID),
        packet(0x62, PID),
        packet(0x70, PID),
        b"\xc0\x00",
    ]
    inputs = []
    for n in range(count):
        kind = n % 3
        if kind == 0:
            inputs.append((False, rng.randbytes(rng.randint(1, 64))))
        elif kind == 1:
            inputs.append((False, _mutate(rng, connect_packet(f"fuzz-{n}"))))
        else:
            inputs.append((True, _mutate(rng, rng.choice(connected_templates))))
    return inputs


def test_seeded_random_input_never_harms_the_broker(start_broker, raw, bystanders, names):
    """100 seeded inputs (random bytes, mutated CONNECTs, mutated packets after CONNECT), each
    on its own connection, followed by the client closing its side: every connection is
    closed within the deadline, whatever the broker sent before is a well-formed stream of
    server packets, and afterwards the broker runs and still routes. A private broker, so
    retained messages and wills that the fuzz may create stay out of the shared one."""
    private = start_broker()
    still_fine = bystanders(private)
    for index, (after_connect, data) in enumerate(_fuzz_inputs(seed=20240531, count=100)):
        client = raw(private)
        if after_connect:
            client.connect(names(f"fuzz{index}"))
        client.send(data)
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already reset by the broker
        try:
            sent = client.wait_closed()
        except AssertionError as error:
            raise AssertionError(f"input {index} ({data.hex()}): {error}") from None
        for first, _ in split_packets(sent):
            assert first >> 4 in SERVER_PACKET_TYPES, f"input {index}: sent {sent!r}"
        client.close()
    still_fine()


# ---------------------------------------------------------------------------------------------
# An invalid filter is not a protocol violation.


@pytest.mark.parametrize("invalid", ["a/#/b", "a/b#", "sport+", "+a/b", "#/a"])
def test_an_invalid_filter_gets_suback_0x80_and_the_others_are_granted(
    raw, mqtt, names, invalid
):
    """A SUBSCRIBE with an invalid filter among valid ones: that filter's SUBACK code is 0x80
    (failure), the others are granted their QoS, and the connection stays open with the valid
    subscriptions working. (paho refuses to send an invalid filter, so the subscriber is a
    raw socket; the publisher is paho, at QoS 0 so the deliveries are plain PUBLISH packets.)"""
    first = names("one").replace("-", "/")
    second = names("two").replace("-", "/")
    client = raw()
    client.connect(names("c"))
    client.send(subscribe_packet(7, (first, 1), (invalid, 0), (second, 2)))
    assert client.read_packet() == (0x90, PID + b"\x01\x80\x02")

    publisher = connected_publisher(mqtt, names)
    publisher.publish(first, b"to the first")
    publisher.publish(second, b"to the second")
    received = sorted(client.read_packet() for _ in range(2))
    assert received == sorted(
        [(0x30, string(first) + b"to the first"), (0x30, string(second) + b"to the second")]
    )
    client.send(b"\xc0\x00")  # PINGREQ: the connection is still open
    assert client.read_packet() == (0xD0, b"")
