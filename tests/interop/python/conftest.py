"""Fixtures for the Python interop suite: a real Junction broker and pika clients.

The broker under test is the binary named by ``JUNCTION_BIN`` (default
``<repo>/target/debug/junction``; build it with ``cargo build -p junction``).

* ``broker`` is one broker shared by the whole session. Tests that use it keep
  out of each other's way by naming every queue and exchange with ``names``.
* ``start_broker`` starts private brokers for tests that stop or restart one.
* ``connect`` opens pika connections to the shared broker and closes whatever
  is still open when the test ends; ``connection`` and ``channel`` are the
  common case of one of each, and ``parameters`` serves connections that a
  test opens itself (in another thread, say).
* ``examples`` runs the tutorial programs of ``examples/python/`` against the
  shared broker.
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from mqtt_clients import MqttClient
from processes import ExampleProgram, JunctionBroker

# The raw-bytes MQTT fixtures (`raw`, `raw_ws`) live beside the raw client they make.
pytest_plugins = ["mqtt_raw", "stomp_clients"]

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLES_DIR = REPO_ROOT / "examples" / "python"


@pytest.fixture(scope="session")
def junction_bin() -> Path:
    binary = Path(os.environ.get("JUNCTION_BIN", REPO_ROOT / "target" / "debug" / "junction"))
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"no broker executable at {binary}: build it with `cargo build -p junction` "
            "or point JUNCTION_BIN at one",
            pytrace=False,
        )
    return binary


@pytest.fixture(scope="session")
def broker(
    junction_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JunctionBroker]:
    root = tmp_path_factory.mktemp("junction-shared")
    shared = JunctionBroker(junction_bin, root / "data", root / "junction.log").start()
    _running_brokers.append(shared)
    yield shared
    _running_brokers.remove(shared)
    died = not shared.running
    code = shared.stop()
    if died:
        pytest.fail(
            f"the shared broker died during the session (exit code {code})\n{shared.diagnostics()}",
            pytrace=False,
        )


@pytest.fixture
def start_broker(junction_bin: Path, tmp_path: Path) -> Iterator[Callable[..., JunctionBroker]]:
    """Starts a private broker; pass ``data_dir`` to reuse one (a restart), ``extra_args``
    for more command-line arguments (``["--config", path]``)."""
    started: list[JunctionBroker] = []
    counter = itertools.count(1)

    def start(data_dir: Path | None = None, extra_args: list[str] | None = None) -> JunctionBroker:
        n = next(counter)
        private = JunctionBroker(
            junction_bin,
            data_dir or tmp_path / f"data-{n}",
            tmp_path / f"junction-{n}.log",
            extra_args,
        ).start()
        started.append(private)
        _running_brokers.append(private)
        return private

    yield start
    for private in started:
        _running_brokers.remove(private)
        private.stop()


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Makes names unique to this test run: ``names("q")`` -> ``test_x-q-1a2b3c4d``."""
    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]

    def unique(role: str) -> str:
        return f"{test}-{role}-{uuid.uuid4().hex[:8]}"

    return unique


@pytest.fixture
def parameters(broker: JunctionBroker) -> pika.ConnectionParameters:
    """Connection parameters for the shared broker, for connections a test opens itself."""
    return broker.pika_parameters()


@pytest.fixture
def connect(broker: JunctionBroker) -> Iterator[Callable[..., pika.BlockingConnection]]:
    """Opens connections to the shared broker; keyword arguments override parameters."""
    opened: list[pika.BlockingConnection] = []

    def open_connection(**overrides) -> pika.BlockingConnection:
        conn = pika.BlockingConnection(broker.pika_parameters(**overrides))
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        if conn.is_open:
            try:
                conn.close()
            except pika.exceptions.AMQPError:
                pass  # already going away; the test has what it needs


@pytest.fixture
def connection(connect) -> pika.BlockingConnection:
    return connect()


@pytest.fixture
def channel(connection: pika.BlockingConnection) -> BlockingChannel:
    return connection.channel()


@pytest.fixture
def examples(broker: JunctionBroker) -> Iterator[Callable[..., ExampleProgram]]:
    """Starts ``examples/python/<script>`` with ``AMQP_URL`` set to the shared broker."""
    started: list[ExampleProgram] = []

    def start(script: str, *args: str) -> ExampleProgram:
        program = ExampleProgram(EXAMPLES_DIR / script, list(args), broker.amqp_url)
        started.append(program)
        return program

    yield start
    for program in started:
        program.stop()


@pytest.fixture
def mqtt(broker: JunctionBroker) -> Iterator[Callable[..., MqttClient]]:
    """Makes paho clients for the shared broker (not yet connected):
    ``mqtt(client_id, listener="mqtt", **options)``; ``listener`` names one of the broker's
    listeners (``mqtt``, ``web-mqtt``, ``http``), or pass ``target=other_broker``. Every
    client is stopped when the test ends."""
    made: list[MqttClient] = []

    def make(
        client_id: str = "",
        listener: str = "mqtt",
        target: JunctionBroker | None = None,
        **options,
    ) -> MqttClient:
        chosen = target or broker
        if listener != "mqtt":
            options.setdefault("transport", "websockets")
        client = MqttClient(chosen.listeners[listener], client_id, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# Brokers running right now, so a failing test's report can show their logs.
_running_brokers: list[JunctionBroker] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        for running in _running_brokers:
            report.sections.append((f"junction log tail ({running.log_path})", running.log_tail()))
