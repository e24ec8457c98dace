"""The canary: ordinary clients, one per protocol, that keep doing round trips through the
broker while an attack runs, and a sampler of the broker's resident memory.

Each ``Probe`` is one real client (pika, paho-mqtt over TCP and over WebSocket, stomp.py over
TCP and over WebSocket) with one operation, ``round_trip``: publish a fresh token and wait
until the same client receives it back (in ``control`` mode, for a broker whose memory alarm
holds publishers, a round trip that publishes nothing: a passive queue.declare, a SUBSCRIBE
with its SUBACK, a BEGIN/ABORT with receipts). A ``CanaryThread`` runs one probe every
``INTERVAL`` seconds and records when each round trip started and ended and any failure;
``Canary`` runs them all and judges them: every client must have kept completing round trips,
none slower than ``FREEZE_BOUND`` (a freeze detector, not a performance test), and each must
have completed one after the attack ended.

``RssSampler`` reads VmRSS from /proc/<pid>/status every ``RSS_INTERVAL`` seconds and keeps
the peak; attacks that grow memory poll ``exceeded`` and stop early, so a broker without a
limit is caught before it takes the machine's memory.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as paho
import pika
import pika.exceptions
import stomp as stomppy
from stomp.adapter.ws import WSStompConnection
from stomp.exception import StompException

#: Seconds between two round trips of one canary client.
INTERVAL = 0.2
#: Worst round trip (or silence between two completed ones) tolerated, in seconds.
FREEZE_BOUND = 5.0
#: Seconds a canary client may take to connect and make its first round trip.
START_WAIT = 15.0
#: Seconds between two samples of the broker's resident memory.
RSS_INTERVAL = 0.05
#: Resident memory the broker must stay under during every attack, in bytes.
RSS_BOUND = 512 * 1024 * 1024


class ProbeFailed(Exception):
    """The probe's client reported an error or lost its connection."""


class Probe:
    """One client of one protocol. ``open`` connects, ``round_trip`` does one round trip
    (returning when it completed, raising ``ProbeFailed`` on error, and giving up quietly
    when ``stop`` is set), ``service`` keeps an idle connection serviced, ``close`` ends it.
    Each method is called from the probe's own thread only."""

    name = "probe"

    def open(self) -> None:
        raise NotImplementedError

    def round_trip(self, stop: threading.Event) -> bool:
        """True once the round trip completed; False if ``stop`` was set first."""
        raise NotImplementedError

    def service(self) -> None:
        time.sleep(0.05)

    def close(self) -> None:
        raise NotImplementedError


class AmqpProbe(Probe):
    """pika: publish a token to an exclusive queue through the default exchange and consume
    it back (control mode: a passive queue.declare of that queue)."""

    name = "amqp"

    def __init__(self, listener: tuple[str, int], control: bool) -> None:
        self.listener = listener
        self.control = control
        self.received: list[bytes] = []
        self.connection: pika.BlockingConnection | None = None

    def open(self) -> None:
        host, port = self.listener
        self.connection = pika.BlockingConnection(
            pika.ConnectionParameters(
                host=host,
                port=port,
                credentials=pika.PlainCredentials("guest", "guest"),
                connection_attempts=1,
                socket_timeout=5,
                stack_timeout=10,
                heartbeat=0,
            )
        )
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.basic_consume(
            self.queue, lambda _ch, _m, _p, body: self.received.append(body), auto_ack=True
        )

    def round_trip(self, stop: threading.Event) -> bool:
        assert self.connection is not None
        try:
            if self.control:
                self.channel.queue_declare(self.queue, passive=True)
                return True
            token = uuid.uuid4().hex.encode()
            self.channel.basic_publish("", self.queue, token)
            while token not in self.received:
                if stop.is_set():
                    return False
                self.connection.process_data_events(time_limit=0.05)
            self.received.clear()
            return True
        except pika.exceptions.AMQPError as error:
            raise ProbeFailed(f"pika: {error!r}") from error

    def service(self) -> None:
        if self.connection is not None and self.connection.is_open:
            try:
                self.connection.process_data_events(time_limit=0.05)
                return
            except pika.exceptions.AMQPError:
                pass
        time.sleep(0.05)

    def close(self) -> None:
        if self.connection is not None and self.connection.is_open:
            try:
                self.connection.close()
            except Exception:  # noqa: BLE001 - the broker is gone or going
                pass


class MqttProbe(Probe):
    """paho-mqtt (over TCP, or WebSocket with ``websocket=True``): a QoS 1 PUBLISH to a
    topic the same client subscribed to at QoS 1, until the message comes back (control
    mode: a SUBSCRIBE and its SUBACK)."""

    def __init__(self, listener: tuple[str, int], control: bool, websocket: bool) -> None:
        self.name = "web-mqtt" if websocket else "mqtt"
        self.listener = listener
        self.control = control
        client_id = f"canary-{self.name}-{uuid.uuid4().hex[:8]}"
        self.topic = f"canary/{client_id}"
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            transport="websockets" if websocket else "tcp",
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        if websocket:
            self.client.ws_set_options(path="/ws")
        self.client.username_pw_set("guest", "guest")
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.connacks: queue.Queue[int] = queue.Queue()
        self.subacks: queue.Queue[int] = queue.Queue()
        self.lost: str | None = None
        self.closing = False
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc.value)
        self.client.on_message = lambda c, u, m: self.messages.put(m.payload)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(mid)
        self.client.on_disconnect = self._on_disconnect

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self.closing:
            self.lost = f"disconnected ({reason_code})"

    def open(self) -> None:
        self.client.connect(self.listener[0], self.listener[1], keepalive=60)
        self.client.loop_start()
        try:
            code = self.connacks.get(timeout=START_WAIT)
        except queue.Empty:
            raise ProbeFailed("no CONNACK") from None
        if code != 0:
            raise ProbeFailed(f"CONNACK {code}")
        self._subscribe(threading.Event())

    def _subscribe(self, stop: threading.Event) -> bool:
        result, mid = self.client.subscribe(self.topic, qos=1)
        if result != paho.MQTT_ERR_SUCCESS:
            raise ProbeFailed(f"subscribe failed locally: {result}")
        return self._wait(lambda: self._drain(self.subacks, mid), stop)

    @staticmethod
    def _drain(source: queue.Queue, wanted) -> bool:
        while True:
            try:
                if source.get_nowait() == wanted:
                    return True
            except queue.Empty:
                return False

    def _wait(self, done, stop: threading.Event) -> bool:
        while not done():
            if self.lost:
                raise ProbeFailed(self.lost)
            if stop.is_set():
                return False
            time.sleep(0.01)
        return True

    def round_trip(self, stop: threading.Event) -> bool:
        if self.control:
            return self._subscribe(stop)
        token = uuid.uuid4().hex.encode()
        info = self.client.publish(self.topic, token, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ProbeFailed(f"publish failed locally: {info.rc}")
        return self._wait(lambda: self._drain(self.messages, token), stop)

    def close(self) -> None:
        self.closing = True
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - the broker is gone or going
            pass
        self.client.loop_stop()


class StompProbe(Probe):
    """stomp.py (over TCP, or WebSocket with ``websocket=True``): SEND a token to a queue
    the same client subscribed to, until the MESSAGE comes back (control mode: BEGIN and
    ABORT of a transaction, each with its RECEIPT)."""

    def __init__(self, listener: tuple[str, int], control: bool, websocket: bool) -> None:
        self.name = "web-stomp" if websocket else "stomp"
        self.control = control
        options = dict(
            host_and_ports=[listener], reconnect_attempts_max=1, heartbeats=(0, 0), vhost="/"
        )
        if websocket:
            self.conn = WSStompConnection(
                ws_path="/ws", header={"Sec-WebSocket-Protocol": "v12.stomp"}, **options
            )
        else:
            self.conn = stomppy.Connection12(**options)
        self.destination = f"/queue/canary-{self.name}-{uuid.uuid4().hex[:8]}"
        self.messages: queue.Queue[str] = queue.Queue()
        self.receipts: queue.Queue[str] = queue.Queue()
        self.connected = threading.Event()
        self.lost: str | None = None
        self.closing = False
        self.counter = 0
        self.conn.set_listener("canary", self)

    # stomp.py listener callbacks
    def on_connected(self, frame) -> None:
        self.connected.set()

    def on_message(self, frame) -> None:
        self.messages.put(frame.body)

    def on_receipt(self, frame) -> None:
        self.receipts.put(frame.headers.get("receipt-id", ""))

    def on_error(self, frame) -> None:
        self.lost = f"ERROR {frame.headers.get('message')}: {frame.body!r}"

    def on_disconnected(self) -> None:
        if not self.closing:
            self.lost = self.lost or "disconnected"

    def _receipt(self) -> str:
        self.counter += 1
        return f"canary-{self.counter}"

    def _wait(self, source: queue.Queue, wanted, stop: threading.Event) -> bool:
        while True:
            if self.lost:
                raise ProbeFailed(self.lost)
            if stop.is_set():
                return False
            try:
                if source.get(timeout=0.01) == wanted:
                    return True
            except queue.Empty:
                pass

    def open(self) -> None:
        self.conn.connect("guest", "guest", wait=False)
        if not self.connected.wait(START_WAIT):
            raise ProbeFailed(f"no CONNECTED ({self.lost})")
        receipt = self._receipt()
        self.conn.subscribe(self.destination, "canary", ack="auto", headers={"receipt": receipt})
        self._wait(self.receipts, receipt, threading.Event())

    def round_trip(self, stop: threading.Event) -> bool:
        try:
            if self.control:
                transaction = uuid.uuid4().hex
                receipt = self._receipt()
                self.conn.begin(transaction, headers={"receipt": receipt})
                if not self._wait(self.receipts, receipt, stop):
                    return False
                receipt = self._receipt()
                self.conn.abort(transaction, headers={"receipt": receipt})
                return self._wait(self.receipts, receipt, stop)
            token = uuid.uuid4().hex
            self.conn.send(self.destination, token)
            return self._wait(self.messages, token, stop)
        except StompException as error:
            raise ProbeFailed(f"stomp.py: {error!r}") from error

    def close(self) -> None:
        self.closing = True
        try:
            self.conn.transport.stop()
        except Exception:  # noqa: BLE001 - the broker is gone or going
            pass


@dataclass
class CanaryRecord:
    """What one canary client saw: when each round trip started and ended, failures, and
    the start of the round trip still under way (if any)."""

    name: str
    trips: list[tuple[float, float]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    pending_since: float | None = None


class CanaryThread:
    """Runs one probe's round trips every ``INTERVAL`` seconds on a daemon thread."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.record = CanaryRecord(probe.name)
        self.stop = threading.Event()
        self.finish = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"canary-{probe.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.probe.open()
        except Exception as error:  # noqa: BLE001 - recorded, judged by the test
            self.record.failures.append((time.monotonic(), f"could not connect: {error!r}"))
            self.started.set()
            return
        try:
            while not self.stop.is_set():
                began = time.monotonic()
                self.record.pending_since = began
                try:
                    completed = self.probe.round_trip(self.stop)
                except Exception as error:  # noqa: BLE001 - recorded, judged by the test
                    self.record.failures.append((time.monotonic(), repr(error)))
                    break
                if not completed:
                    break
                self.record.trips.append((began, time.monotonic()))
                self.record.pending_since = None
                self.started.set()
                pause_until = time.monotonic() + INTERVAL
                while time.monotonic() < pause_until and not self.stop.is_set():
                    self.probe.service()
            # Keep the connection serviced (a broker's close answered) until told to close.
            while not self.finish.is_set():
                self.probe.service()
        finally:
            self.started.set()
            try:
                self.probe.close()
            except Exception:  # noqa: BLE001 - the broker is gone
                pass


class Canary:
    """One ``CanaryThread`` per protocol against one broker."""

    def __init__(self, listeners: dict[str, tuple[str, int]], *, control: bool = False):
        probes: list[Probe] = [
            AmqpProbe(listeners["amqp"], control),
            MqttProbe(listeners["mqtt"], control, websocket=False),
            StompProbe(listeners["stomp"], control, websocket=False),
            MqttProbe(listeners["web-mqtt"], control, websocket=True),
            StompProbe(listeners["web-stomp"], control, websocket=True),
        ]
        self.threads = [CanaryThread(probe) for probe in probes]

    def start(self) -> None:
        """Starts every client and waits until each completed a first round trip."""
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + START_WAIT
        for thread in self.threads:
            thread.started.wait(max(0.0, deadline - time.monotonic()))
        problems = [
            f"{t.record.name}: {t.record.failures or 'no first round trip'}"
            for t in self.threads
            if not t.record.trips
        ]
        if problems:
            raise AssertionError("the canary could not start: " + "; ".join(problems))

    def completed_since(self, moment: float) -> bool:
        """Whether every client completed a round trip that began after ``moment``, or has
        failed (so waiting longer tells nothing more)."""
        return all(
            t.record.failures or any(began >= moment for began, _ in t.record.trips)
            for t in self.threads
        )

    def stop(self) -> None:
        """Stops the round trips (connections stay open and serviced)."""
        for thread in self.threads:
            thread.stop.set()

    def close(self) -> None:
        """Closes every client; waits a little for their threads."""
        for thread in self.threads:
            thread.stop.set()
            thread.finish.set()
        for thread in self.threads:
            thread.thread.join(timeout=5)

    def problems(self, watched_from: float, attack_end: float, now: float) -> list[str]:
        """What went wrong for each client between ``watched_from`` and ``now``: failures,
        a round trip (finished or still pending) or a silence longer than ``FREEZE_BOUND``,
        and no round trip begun after ``attack_end``."""
        found = []
        for thread in self.threads:
            record = thread.record
            name = record.name
            for at, failure in record.failures:
                found.append(f"{name} canary failed {at - watched_from:.1f} s in: {failure}")
            worst = max((end - began for began, end in record.trips), default=0.0)
            if record.pending_since is not None:
                worst = max(worst, now - record.pending_since)
            ends = [watched_from] + [end for _, end in record.trips] + [now]
            silence = max(b - a for a, b in itertools.pairwise(ends))
            if worst > FREEZE_BOUND or silence > FREEZE_BOUND + INTERVAL:
                found.append(
                    f"{name} canary stalled: worst round trip {worst:.1f} s, longest silence "
                    f"{silence:.1f} s (bound {FREEZE_BOUND} s)"
                )
            elif not record.failures and not any(began >= attack_end for began, _ in record.trips):
                found.append(f"{name} canary completed no round trip after the attack")
        return found

    def summary(self) -> str:
        parts = []
        for thread in self.threads:
            record = thread.record
            worst = max((end - began for began, end in record.trips), default=0.0)
            parts.append(f"{record.name}: {len(record.trips)} trips, worst {worst * 1000:.0f} ms")
        return "; ".join(parts)


class RssSampler:
    """Samples VmRSS of process ``pid`` on a daemon thread; ``peak`` is the largest seen, in
    bytes, and ``exceeded`` is set once it passes ``bound``."""

    def __init__(self, pid: int, bound: int = RSS_BOUND) -> None:
        self.pid = pid
        self.bound = bound
        self.peak = 0
        self.exceeded = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> int | None:
        """One reading now (also used by attacks that want the latest figure)."""
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                        self.peak = max(self.peak, rss)
                        if rss > self.bound:
                            self.exceeded.set()
                        return rss
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return None
        return None

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            if self.sample() is None:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
