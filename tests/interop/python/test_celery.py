"""A real Celery deployment on Junction: a worker process (``celery worker``, solo pool) and
the ``rpc://`` result backend, with the tasks of ``celery_app.py``.

What Celery needs from the broker here is RabbitMQ's extensions as much as AMQP itself: the
result backend's reply queue is declared with ``x-expires``; a retry with ``countdown`` is a
message the worker holds unacknowledged until its ETA, raising its prefetch with
``basic.qos``; the task queue has ``x-max-priority`` and dead-letters what a task rejects;
remote control (``celery inspect``) goes through the ``celery.pidbox`` fanout exchange to an
exclusive worker queue declared with ``x-message-ttl`` and ``x-expires``, and the answer
comes back through ``reply.celery.pidbox`` into a reply queue with the same arguments;
monitoring (``celery events``) reads the ``celeryev`` topic exchange through a queue with
the same arguments again.

One worker serves the whole module, on a queue of its own (so nothing else on the shared
broker is touched), and is stopped at the end: SIGTERM (Celery's warm shutdown), a bounded
wait, then SIGKILL. Every wait has a deadline; a failure shows the worker's output.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import amqp.exceptions
import kombu
import kombu.pools
import pytest
from celery.exceptions import TimeoutError as CeleryTimeout

import celery_app
from messages import wait_until
from processes import SHUTDOWN_TIMEOUT, JunctionBroker, LineReader

HERE = Path(__file__).resolve().parent
#: Seconds the worker gets to log ``<name> ready.`` after it was started.
WORKER_STARTUP_TIMEOUT = 30.0
#: Seconds a task result may take to come back.
RESULT_TIMEOUT = 15.0


class CeleryWorker:
    """``celery -A <app> worker`` as a child process, its output read line by line."""

    def __init__(
        self,
        env: dict[str, str],
        name: str,
        queue: str,
        log_path: Path,
        app: str = "celery_app",
    ) -> None:
        self.env = env
        self.name = name
        self.queue = queue
        self.log_path = log_path
        command = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle",
            "--loglevel=INFO", "-n", name, "-Q", queue,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = LineReader(self.process.stdout, "celery-worker")

    def wait_ready(self, timeout: float = WORKER_STARTUP_TIMEOUT) -> None:
        """Waits for the worker's ``<name> ready.`` log line (all its consumers are up)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.output.next_line(deadline)
            except TimeoutError:
                raise AssertionError(
                    f"the celery worker was not ready within {timeout} s\n{self.diagnostics()}"
                ) from None
            if line is None:
                code = self.process.wait(timeout=SHUTDOWN_TIMEOUT)
                raise AssertionError(
                    f"the celery worker exited with code {code} before it was ready\n"
                    f"{self.diagnostics()}"
                )
            if line.endswith(f"{self.name} ready."):
                return

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT) -> int:
        """SIGTERM (warm shutdown), up to ``timeout`` seconds, then SIGKILL; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self.log_path.write_text(self.output.text() + "\n")
        return self.process.returncode

    def diagnostics(self) -> str:
        state = "running" if self.running else f"exited with {self.process.returncode}"
        return f"--- celery worker {self.name} ({state}) output ---\n{self.output.text()}"


@contextlib.contextmanager
def running_worker(
    broker: JunctionBroker,
    tmp_path_factory: pytest.TempPathFactory,
    application: ModuleType,
    label: str,
) -> Iterator[CeleryWorker]:
    """A worker of ``application`` (a module with ``app`` and ``settings``) on a queue of its
    own, the test process's app configured for the same broker and queue; stopped at the end,
    failing the test module if it died or did not stop cleanly."""
    run = uuid.uuid4().hex[:8]
    queue = f"{label}-{run}"
    name = f"junction-{run}@{socket.gethostname()}"
    env = dict(
        os.environ,
        JUNCTION_CELERY_BROKER=f"amqp://guest:guest@{broker.host}:{broker.port}//",
        JUNCTION_CELERY_BACKEND="rpc://",
        JUNCTION_CELERY_QUEUE=queue,
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    application.app.conf.update(application.settings(env))
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    started = CeleryWorker(env, name, queue, log_path, app=application.__name__)
    try:
        started.wait_ready()
        yield started
    finally:
        died = not started.running
        code = started.stop()
        _close_client(application.app)
    # SIGTERM is a warm shutdown, which Celery ends with exit code 0.
    if died or code != 0:
        pytest.fail(
            f"the celery worker {'died during the tests' if died else 'did not stop cleanly'} "
            f"(exit code {code})\n{started.diagnostics()}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def worker(
    broker: JunctionBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """One worker for the module, on a queue of its own."""
    with running_worker(broker, tmp_path_factory, celery_app, "test_celery-tasks") as started:
        yield started


def _close_client(app) -> None:
    """Closes the test process's connections to the broker, so that none is left for the
    broker to wait on when it stops: the result consumer's, the remote-control pool's and
    kombu's producer pool that tasks were sent through."""
    results = app.backend.result_consumer
    if getattr(results, "_consumer", None) is not None:
        results.stop()
    app.pool.force_close_all()
    kombu.pools.reset()


def _result(worker: CeleryWorker, pending, timeout: float = RESULT_TIMEOUT):
    """``pending.get()`` within ``timeout`` seconds, with the worker's output on a timeout."""
    try:
        return pending.get(timeout=timeout)
    except CeleryTimeout:
        raise AssertionError(
            f"no result for task {pending.id} within {timeout} s\n{worker.diagnostics()}"
        ) from None


def _celery(worker: CeleryWorker, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Runs the ``celery -A celery_app`` command line with the worker's environment."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", "celery_app", *args],
            cwd=HERE,
            env=worker.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(
            f"`celery {' '.join(args)}` still running after {timeout} s\n"
            f"stdout: {expired.stdout}\nstderr: {expired.stderr}\n{worker.diagnostics()}"
        ) from None


# --- tasks and results -------------------------------------------------------------


def test_a_task_runs_on_the_worker_and_its_result_comes_back(worker):
    assert _result(worker, celery_app.add.delay(2, 3)) == 5

    ran = _result(worker, celery_app.where.apply_async(priority=7))
    assert ran == {"hostname": worker.name, "routing_key": worker.queue, "priority": 7}


def test_many_tasks_in_flight_at_once_all_answer(worker):
    pending = [celery_app.add.delay(i, i) for i in range(20)]

    assert [_result(worker, p) for p in pending] == [2 * i for i in range(20)]


def test_a_failing_task_raises_its_exception_in_the_caller(worker):
    pending = celery_app.fail.delay("broken on purpose")

    with pytest.raises(ValueError, match="broken on purpose"):
        _result(worker, pending)
    assert pending.state == "FAILURE"


def test_a_retry_with_countdown_succeeds_after_its_retries(worker):
    started = time.monotonic()
    pending = celery_app.flaky.delay(2)

    assert _result(worker, pending, timeout=30) == 2
    # Two retries, each held by the worker until its ETA one second later.
    assert time.monotonic() - started >= 1.9
    assert pending.state == "SUCCESS"


# --- the queue's arguments ---------------------------------------------------------


def test_a_task_that_rejects_its_message_is_dead_lettered_by_the_broker(worker):
    """``Reject(requeue=False)`` from an ``acks_late`` task is a ``basic.reject``; the queue's
    ``x-dead-letter-exchange`` (the default exchange) and ``x-dead-letter-routing-key`` take
    the task message, with ``x-death``, to ``<queue>.dead``."""
    name = celery_app.dead_letter_queue(worker.queue)
    with celery_app.app.connection_for_write() as conn:
        channel = conn.channel()
        dead = kombu.Queue(name, kombu.Exchange(""), routing_key=name, durable=False)(channel)
        dead.declare()
        pending = celery_app.refuse.delay()

        letters: list[kombu.Message] = []

        def arrived() -> bool:
            if (message := dead.get(no_ack=True)) is not None:
                letters.append(message)
            return bool(letters)

        try:
            wait_until(arrived, message=f"a dead letter in {name!r}")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{worker.diagnostics()}") from None
        dead.delete()

    [letter] = letters
    assert letter.headers["task"] == "celery_app.refuse"
    assert letter.headers["id"] == pending.id
    [death] = letter.headers["x-death"]
    assert death["reason"] == "rejected"
    assert death["queue"] == worker.queue
    # Celery sends to a direct exchange's queue through the default exchange.
    assert death["exchange"] == ""
    assert death["routing-keys"] == [worker.queue]
    assert death["count"] == 1


# --- remote control ----------------------------------------------------------------


def test_celery_inspect_ping_gets_pong_from_the_worker(worker):
    done = _celery(worker, "inspect", "ping", "-d", worker.name, "--timeout", "10", "--json")

    details = f"stdout: {done.stdout}\nstderr: {done.stderr}\n{worker.diagnostics()}"
    assert done.returncode == 0, details
    replies = json.loads(done.stdout.strip().splitlines()[-1])
    assert replies == {worker.name: {"ok": "pong"}}, details


def test_inspect_active_queues_names_the_worker_queue(worker):
    replies = celery_app.app.control.inspect(destination=[worker.name], timeout=10).active_queues()

    assert replies is not None, f"no reply to inspect active_queues\n{worker.diagnostics()}"
    assert [q["name"] for q in replies[worker.name]] == [worker.queue]


def test_the_worker_mailbox_queue_is_exclusive_to_the_worker(worker):
    """The queue remote control reaches the worker through, ``<name>.celery.pidbox`` (bound
    to the ``celery.pidbox`` fanout exchange, with ``x-message-ttl`` and ``x-expires``), is
    exclusive to the worker's connection since Celery 5.5: another connection declaring it
    is refused with 405 and RabbitMQ's text, and the worker keeps answering."""
    declared = celery_app.app.control.mailbox.get_queue(worker.name)
    assert (declared.exclusive, declared.message_ttl, declared.expires) == (True, 300.0, 10.0)

    with celery_app.app.connection_for_write() as conn:
        with pytest.raises(amqp.exceptions.ResourceLocked) as refused:
            declared(conn.channel()).queue_declare()

    assert refused.value.reply_code == 405
    assert (
        f"cannot obtain exclusive access to locked queue '{declared.name}' in vhost '/'"
        in str(refused.value)
    )
    replies = celery_app.app.control.ping(destination=[worker.name], timeout=10)
    assert replies == [{worker.name: {"ok": "pong"}}], worker.diagnostics()


def test_a_monitor_receives_the_worker_events(worker):
    """What ``celery events`` and Flower do: an event receiver's queue (``x-message-ttl``,
    ``x-expires``) bound to the ``celeryev`` topic exchange gets the worker's heartbeat (the
    receiver wakes the workers up through ``celery.pidbox``) and, once events are enabled
    over remote control, the events of a task from received to succeeded."""
    app = celery_app.app
    replies = app.control.enable_events(destination=[worker.name], reply=True, timeout=10)
    assert replies == [{worker.name: {"ok": "task events enabled"}}], worker.diagnostics()
    seen: list[dict] = []
    pending = []
    deadline = time.monotonic() + 20

    def on_event(event: dict) -> None:
        if event.get("hostname") != worker.name:
            return
        seen.append(event)
        if event["type"] == "worker-heartbeat" and not pending:
            # The receiver is consuming: now send a task whose events it must see.
            pending.append(celery_app.add.delay(20, 22))
        finished = pending and any(
            e["type"] == "task-succeeded" and e["uuid"] == pending[0].id for e in seen
        )
        if finished or time.monotonic() > deadline:
            receiver.should_stop = True

    try:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": on_event})
            try:
                receiver.capture(limit=None, timeout=20, wakeup=True)
            except socket.timeout:
                raise AssertionError(
                    f"no event at all within 20 s; seen: {seen}\n{worker.diagnostics()}"
                ) from None
    finally:
        app.control.disable_events(destination=[worker.name], reply=True, timeout=10)

    assert pending, f"no worker-heartbeat event from {worker.name}\n{worker.diagnostics()}"
    task_events = [e["type"] for e in seen if e.get("uuid") == pending[0].id]
    assert task_events == ["task-received", "task-started", "task-succeeded"], seen
    assert _result(worker, pending[0]) == 42
