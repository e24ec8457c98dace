"""Child processes the interop tests drive: the Junction broker and the example programs.

Both are watched the same way: a background thread reads the child's stdout line
by line, so a test can wait for a given line with a deadline (never a bare
sleep), and the child never blocks on a full pipe.

This module knows nothing about AMQP beyond the broker's command line, the
``listening amqp HOST:PORT`` / ``ready`` lines it prints (DESIGN.md §6), and
the connection parameters a pika client needs to reach it.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pika

#: Seconds the broker gets to print ``ready`` after it was started.
STARTUP_TIMEOUT = 20.0
#: Seconds the broker gets to exit after SIGTERM before it is killed.
SHUTDOWN_TIMEOUT = 10.0

_EOF = object()


class LineReader:
    """Reads a text stream line by line on a daemon thread, keeping every line."""

    def __init__(self, stream, name: str) -> None:
        self._lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(
            target=self._pump, args=(stream,), name=f"read-{name}", daemon=True
        )
        self._thread.start()

    def _pump(self, stream) -> None:
        try:
            for line in stream:
                line = line.rstrip("\r\n")
                self.seen.append(line)
                self._lines.put(line)
        except ValueError:
            pass  # the stream was closed under us while the process was torn down
        finally:
            self._lines.put(_EOF)

    def next_line(self, deadline: float) -> str | None:
        """The next line, or None at end of stream; TimeoutError once ``deadline`` passes."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            item = self._lines.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError from None
        if item is _EOF:
            self._lines.put(_EOF)  # stay at end of stream for later callers
            return None
        return item

    def text(self) -> str:
        return "\n".join(self.seen)


def _stop(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return process.returncode


class JunctionBroker:
    """One running broker process on an ephemeral AMQP port, with its own data dir.

    AMQP, MQTT, STOMP and the WebSocket listeners (``http``, ``web-mqtt``, ``web-stomp``)
    listen on ephemeral
    loopback ports; ``listeners`` maps each listener's name to its (host, port).
    """

    def __init__(
        self, binary: Path, data_dir: Path, log_path: Path, extra_args: list[str] | None = None
    ) -> None:
        self.binary = binary
        self.extra_args = list(extra_args or [])
        self.data_dir = data_dir
        self.log_path = log_path
        self.host: str | None = None
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.stdout: LineReader | None = None
        self.listeners: dict[str, tuple[str, int]] = {}

    def start(self, timeout: float = STARTUP_TIMEOUT) -> JunctionBroker:
        """Starts the broker and waits for its ``ready`` line; returns self."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.binary),
            "--data-dir",
            str(self.data_dir),
            "--amqp",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
            "--stomp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--web-stomp",
            "127.0.0.1:0",
            "--web-mqtt",
            "127.0.0.1:0",
            "--prometheus",
            "127.0.0.1:0",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.stdout = LineReader(self.process.stdout, "junction")

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.stdout.next_line(deadline)
            except TimeoutError:
                self.stop()
                raise RuntimeError(
                    f"junction printed no 'ready' line within {timeout} s\n{self.diagnostics()}"
                ) from None
            if line is None:
                code = self.process.wait(timeout=SHUTDOWN_TIMEOUT)
                raise RuntimeError(
                    f"junction exited with code {code} before 'ready'\n{self.diagnostics()}"
                )
            words = line.split()
            if words[:1] == ["listening"] and len(words) == 3:
                host, _, port = words[2].rpartition(":")
                self.listeners[words[1]] = (host.strip("[]"), int(port))
                if words[1] == "amqp":
                    self.host, self.port = host.strip("[]"), int(port)
            elif line == "ready":
                break
        if self.port is None:
            self.stop()
            raise RuntimeError(
                f"junction was ready without a 'listening amqp' line\n{self.diagnostics()}"
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def amqp_url(self) -> str:
        """The URL for pika's URLParameters and for the examples' ``AMQP_URL``."""
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    def pika_parameters(self, **overrides) -> pika.ConnectionParameters:
        """guest on vhost ``/``, failing fast instead of retrying; keywords override."""
        settings = dict(
            host=self.host,
            port=self.port,
            virtual_host="/",
            credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
            blocked_connection_timeout=10,
        )
        settings.update(overrides)
        return pika.ConnectionParameters(**settings)

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT) -> int | None:
        """Stops the broker with SIGTERM (SIGKILL after ``timeout``); returns its exit code."""
        if self.process is None:
            return None
        return _stop(self.process, timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def diagnostics(self) -> str:
        stdout = self.stdout.text() if self.stdout else ""
        return (
            f"command: {self.binary} --data-dir {self.data_dir} ...\n"
            f"--- stdout ---\n{stdout}\n--- stderr (tail of {self.log_path}) ---\n{self.log_tail()}"
        )


class ExampleProgram:
    """One of the tutorial programs in examples/python/, running as a child process.

    Its stdout is read line by line; stderr is kept for failure messages.
    """

    def __init__(self, script: Path, args: list[str], amqp_url: str) -> None:
        env = dict(os.environ, AMQP_URL=amqp_url, PYTHONUNBUFFERED="1")
        self.name = " ".join([script.name, *args])
        self.process = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=script.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout = LineReader(self.process.stdout, script.stem)
        self.stderr = LineReader(self.process.stderr, f"{script.stem}-err")

    def expect_line(self, matches: Callable[[str], bool] | str, timeout: float = 10.0) -> str:
        """Reads stdout until a line matches (a predicate, or a prefix); returns that line."""
        if isinstance(matches, str):
            prefix = matches
            matches = lambda line: line.startswith(prefix)  # noqa: E731
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.stdout.next_line(deadline)
            except TimeoutError:
                raise AssertionError(
                    f"{self.name}: no matching line within {timeout} s\n{self.diagnostics()}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"{self.name}: exited ({self.process.wait()}) without a matching line\n"
                    f"{self.diagnostics()}"
                )
            if matches(line):
                return line

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits for the ``Waiting ...`` line every consumer prints once it can receive."""
        self.expect_line("Waiting", timeout)

    def finish(self, timeout: float = 10.0) -> list[str]:
        """Waits for the program to exit with code 0; returns all of its stdout lines."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name}: still running after {timeout} s\n{self.diagnostics()}"
            ) from None
        # Let the reader threads reach end of stream so no line is missed.
        deadline = time.monotonic() + 5
        while self.stdout.next_line(deadline) is not None:
            pass
        assert code == 0, f"{self.name}: exit code {code}\n{self.diagnostics()}"
        return list(self.stdout.seen)

    def kill(self) -> None:
        """SIGKILL: the process dies without closing its connection."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=SHUTDOWN_TIMEOUT)

    def stop(self) -> None:
        _stop(self.process, SHUTDOWN_TIMEOUT)

    def diagnostics(self) -> str:
        return f"--- stdout ---\n{self.stdout.text()}\n--- stderr ---\n{self.stderr.text()}"
