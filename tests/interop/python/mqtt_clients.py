"""paho-mqtt clients for the interop tests, wrapped so a test can wait on events with a
deadline (never a bare sleep): the CONNACK, a SUBACK, a publication's completion, the next
message, the disconnect.

``MqttClient`` is a thin layer over ``paho.mqtt.client.Client`` (callback API 2): every
callback is recorded in a thread-safe queue or event, and the wrapped client stays available
as ``.paho`` for anything the layer does not cover.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as paho

#: Seconds a test waits for an event the broker should produce promptly.
WAIT = 10.0


@dataclass
class Received:
    """A message as the subscriber saw it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int


class MqttClient:
    """One paho client with its events recorded.

    ``listener`` is ``(host, port)``; ``transport`` is ``"tcp"`` or ``"websockets"`` (then
    ``ws_path`` applies). ``manual_ack`` leaves PUBACK/PUBREC to ``ack()``.
    """

    def __init__(
        self,
        listener: tuple[str, int],
        client_id: str = "",
        *,
        clean_session: bool = True,
        username: str | None = "guest",
        password: str | None = "guest",
        transport: str = "tcp",
        ws_path: str = "/ws",
        manual_ack: bool = False,
    ) -> None:
        self.listener = listener
        self.paho = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            transport=transport,
            protocol=paho.MQTTv311,
            manual_ack=manual_ack,
        )
        if transport == "websockets":
            self.paho.ws_set_options(path=ws_path)
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connack: queue.Queue[tuple[int, bool]] = queue.Queue()
        self.subacks: dict[int, list[int]] = {}
        self.unsubacks: set[int] = set()
        self.disconnected = threading.Event()
        self._acked = threading.Condition()
        self.paho.on_connect = self._on_connect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_unsubscribe = self._on_unsubscribe
        self.paho.on_disconnect = self._on_disconnect

    # paho callbacks (on paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack.put((reason_code.value, bool(flags.session_present)))

    def _on_message(self, client, userdata, message) -> None:
        self.messages.put(
            Received(
                message.topic,
                message.payload,
                message.qos,
                bool(message.retain),
                bool(message.dup),
                message.mid,
            )
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._acked:
            self.subacks[mid] = [code.value for code in reason_codes]
            self._acked.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._acked:
            self.unsubacks.add(mid)
            self._acked.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnected.set()

    # what tests call
    def will_set(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False):
        self.paho.will_set(topic, payload, qos=qos, retain=retain)
        return self

    def connect(self, keepalive: int = 60, expect: int = 0) -> bool:
        """Connects and waits for the CONNACK; asserts its return code is ``expect``.
        Returns the session-present flag."""
        self.disconnected.clear()
        self.paho.connect(self.listener[0], self.listener[1], keepalive=keepalive)
        self.paho.loop_start()
        try:
            code, session_present = self.connack.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("no CONNACK within the deadline") from None
        assert code == expect, f"CONNACK return code {code}, expected {expect}"
        return session_present

    def subscribe(self, *filters: tuple[str, int]) -> list[int]:
        """Subscribes and waits for the SUBACK; returns its return codes."""
        result, mid = self.paho.subscribe(list(filters))
        assert result == paho.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self.subacks, timeout=WAIT):
                raise AssertionError("no SUBACK within the deadline")
            return self.subacks[mid]

    def unsubscribe(self, *filters: str) -> None:
        result, mid = self.paho.unsubscribe(list(filters))
        assert result == paho.MQTT_ERR_SUCCESS
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self.unsubacks, timeout=WAIT):
                raise AssertionError("no UNSUBACK within the deadline")

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False):
        """Publishes and waits until the broker acknowledged it (QoS 1: PUBACK, QoS 2:
        PUBCOMP) or, for QoS 0, until it was written."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), f"publication to {topic} not acknowledged in time"
        return info

    def expect_message(self, timeout: float = WAIT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message within the deadline") from None

    def expect_no_message(self, within: float = 1.0) -> None:
        """Asserts nothing arrives for ``within`` seconds (used after a later message was
        already seen, or as a bounded negative check)."""
        try:
            message = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {message}")

    def ack(self, mid: int, qos: int) -> None:
        self.paho.ack(mid, qos)

    def wait_disconnected(self, timeout: float = WAIT) -> None:
        assert self.disconnected.wait(timeout), "the broker did not close the connection"

    def disconnect(self) -> None:
        """A clean DISCONNECT (no will)."""
        self.paho.disconnect()
        self.disconnected.wait(WAIT)
        self.paho.loop_stop()

    def drop(self) -> None:
        """Closes the socket without DISCONNECT (the will is published)."""
        self.paho.loop_stop()
        sock = self.paho.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Stops the client whatever its state (fixture teardown)."""
        try:
            self.paho.disconnect()
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.paho.loop_stop()


def wait_until(condition, timeout: float = WAIT, interval: float = 0.05) -> None:
    """Polls ``condition`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        time.sleep(interval)
