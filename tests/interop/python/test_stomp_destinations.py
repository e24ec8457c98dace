"""STOMP destinations as RabbitMQ's STOMP plugin defines them, and what AMQP and MQTT clients
see of STOMP messages (and the other way round).

Pinned here: ``/queue/N`` (a durable queue declared on first use, shared with AMQP),
``/topic/K`` (a private queue per subscription bound to ``amq.topic``; wildcards; durable
subscriptions named by ``id`` that keep messages while the subscriber is away),
``/exchange/X/K`` (an exchange declared by AMQP), ``/amq/queue/N`` (an existing queue, never
declared), ``/temp-queue/N`` in ``reply-to`` (rewritten to ``/reply-queue/...`` so STOMP and AMQP
servers can answer), the mapping between STOMP headers and AMQP properties both ways, and
MQTT topics crossing to STOMP topics and back.

Every queue, exchange and routing key comes from ``names``, so tests on the shared broker
never see each other's messages.
"""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

from stomp_clients import WAIT, StompClient


def amqp_get(channel, queue: str, timeout: float = WAIT):
    """The next message of ``queue`` via basic.get, polled with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, properties, body
        assert time.monotonic() < deadline, f"no message in {queue} within {timeout} s"
        time.sleep(0.02)


def queue_exists(connect, queue: str) -> bool:
    """Whether ``queue`` exists (a passive declare on a channel of its own, since a 404 closes
    the channel)."""
    channel = connect().channel()
    try:
        channel.queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as closed:
        assert closed.reply_code == 404, closed
        return False


def key_base(names, role: str) -> str:
    """A unique routing-key word (no '.', which would split it into two words)."""
    return names(role).replace(".", "_")


# ---------------------------------------------------------------------------------------------
# /queue/


def test_a_queue_destination_declares_a_durable_queue_that_amqp_sees(
    stomp_connected, names, channel
):
    """The first SEND to /queue/N declares queue N, durable (a durable redeclare from pika is
    accepted), and the message waits in it for pika."""
    queue = names("q")
    client = stomp_connected("1.2")
    client.send(f"/queue/{queue}", "for pika")
    declared = channel.queue_declare(queue, durable=True)
    assert declared.method.message_count == 1
    _, _, body = amqp_get(channel, queue)
    assert body == b"for pika"


def test_subscribing_to_a_queue_destination_declares_it_and_gets_amqp_publications(
    stomp_connected, names, channel
):
    """SUBSCRIBE /queue/N declares N too; pika publishing to the default exchange with key N
    reaches the subscriber, whose MESSAGE names /queue/N."""
    queue = names("q")
    client = stomp_connected("1.2")
    client.subscribe(f"/queue/{queue}")
    channel.queue_declare(queue, passive=True)
    channel.basic_publish("", queue, b"from pika")
    message = client.expect_message()
    assert (message.body, message.headers["destination"]) == ("from pika", f"/queue/{queue}")


# ---------------------------------------------------------------------------------------------
# /topic/


def test_every_topic_subscriber_gets_its_own_copy(stomp_connected, names):
    """Two subscriptions to /topic/K (one per connection) each get every message sent there,
    with destination /topic/K."""
    destination = f"/topic/{key_base(names, 'k')}"
    first, second = stomp_connected("1.2"), stomp_connected("1.1")
    first.subscribe(destination)
    second.subscribe(destination)
    first.send(destination, "to all")
    for client in (first, second):
        message = client.expect_message()
        assert (message.body, message.headers["destination"]) == ("to all", destination)


def test_topic_subscriptions_take_amqp_topic_wildcards(stomp_connected, names):
    """/topic/B.* matches B.x but not B.x.y; /topic/B.# matches both."""
    base = key_base(names, "sensors")
    client = stomp_connected("1.2")
    star = client.subscribe(f"/topic/{base}.*")
    hash_ = client.subscribe(f"/topic/{base}.#")
    client.send(f"/topic/{base}.x.y", "two words")
    client.send(f"/topic/{base}.x", "one word")
    received = sorted((m.headers["subscription"], m.body) for m in client.expect_messages(3))
    assert received == sorted([(hash_, "two words"), (hash_, "one word"), (star, "one word")])
    client.expect_no_message(0.3)


def test_a_plain_topic_subscription_keeps_nothing_while_the_subscriber_is_away(
    stomp_connected, names
):
    """A /topic/ subscription without durable:true is a private queue that goes with its
    connection: what was sent while no one subscribed is not delivered later."""
    destination = f"/topic/{key_base(names, 'k')}"
    away = stomp_connected("1.2")
    away.subscribe(destination, id="plain")
    away.disconnect()
    sender = stomp_connected("1.2")
    sender.send(destination, "missed")
    back = stomp_connected("1.2")
    back.subscribe(destination, id="plain")
    sender.send(destination, "seen")
    assert back.expect_message().body == "seen"
    back.expect_no_message(0.3)


def test_a_durable_topic_subscription_keeps_messages_until_it_is_unsubscribed(
    stomp_connected, names, connect
):
    """durable:true with an id makes a durable queue named after the id: messages sent while
    the subscriber is disconnected arrive when it subscribes again with the same id;
    UNSUBSCRIBE with durable:true deletes that queue."""
    destination = f"/topic/{key_base(names, 'k')}"
    sub_id = names("durable")
    first = stomp_connected("1.2")
    first.subscribe(destination, id=sub_id, durable="true")
    first.disconnect()

    sender = stomp_connected("1.2")
    sender.send(destination, "while away 1")
    sender.send(destination, "while away 2")

    again = stomp_connected("1.2")
    again.subscribe(destination, id=sub_id, durable="true")
    assert [m.body for m in again.expect_messages(2)] == ["while away 1", "while away 2"]
    assert queue_exists(connect, f"stomp-subscription-{sub_id}")
    again.unsubscribe(sub_id, durable="true")
    assert not queue_exists(connect, f"stomp-subscription-{sub_id}")


def test_a_durable_topic_subscription_and_its_persistent_messages_survive_a_restart(
    start_broker, names
):
    """The durable queue behind a durable:true subscription is a definition like any other:
    after a restart on the same data directory, resubscribing with the same id delivers the
    persistent message sent while the subscriber was away, and the binding still routes new
    messages."""
    first = start_broker()
    destination = f"/topic/{key_base(names, 'k')}"
    sub_id = names("durable")
    clients = []

    def client_of(target):
        client = StompClient(target.listeners["stomp"], "1.2")
        clients.append(client)
        client.connect()
        return client

    try:
        subscriber = client_of(first)
        subscriber.subscribe(destination, id=sub_id, durable="true")
        subscriber.disconnect()
        client_of(first).send(destination, "kept", persistent="true")
        first.stop()

        second = start_broker(data_dir=first.data_dir)
        again = client_of(second)
        again.subscribe(destination, id=sub_id, durable="true")
        assert again.expect_message().body == "kept"
        client_of(second).send(destination, "after restart")
        assert again.expect_message().body == "after restart"
    finally:
        for client in clients:
            client.close()


# ---------------------------------------------------------------------------------------------
# /exchange/ and /amq/queue/


@pytest.mark.parametrize(
    "kind, pattern, matching, other",
    [("direct", "k1", "k1", "k2"), ("topic", "a.*", "a.b", "a.b.c")],
    ids=["direct", "topic"],
)
def test_exchange_destinations_bind_to_an_exchange_declared_with_amqp(
    stomp_connected, names, channel, kind, pattern, matching, other
):
    """/exchange/X/P subscribes a private queue bound to AMQP exchange X with P: pika's
    publications that match arrive (destination /exchange/X/key), others do not; a STOMP SEND
    to /exchange/X/key reaches an AMQP queue bound there."""
    exchange = names(kind)
    channel.exchange_declare(exchange, kind)
    client = stomp_connected("1.2")
    client.subscribe(f"/exchange/{exchange}/{pattern}")
    channel.basic_publish(exchange, other, b"miss")
    channel.basic_publish(exchange, matching, b"hit")
    message = client.expect_message()
    assert message.body == "hit"
    assert message.headers["destination"] == f"/exchange/{exchange}/{matching}"
    client.expect_no_message(0.3)

    bound = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(bound, exchange, matching)
    client.send(f"/exchange/{exchange}/{matching}", "from stomp")
    method, _, body = amqp_get(channel, bound)
    assert (body, method.exchange, method.routing_key) == (b"from stomp", exchange, matching)


def test_amq_queue_destinations_use_an_existing_queue_without_declaring(
    stomp_connected, names, channel, connect
):
    """/amq/queue/N reads and writes queue N that pika declared (non-durable: STOMP does not
    redeclare it durable); a SEND to /amq/queue/ of a missing queue declares nothing."""
    queue = names("q")
    channel.queue_declare(queue, durable=False)
    client = stomp_connected("1.2")
    client.subscribe(f"/amq/queue/{queue}")
    channel.basic_publish("", queue, b"from pika")
    assert client.expect_message().body == "from pika"

    missing = names("missing")
    client.send(f"/amq/queue/{missing}", "nowhere")
    assert not queue_exists(connect, missing)
    client.round_trip(names)


def test_subscribing_to_a_missing_amq_queue_is_an_error(stomp, names):
    """SUBSCRIBE /amq/queue/N for a queue that does not exist: ERROR not_found naming it, then
    the connection closes."""
    missing = names("missing")
    client = stomp("1.2")
    client.connect()
    client.conn.subscribe(f"/amq/queue/{missing}", "s1")
    error = client.expect_error()
    assert error.headers["message"] == "not_found"
    assert missing in error.body
    client.wait_disconnected()


# ---------------------------------------------------------------------------------------------
# /temp-queue/ and reply-to


def test_an_rpc_over_stomp_answers_into_the_requesters_temp_queue(stomp_connected, names):
    """The requester SENDs with reply-to:/temp-queue/replies; the server (stomp.py) gets
    reply-to rewritten to /reply-queue/<queue>, SENDs its answer there, and the requester
    receives it on subscription /temp-queue/replies with the correlation-id."""
    requests = f"/queue/{names('requests')}"
    server = stomp_connected("1.2")
    server.subscribe(requests)
    requester = stomp_connected("1.2")
    requester.send(requests, "2+2", reply_to="/temp-queue/replies", correlation_id="c-1")

    request = server.expect_message()
    reply_to = request.headers["reply-to"]
    assert reply_to.startswith("/reply-queue/")
    assert request.headers["correlation-id"] == "c-1"
    server.send(reply_to, "4", correlation_id=request.headers["correlation-id"])

    reply = requester.expect_message()
    assert reply.body == "4"
    assert reply.headers["subscription"] == "/temp-queue/replies"
    assert reply.headers["destination"] == "/temp-queue/replies"
    assert reply.headers["correlation-id"] == "c-1"


def test_an_rpc_over_stomp_is_answered_by_an_amqp_server(stomp_connected, names, channel):
    """A pika server consuming the request queue answers to the default exchange with the
    reply-to value minus '/reply-queue/' as routing key; the STOMP requester gets the answer on
    its /temp-queue/ subscription. The same temp queue serves several requests."""
    requests = names("requests")
    channel.queue_declare(requests, durable=True)
    requester = stomp_connected("1.2")
    for n in range(2):
        requester.send(
            f"/queue/{requests}",
            f"question {n}",
            reply_to="/temp-queue/rpc",
            correlation_id=f"c{n}",
        )
    reply_queues = set()
    for n in range(2):
        _, properties, body = amqp_get(channel, requests)
        assert body == f"question {n}".encode()
        assert properties.reply_to.startswith("/reply-queue/")
        reply_queues.add(properties.reply_to)
        channel.basic_publish(
            "",
            properties.reply_to.removeprefix("/reply-queue/"),
            f"answer {n}".encode(),
            pika.BasicProperties(correlation_id=properties.correlation_id),
        )
    assert len(reply_queues) == 1
    replies = requester.expect_messages(2)
    assert [(m.body, m.headers["correlation-id"]) for m in replies] == [
        ("answer 0", "c0"),
        ("answer 1", "c1"),
    ]
    assert {m.headers["subscription"] for m in replies} == {"/temp-queue/rpc"}


def test_each_connection_has_its_own_temp_queues(stomp_connected, names, channel):
    """Two requesters using the same /temp-queue/ name get different reply queues, and each
    gets only its own answer."""
    requests = names("requests")
    channel.queue_declare(requests, durable=True)
    alice, bob = stomp_connected("1.2"), stomp_connected("1.2")
    alice.send(f"/queue/{requests}", "alice", reply_to="/temp-queue/r")
    bob.send(f"/queue/{requests}", "bob", reply_to="/temp-queue/r")
    reply_to = {}
    for _ in range(2):
        _, properties, body = amqp_get(channel, requests)
        reply_to[body] = properties.reply_to
    assert reply_to[b"alice"] != reply_to[b"bob"]
    for who, to in reply_to.items():
        channel.basic_publish("", to.removeprefix("/reply-queue/"), b"for " + who)
    assert alice.expect_message().body == "for alice"
    assert bob.expect_message().body == "for bob"
    alice.expect_no_message(0.2)


# ---------------------------------------------------------------------------------------------
# Headers and properties.


def test_stomp_headers_become_amqp_properties(stomp_connected, names, channel):
    """What a pika consumer sees of a STOMP SEND: content-type, content-encoding,
    correlation-id, reply-to, type, app-id, amqp-message-id, timestamp and priority as the
    properties of those names, persistent:true as delivery_mode 2, and every other header in
    the headers table (frame headers such as receipt and content-length left out)."""
    queue = names("q")
    client = stomp_connected("1.2")
    client.send(
        f"/queue/{queue}",
        "{}",
        content_type="application/json",
        content_encoding="identity",
        correlation_id="corr-1",
        reply_to="/queue/answers",
        persistent="true",
        priority="5",
        type="order.created",
        app_id="stomp-test",
        amqp_message_id="m-1",
        timestamp="1700000000",
        x_custom="value",
        tenant="acme",
    )
    _, properties, body = amqp_get(channel, queue)
    assert body == b"{}"
    assert properties.content_type == "application/json"
    assert properties.content_encoding == "identity"
    assert properties.correlation_id == "corr-1"
    assert properties.reply_to == "/queue/answers"
    assert properties.delivery_mode == 2
    assert properties.priority == 5
    assert properties.type == "order.created"
    assert properties.app_id == "stomp-test"
    assert properties.message_id == "m-1"
    assert properties.timestamp == 1700000000
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in properties.headers.items()}
    assert headers == {"x-custom": "value", "tenant": "acme"}


def test_persistent_false_is_a_transient_amqp_message(stomp_connected, names, channel):
    """persistent:false (or any value but true) maps to delivery_mode 1."""
    queue = names("q")
    client = stomp_connected("1.2")
    client.send(f"/queue/{queue}", "t", persistent="false")
    _, properties, _ = amqp_get(channel, queue)
    assert properties.delivery_mode == 1


def test_amqp_properties_and_headers_become_stomp_headers(stomp_connected, names, channel):
    """What stomp.py sees of a pika publication: each property as its STOMP header
    (delivery_mode 2 as persistent:true, message_id as amqp-message-id) and each entry of the
    headers table as a header of its own, numbers and booleans as text."""
    queue = names("q")
    client = stomp_connected("1.2")
    client.subscribe(f"/queue/{queue}")
    channel.basic_publish(
        "",
        queue,
        b"payload",
        pika.BasicProperties(
            content_type="text/plain",
            content_encoding="utf-8",
            correlation_id="corr-2",
            reply_to="replies",
            delivery_mode=2,
            priority=3,
            message_id="m-2",
            type="note",
            app_id="pika-test",
            timestamp=1700000001,
            expiration="60000",
            headers={"x-str": "s", "x-int": 42, "x-bool": True},
        ),
    )
    message = client.expect_message()
    assert message.body == "payload"
    expected = {
        "content-type": "text/plain",
        "content-encoding": "utf-8",
        "correlation-id": "corr-2",
        "reply-to": "replies",
        "persistent": "true",
        "priority": "3",
        "amqp-message-id": "m-2",
        "type": "note",
        "app-id": "pika-test",
        "timestamp": "1700000001",
        "expiration": "60000",
        "x-str": "s",
        "x-int": "42",
        "x-bool": "true",
    }
    assert {name: message.headers.get(name) for name in expected} == expected


# ---------------------------------------------------------------------------------------------
# MQTT.


def test_an_mqtt_publication_reaches_a_stomp_topic_subscriber(stomp_connected, names, mqtt):
    """paho publishes B/x/y (MQTT topics are amq.topic routing keys with '/' as '.'); a STOMP
    subscriber on /topic/B.x.y, and one on /topic/B.*.y, get it."""
    base = key_base(names, "sensors")
    client = stomp_connected("1.2")
    exact = client.subscribe(f"/topic/{base}.x.y")
    wildcard = client.subscribe(f"/topic/{base}.*.y")
    publisher = mqtt(names("pub"))
    publisher.connect()
    publisher.publish(f"{base}/x/y", b"21.5", qos=1)
    received = client.expect_messages(2)
    assert sorted(m.headers["subscription"] for m in received) == sorted([exact, wildcard])
    for message in received:
        assert message.body == "21.5"
        assert message.headers["destination"] == f"/topic/{base}.x.y"
    client.expect_no_message(0.3)


def test_a_stomp_send_to_a_topic_reaches_an_mqtt_subscriber(stomp_connected, names, mqtt):
    """SEND /topic/B.a.b reaches a paho subscriber on B/a/b with the body as payload."""
    base = key_base(names, "cmd")
    subscriber = mqtt(names("sub"))
    subscriber.connect()
    assert subscriber.subscribe((f"{base}/a/b", 1)) == [1]
    client = stomp_connected("1.2")
    client.send(f"/topic/{base}.a.b", "switch on")
    message = subscriber.expect_message()
    assert (message.topic, message.payload) == (f"{base}/a/b", b"switch on")
    subscriber.expect_no_message(0.3)


def test_an_explicit_temp_queue_subscription_receives_replies_under_its_own_id(
    stomp_connected, names
):
    """A client that SUBSCRIBEs to /temp-queue/r with its own id (as stomp.js clients that
    route by subscription id do) gets replies under that id, before and after it has used the
    temp queue in a reply-to."""
    requests = f"/queue/{names('requests')}"
    server = stomp_connected("1.2")
    server.subscribe(requests)
    requester = stomp_connected("1.2")
    requester.send(requests, "first", reply_to="/temp-queue/r")
    requester.subscribe("/temp-queue/r", id="my-replies")
    requester.send(requests, "second", reply_to="/temp-queue/r")
    for expected in ("first", "second"):
        request = server.expect_message()
        assert request.body == expected
        server.send(request.headers["reply-to"], f"re: {expected}")
        reply = requester.expect_message()
        assert reply.body == f"re: {expected}"
        assert reply.headers["subscription"] == "my-replies"


# ---------------------------------------------------------------------------------------------
# Queue arguments and properties as headers, as RabbitMQ's STOMP plugin takes them.


def test_subscribe_headers_declare_a_queue_with_its_arguments(stomp_connected, names, channel):
    """SUBSCRIBE /queue/N with x-max-length, x-message-ttl and auto-delete headers declares N
    with those arguments: a pika redeclaration with the same arguments is accepted, one
    without them is refused with 406 (inequivalent arg), and the length limit holds."""
    queue = names("q")
    client = stomp_connected("1.2")
    client.subscribe(
        f"/queue/{queue}",
        ack="client-individual",
        prefetch_count="1",
        x_max_length="2",
        x_message_ttl="600000",
        auto_delete="false",
    )
    arguments = {"x-max-length": 2, "x-message-ttl": 600000}
    declared = channel.queue_declare(queue, durable=True, arguments=arguments)
    assert declared.method.queue == queue
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.connection.channel().queue_declare(queue, durable=True)
    assert refused.value.reply_code == 406


def test_a_topic_subscription_queue_takes_its_name_and_arguments_from_headers(
    stomp_connected, names, channel
):
    """x-queue-name names the queue of a /topic/ subscription, and its arguments apply: pika
    finds the queue by that name, with x-max-priority as given."""
    queue = names("named")
    client = stomp_connected("1.2")
    client.subscribe(
        f"/topic/{names('t')}", x_queue_name=queue, x_max_priority="5", durable="true", id="d"
    )
    passive = channel.queue_declare(queue, passive=True)
    assert passive.method.queue == queue
    channel.queue_declare(queue, durable=True, arguments={"x-max-priority": 5})


def test_a_send_with_other_queue_arguments_than_the_queue_has_is_refused(
    stomp_connected, stomp, names, channel
):
    """A queue declared with pika with x-max-length 5: a SEND to /queue/N with x-max-length
    10 is refused with the precondition error an AMQP redeclaration gets; a SEND without
    queue headers takes the queue as it is."""
    queue = names("q")
    channel.queue_declare(queue, durable=True, arguments={"x-max-length": 5})
    plain = stomp_connected("1.2")
    plain.send(f"/queue/{queue}", "fits")
    other = stomp("1.2")
    other.connect()
    other.send(f"/queue/{queue}", "other limit", wait=False, x_max_length="10")
    error = other.expect_error()
    assert "inequivalent" in error.body or "PRECONDITION" in error.headers["message"].upper(), error
