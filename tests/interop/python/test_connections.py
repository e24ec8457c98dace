"""Connection-level behaviour: authentication, virtual hosts, shutdown and restart.

The last two tests run private brokers (``start_broker``): they stop one, which
the shared broker must survive.
"""

import signal
import time
from contextlib import closing

import pika
import pika.exceptions
import pytest

from messages import receive


def test_guest_can_connect_open_a_channel_and_close_cleanly(connect):
    connection = connect()
    channel = connection.channel()
    assert channel.is_open
    connection.close()
    assert connection.is_closed


@pytest.mark.parametrize("user, password", [("guest", "wrong"), ("nobody", "guest")])
def test_bad_credentials_are_refused(connect, user, password):
    with pytest.raises(
        (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)
    ):
        connect(credentials=pika.PlainCredentials(user, password))


def test_an_unknown_virtual_host_is_refused_with_530(connect, names):
    # pika reports the close as ConnectionClosedByBroker, or, because it comes
    # during the handshake, as ProbableAccessDeniedError quoting that close.
    with pytest.raises(
        (pika.exceptions.ProbableAccessDeniedError, pika.exceptions.ConnectionClosedByBroker)
    ) as caught:
        connect(virtual_host=names("no-such-vhost"))

    error = caught.value
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        assert error.reply_code == 530
    else:
        assert "530" in str(error), (
            f"expected a connection.close with 530 NOT_ALLOWED, got {error!r}"
        )


def test_sigterm_closes_connections_with_connection_forced_and_exits_cleanly(start_broker):
    broker = start_broker()
    connection = pika.BlockingConnection(broker.pika_parameters())
    connection.channel()

    broker.process.send_signal(signal.SIGTERM)

    deadline = time.monotonic() + 10
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as caught:
        while time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
    assert caught.value.reply_code == 320, f"expected 320 CONNECTION_FORCED, got {caught.value!r}"
    assert broker.process.wait(timeout=10) == 0


# Durable definitions (redb) and persistent messages (the message log) survive a restart;
# transient queues and messages do not, as in RabbitMQ.
def test_durable_definitions_and_persistent_messages_survive_a_restart(start_broker):
    first = start_broker()
    with closing(pika.BlockingConnection(first.pika_parameters())) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.exchange_declare("orders", exchange_type="direct", durable=True)
        channel.queue_declare("orders.durable", durable=True)
        channel.queue_declare("orders.transient", durable=False)
        channel.queue_bind("orders.durable", "orders", routing_key="new")
        channel.queue_bind("orders.transient", "orders", routing_key="new")
        channel.basic_publish(
            "orders",
            "new",
            b"transient message",
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient),
        )
        channel.basic_publish(
            "orders",
            "new",
            b"persistent message",
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
        )
    assert first.stop() == 0

    second = start_broker(data_dir=first.data_dir)
    with closing(pika.BlockingConnection(second.pika_parameters())) as connection:
        channel = connection.channel()
        # Only the persistent message of the durable queue is kept.
        [kept] = receive(channel, "orders.durable", 1, auto_ack=False)
        assert kept.body == b"persistent message"
        assert kept.properties.delivery_mode == 2
        channel.basic_ack(kept.delivery_tag)
        assert channel.basic_get("orders.durable") == (None, None, None)

        # The durable exchange and its binding are back too.
        channel.basic_publish("orders", "new", b"after restart")
        [routed] = receive(channel, "orders.durable", 1)
        assert routed.body == b"after restart"

        # The non-durable queue is gone.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            channel.queue_declare("orders.transient", passive=True)
        assert caught.value.reply_code == 404
