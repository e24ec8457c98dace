"""Junction with the command-line clients from Debian's mosquitto-clients: mosquitto_pub and
mosquitto_sub as a device or an operator would run them, meeting pika on the AMQP side.

mosquitto_sub runs with ``-d`` so the test can wait for its "Subscribed" line before anything
is published (under coreutils' ``stdbuf -oL``: into a pipe its output is otherwise buffered until
it exits), and with ``-F`` so each received message is one recognisable line:
``message|topic|qos|retain|payload``.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pika
import pytest

from mqtt_clients import WAIT
from processes import LineReader

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto_pub/mosquitto_sub missing (Debian package mosquitto-clients)",
)

MESSAGE_FORMAT = "message|%t|%q|%r|%p"


def address(broker) -> list[str]:
    host, port = broker.listeners["mqtt"]
    return ["-h", host, "-p", str(port)]


def login(broker) -> list[str]:
    return [*address(broker), "-u", "guest", "-P", "guest"]


def mosquitto_pub(broker, *args: str, credentials: bool = True) -> None:
    """Runs mosquitto_pub to completion; it must exit 0. Without ``credentials`` it sends no
    user name, as a first try on a fresh install does."""
    where = login(broker) if credentials else address(broker)
    done = subprocess.run(
        ["mosquitto_pub", *where, *args], capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 0, f"mosquitto_pub exited {done.returncode}: {done.stderr}"


class MosquittoSub:
    """A running ``mosquitto_sub -C count -W timeout``, its stdout read line by line."""

    def __init__(self, broker, *args: str, count: int = 1, timeout: int = 10) -> None:
        command = ["stdbuf", "-oL", "mosquitto_sub", *login(broker), "-d", "-F", MESSAGE_FORMAT]
        command += ["-C", str(count), "-W", str(timeout), *args]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout = LineReader(self.process.stdout, "mosquitto_sub")
        self.stderr = LineReader(self.process.stderr, "mosquitto_sub-err")

    def wait_subscribed(self, timeout: float = WAIT) -> None:
        """Waits for the line mosquitto_sub prints on SUBACK."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.stdout.next_line(deadline)
            except TimeoutError:
                raise AssertionError(
                    f"mosquitto_sub not subscribed in time\n{self.output()}"
                ) from None
            assert line is not None, f"mosquitto_sub exited early\n{self.output()}"
            if line.startswith("Subscribed"):
                return

    def messages(self, timeout: float = WAIT) -> list[tuple[str, int, bool, str]]:
        """Waits for exit code 0; returns (topic, qos, retain, payload) of each message."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"mosquitto_sub still running\n{self.output()}") from None
        deadline = time.monotonic() + 5
        while self.stdout.next_line(deadline) is not None:
            pass  # let the reader reach the end of the output
        assert code == 0, f"mosquitto_sub exited {code}\n{self.output()}"
        received = []
        for line in self.stdout.seen:
            if line.startswith("message|"):
                _, topic, qos, retain, payload = line.split("|", 4)
                received.append((topic, int(qos), retain == "1", payload))
        return received

    def output(self) -> str:
        return f"--- stdout ---\n{self.stdout.text()}\n--- stderr ---\n{self.stderr.text()}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=WAIT)


@pytest.fixture
def mosquitto_sub(broker):
    started: list[MosquittoSub] = []

    def start(*args: str, **options) -> MosquittoSub:
        sub = MosquittoSub(broker, *args, **options)
        started.append(sub)
        return sub

    yield start
    for sub in started:
        sub.stop()


def next_amqp_message(channel, queue: str):
    """The next message of ``queue`` (basic.get polled with a deadline)."""
    deadline = time.monotonic() + WAIT
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, properties, body
        assert time.monotonic() < deadline, f"nothing arrived in {queue}"
        time.sleep(0.02)


@pytest.mark.parametrize("protocol", [[], ["-V", "mqttv311"]], ids=["default", "mqttv311"])
def test_a_reading_published_with_mosquitto_pub_reaches_a_pika_consumer(
    broker, channel, names, protocol
):
    """The README's IoT example: a service binds a queue to amq.topic with `sensors.#`, a
    device runs `mosquitto_pub -q 1 -t sensors/kitchen/temperature -m 21.5`, and the service
    receives the reading under the routing key `sensors.kitchen.temperature`."""
    site = names("kitchen")  # a unique room, so other tests' readings stay out
    readings = channel.queue_declare(names("readings"), exclusive=True).method.queue
    channel.queue_bind(readings, "amq.topic", routing_key=f"sensors.{site}.#")

    mosquitto_pub(broker, *protocol, "-q", "1", "-t", f"sensors/{site}/temperature", "-m", "21.5")

    method, properties, body = next_amqp_message(channel, readings)
    assert method.routing_key == f"sensors.{site}.temperature"
    assert body == b"21.5"
    assert properties.headers == {"x-mqtt-publish-qos": 1}
    assert properties.delivery_mode == 2


def test_mosquitto_sub_receives_a_message_published_by_pika(broker, channel, names, mosquitto_sub):
    """An operator watching a topic with mosquitto_sub sees what a service publishes to
    amq.topic; a persistent AMQP message arrives at QoS 1."""
    topic = f"alerts/{names('boiler')}"
    watcher = mosquitto_sub("-q", "2", "-t", topic)
    watcher.wait_subscribed()
    channel.basic_publish(
        "amq.topic",
        topic.replace("/", "."),
        b"pressure high",
        pika.BasicProperties(delivery_mode=2),
    )
    assert watcher.messages() == [(topic, 1, False, "pressure high")]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_sub_receives_a_message_published_by_mosquitto_pub(
    broker, names, mosquitto_sub, qos
):
    """mosquitto_pub to mosquitto_sub through Junction, at each QoS (both sides at it)."""
    topic = f"chat/{names('room')}"
    watcher = mosquitto_sub("-q", str(qos), "-t", topic)
    watcher.wait_subscribed()
    mosquitto_pub(broker, "-q", str(qos), "-t", topic, "-m", f"hello at qos {qos}")
    assert watcher.messages() == [(topic, qos, False, f"hello at qos {qos}")]


def test_a_message_retained_with_mosquitto_pub_reaches_a_later_mosquitto_sub(
    broker, names, mosquitto_sub
):
    """`mosquitto_pub -r` leaves the topic's last known value: a mosquitto_sub started
    afterwards gets it at once, flagged retained. `mosquitto_pub -r -n` clears it, and a
    mosquitto_sub started then times out empty-handed."""
    topic = f"devices/{names('thermostat')}/state"
    mosquitto_pub(broker, "-q", "1", "-r", "-t", topic, "-m", "heating")

    later = mosquitto_sub("-q", "1", "-t", topic)
    assert later.messages() == [(topic, 1, True, "heating")]

    mosquitto_pub(broker, "-q", "1", "-r", "-n", "-t", topic)
    after_clear = mosquitto_sub("-q", "1", "-t", topic, timeout=1)
    code = after_clear.process.wait(timeout=WAIT)
    assert code == 27, f"expected the -W time-out (27), got {code}\n{after_clear.output()}"
    assert [line for line in after_clear.stdout.seen if line.startswith("message|")] == []


def test_mosquitto_pub_without_credentials_works_on_the_default_configuration(
    broker, names, mosquitto_sub
):
    """`mosquitto_pub -t t -m hi` with no user name, on the default configuration, from
    loopback: it logs in as guest (as with RabbitMQ and Mosquitto 2) and the message arrives."""
    topic = f"first/{names('try')}"
    watcher = mosquitto_sub("-q", "1", "-t", topic)
    watcher.wait_subscribed()
    mosquitto_pub(broker, "-t", topic, "-m", "hi", credentials=False)
    assert watcher.messages() == [(topic, 0, False, "hi")]
