"""Authorization: a logged-in user reaching what its permissions deny (issue 13, defects 13 to
17), and a user name that forges a log line (defect 19). The users come from
``conftest.ADVERSARIAL_CONFIG``: alice may do everything, mallory nothing (``^$``), reader only
read, carol write only ``carol-*``, writer configure nothing. RabbitMQ's semantics are the
reference: a refusal is AMQP 403 ACCESS_REFUSED, a STOMP ERROR frame, an MQTT CONNACK refusal
or, for a session the user may not touch, nothing delivered and nothing deleted.
"""

from __future__ import annotations

import struct
import time

import pytest

from amqp_raw import (
    BASIC_ACK,
    CONFIRM_SELECT_OK,
    EXCHANGE_DECLARE_OK,
    QUEUE_BIND_OK,
    QUEUE_DECLARE_OK,
    Closed,
    RawAmqp,
    table,
)
from mqtt_raw import PUBACK, PUBLISH, RawClient, connect_packet, publish_packet
from outcomes import amqp_outcome, mqtt_reply
from stomp_clients import RawStomp

ALICE = {"username": "alice", "password": "alice-secret"}
MALLORY = {"username": "mallory", "password": "mallory-secret"}
#: Seconds a client that must receive nothing is watched.
NOTHING_WITHIN = 2.0
DISCONNECT = b"\xe0\x00"


def mqtt_client(arena, client_id: str, **options) -> RawClient:
    client = RawClient(arena.listeners["mqtt"])
    client.connect(client_id, **options)
    return client


def publish_acknowledged(arena, topic: str, payload: bytes) -> None:
    """alice publishes ``payload`` at QoS 1 from a connection of her own and waits for the
    PUBACK."""
    sender = mqtt_client(arena, "alice-sender", **ALICE)
    sender.send(publish_packet(topic, payload, qos=1, packet_id=7))
    assert sender.expect_ack(PUBACK) == 7
    sender.send(DISCONNECT)
    sender.close()


def publishes_received(client: RawClient, within: float, until: bytes | None = None) -> list[bytes]:
    """Payloads of the PUBLISH packets ``client`` receives within ``within`` seconds (until
    the broker closes the connection, if it does, or payload ``until`` arrives)."""
    payloads: list[bytes] = []
    deadline = time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            first, body = client.read_packet(timeout=remaining)
        except AssertionError:
            break
        if first >> 4 == PUBLISH:
            size = struct.unpack("!H", body[:2])[0]
            rest = body[2 + size :]
            payloads.append(rest[2:] if (first >> 1) & 3 else rest)
            if payloads[-1] == until:
                break
    return payloads


def test_mqtt_session_of_another_user_is_not_resumed(arena):
    """mallory (``^$``) connects with clean_session=0 and alice's client id: she must get
    neither alice's queued message nor a live one (the session's queue is alice's)."""
    arena.start()
    alice = mqtt_client(arena, "alice-phone", clean_session=False, **ALICE)
    alice.subscribe("alice/inbox", 1)
    alice.send(DISCONNECT)
    alice.close()
    publish_acknowledged(arena, "alice/inbox", b"queued secret")
    with arena.attack():
        thief = RawClient(arena.listeners["mqtt"])
        thief.send(connect_packet("alice-phone", clean_session=False, **MALLORY))
        connack = mqtt_reply(thief)
        stolen = []
        if connack.startswith("CONNACK") and connack.endswith("00"):
            publish_acknowledged(arena, "alice/inbox", b"live secret")
            stolen = publishes_received(thief, NOTHING_WITHIN)
        thief.close()
    arena.assert_survived()
    assert not stolen, f"mallory resumed alice's session ({connack}) and received {stolen}"


def test_mqtt_clean_session_takeover_keeps_another_users_session(arena):
    """mallory connects with clean_session=1 and alice's client id: alice's persistent
    session (its queue and what it holds) must survive, as mallory may configure nothing."""
    arena.start()
    alice = mqtt_client(arena, "alice-tablet", clean_session=False, **ALICE)
    alice.subscribe("alice/notes", 1)
    alice.send(DISCONNECT)
    alice.close()
    with arena.attack():
        thief = RawClient(arena.listeners["mqtt"])
        thief.send(connect_packet("alice-tablet", clean_session=True, **MALLORY))
        connack = mqtt_reply(thief)
        thief.send(DISCONNECT)
        thief.close()
    publish_acknowledged(arena, "alice/notes", b"kept")
    back = RawClient(arena.listeners["mqtt"])
    back.send(connect_packet("alice-tablet", clean_session=False, **ALICE))
    resumed = mqtt_reply(back)
    kept = publishes_received(back, 5.0, until=b"kept") if resumed == "CONNACK 0100" else []
    back.close()
    arena.assert_survived()
    assert (resumed, kept[-1:]) == ("CONNACK 0100", [b"kept"]), (
        f"after mallory's clean CONNECT ({connack}) alice's session came back as {resumed} "
        f"with {kept}"
    )


def stomp_reply(client: RawStomp, receipt: str) -> str:
    """``"RECEIPT"`` or ``"ERROR <message>"`` for the frame that answers ``receipt``
    (MESSAGE frames on the way are skipped), or that the broker closed the connection."""
    deadline = time.monotonic() + 10
    while True:
        try:
            frame = client.read_frame(timeout=max(0.01, deadline - time.monotonic()))
        except AssertionError as error:
            return f"closed ({error})"
        if frame.command == "ERROR":
            return f"ERROR {frame.get('message')}"
        if frame.command == "CONNECTED":
            return "CONNECTED"
        if frame.command == "RECEIPT" and frame.get("receipt-id") == receipt:
            return "RECEIPT"


def stomp_client(arena, login: str, passcode: str) -> RawStomp:
    client = RawStomp(arena.listeners["stomp"])
    client.connect("1.2", login=login, passcode=passcode)
    return client


def declare_with_message(arena, queue: str, body: bytes) -> None:
    """guest declares durable ``queue`` and puts one confirmed message in it."""
    guest = RawAmqp(arena.listeners["amqp"]).open()
    guest.queue_declare(queue, durable=True)
    guest.expect(QUEUE_DECLARE_OK)
    guest.confirm_select()
    guest.expect(CONFIRM_SELECT_OK)
    guest.publish("", queue, body)
    guest.expect(BASIC_ACK)
    guest.close()


def queue_message_count(arena, queue: str) -> int | str:
    """The queue's message count from a passive declare by guest, or how that was refused."""
    guest = RawAmqp(arena.listeners["amqp"]).open()
    guest.queue_declare(queue, passive=True)
    try:
        arguments = guest.expect(QUEUE_DECLARE_OK)
    except Closed as closed:
        return f"{closed.scope}.close {closed.code} {closed.text}"
    finally:
        guest.close()
    size = arguments[0]
    return struct.unpack(">I", arguments[1 + size : 5 + size])[0]


@pytest.mark.parametrize("prefix", ["/queue/", "/amq/queue/"])
def test_stomp_durable_unsubscribe_by_a_read_only_user_keeps_the_queue(arena, prefix):
    """reader (read-only) subscribes to a shared queue and unsubscribes with durable:true:
    deleting a queue needs configure permission, so the queue and its message stay."""
    arena.start()
    queue = "adversarial-shared"
    declare_with_message(arena, queue, b"keep me")
    with arena.attack():
        reader = stomp_client(arena, "reader", "reader-secret")
        reader.send_frame(
            "SUBSCRIBE",
            [
                ("destination", prefix + queue),
                ("id", "s1"),
                ("ack", "client"),
                ("receipt", "subscribed"),
            ],
            version="1.2",
        )
        subscribed = stomp_reply(reader, "subscribed")
        unsubscribed = "not tried"
        if subscribed == "RECEIPT":
            reader.send_frame(
                "UNSUBSCRIBE",
                [("id", "s1"), ("durable", "true"), ("receipt", "unsubscribed")],
                version="1.2",
            )
            unsubscribed = stomp_reply(reader, "unsubscribed")
        reader.close()
    arena.assert_survived()
    deadline = time.monotonic() + 5
    while (count := queue_message_count(arena, queue)) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count == 1, (
        f"after reader's SUBSCRIBE ({subscribed}) and durable UNSUBSCRIBE ({unsubscribed}) "
        f"the queue {queue} holds: {count}"
    )


@pytest.mark.parametrize(
    "declare",
    ["queue x-dead-letter-exchange", "exchange alternate-exchange"],
)
def test_amqp_dead_letter_and_alternate_exchange_need_write_permission(arena, declare):
    """carol may write only to ``carol-*``: naming amq.fanout as the dead-letter exchange of
    her queue, or as the alternate exchange of her exchange, would let her publish there, so
    the declaration is refused with 403 (as RabbitMQ checks both). The same declaration naming
    a ``carol-*`` exchange is accepted."""
    arena.start()
    kind, argument = declare.split()

    def attempt(target: str) -> str:
        carol = RawAmqp(arena.listeners["amqp"], "carol", "carol-secret").open()
        if kind == "queue":
            carol.queue_declare(f"carol-queue-{target}", arguments=table({argument: target}))
            outcome = amqp_outcome(carol, QUEUE_DECLARE_OK)
        else:
            carol.exchange_declare(
                f"carol-exchange-{target}", "direct", arguments=table({argument: target})
            )
            outcome = amqp_outcome(carol, EXCHANGE_DECLARE_OK)
        carol.close()
        return outcome

    with arena.attack():
        allowed = attempt("carol-dead-letters")
        refused = attempt("amq.fanout")
    arena.assert_survived()
    assert allowed == "accepted", f"{declare} naming carol's own exchange: {allowed}"
    assert refused == "channel.close 403", f"{declare} naming amq.fanout: {refused}"


def test_stomp_send_to_an_internal_exchange_is_refused(arena):
    """An internal exchange takes messages only from other exchanges: AMQP refuses a publish
    to it with 403, and a STOMP SEND to ``/exchange/<it>/key`` gets an ERROR and routes
    nothing."""
    arena.start()
    guest = RawAmqp(arena.listeners["amqp"]).open()
    guest.exchange_declare("adversarial-internal", "topic", internal=True)
    guest.expect(EXCHANGE_DECLARE_OK)
    guest.queue_declare("adversarial-behind-internal")
    guest.expect(QUEUE_DECLARE_OK)
    guest.queue_bind("adversarial-behind-internal", "adversarial-internal", "#")
    guest.expect(QUEUE_BIND_OK)
    guest.close()
    with arena.attack():
        alice = stomp_client(arena, "alice", "alice-secret")
        alice.send_frame(
            "SEND",
            [("destination", "/exchange/adversarial-internal/k"), ("receipt", "sent")],
            "smuggled",
            version="1.2",
        )
        sent = stomp_reply(alice, "sent")
        alice.close()
    arena.assert_survived()
    routed = queue_message_count(arena, "adversarial-behind-internal")
    assert sent.startswith("ERROR") and routed == 0, (
        f"SEND to an internal exchange: {sent}; messages routed behind it: {routed}"
    )


@pytest.mark.parametrize("use", ["reply-to", "subscribe"])
def test_stomp_temp_queue_needs_configure_permission(arena, use):
    """writer may configure nothing, so the broker may not create a temporary queue for it:
    a SEND with ``reply-to: /temp-queue/answers``, or a SUBSCRIBE to ``/temp-queue/answers``,
    gets an ERROR. The same SEND without reply-to is accepted."""
    arena.start()
    with arena.attack():
        writer = stomp_client(arena, "writer", "writer-secret")
        writer.send_frame(
            "SEND",
            [("destination", "/topic/adversarial.plain"), ("receipt", "plain")],
            "x",
            version="1.2",
        )
        plain = stomp_reply(writer, "plain")
        if use == "reply-to":
            headers = [
                ("destination", "/topic/adversarial.ask"),
                ("reply-to", "/temp-queue/answers"),
                ("receipt", "temp"),
            ]
            writer.send_frame("SEND", headers, "question", version="1.2")
        else:
            headers = [("destination", "/temp-queue/answers"), ("id", "t1"), ("receipt", "temp")]
            writer.send_frame("SUBSCRIBE", headers, version="1.2")
        temp = stomp_reply(writer, "temp")
        writer.close()
    arena.assert_survived()
    assert plain == "RECEIPT", f"writer's plain SEND to a topic: {plain}"
    assert temp.startswith("ERROR"), f"writer's {use} of a /temp-queue/: {temp}"


FORGED = "FORGED-LINE  INFO junction: user admin logged in"


def test_a_user_name_with_a_newline_forges_no_log_line(arena):
    """Log in with a user name holding a newline over AMQP (PLAIN), MQTT and STOMP: the
    refusal may be logged, but the name must be escaped, so no line of the log begins with
    the text after the newline."""
    arena.start()
    name = f"nobody\n{FORGED}"
    with arena.attack():
        amqp = RawAmqp(arena.listeners["amqp"], name, "wrong")
        try:
            amqp.open()
            amqp_refused = "logged in"
        except Closed as closed:
            amqp_refused = f"{closed.scope}.close {closed.code}"
        except Exception as error:  # noqa: BLE001 - the socket closed: refused as well
            amqp_refused = repr(error)
        amqp.close()
        mqtt = RawClient(arena.listeners["mqtt"])
        mqtt.send(connect_packet("adversarial-forger", username=name, password="wrong"))
        mqtt_refused = mqtt_reply(mqtt)
        mqtt.close()
        stomp = RawStomp(arena.listeners["stomp"])
        stomp.send_frame(
            "CONNECT",
            [("accept-version", "1.2"), ("login", name), ("passcode", "wrong")],
            version="1.2",
        )
        stomp_refused = stomp_reply(stomp, "-")
        stomp.close()
    arena.assert_survived()
    assert amqp_refused != "logged in" and mqtt_refused != "CONNACK 0000"
    assert "CONNECTED" not in stomp_refused
    # The refusals are logged as they happen; give the log a moment to show them.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        log = arena.broker.log_path.read_text(errors="replace")
        if log.count("FORGED-LINE") >= 2:
            break
        time.sleep(0.05)
    log = arena.broker.log_path.read_text(errors="replace")
    forged = [line for line in log.splitlines() if line.startswith("FORGED-LINE")]
    assert not forged, f"{len(forged)} forged log line(s), e.g. {forged[0]!r}"
