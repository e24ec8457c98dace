"""Fixtures for the adversarial suite: a broker per attack, watched by the canary.

The broker is the binary named by ``JUNCTION_BIN`` (default ``<repo>/target/release/junction``:
the suite is meant for the release build, ``scripts/adversarial.sh`` builds it). It is started
through the interop suite's ``processes.JunctionBroker`` (port 0 on every listener, its own
data directory and log) with ``ADVERSARIAL_CONFIG``, which adds users with narrow permissions
for the authorization attacks.

``arena`` gives each test an ``Arena``: ``arena.start(...)`` starts the broker, the memory
sampler and the canary; the attack runs inside ``with arena.attack():``; then
``arena.assert_survived()`` checks the broker process is alive, every canary client kept
completing round trips throughout and after, and resident memory stayed under its bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "interop" / "python"))

from processes import JunctionBroker  # noqa: E402

from canary import FREEZE_BOUND, RSS_BOUND, Canary, RssSampler  # noqa: E402

# pika logs every connection the broker closes or loses at ERROR; here that is expected (a
# dying broker, the shutdown at the end of each test) and the arena reports what matters.
logging.getLogger("pika").setLevel(logging.CRITICAL)

#: Seconds the broker gets to exit on SIGTERM at the end of a test before SIGKILL (a frozen
#: broker is not waited for long).
STOP_WAIT = 5.0

#: Seconds the canary keeps being watched after an attack before the verdict, so an effect
#: that comes a little after the attack's last byte (a crash, a freeze) is seen.
SETTLE = 1.0

#: Users for the attacks: guest (everything, loopback only, as by default); alice (everything);
#: mallory (``^$``: nothing); reader (read only); carol (configure and read everything, write
#: only ``carol-*``); writer (write and read everything, configure nothing).
ADVERSARIAL_CONFIG = """
[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "alice"
password = "alice-secret"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "mallory"
password = "mallory-secret"
permissions = [{ vhost = "/", configure = "^$", write = "^$", read = "^$" }]

[[users]]
name = "reader"
password = "reader-secret"
permissions = [{ vhost = "/", configure = "^$", write = "^$", read = ".*" }]

[[users]]
name = "carol"
password = "carol-secret"
permissions = [{ vhost = "/", configure = ".*", write = "^carol-", read = ".*" }]

[[users]]
name = "writer"
password = "writer-secret"
permissions = [{ vhost = "/", configure = "^$", write = ".*", read = ".*" }]
"""


@pytest.fixture(scope="session")
def junction_bin() -> Path:
    binary = Path(os.environ.get("JUNCTION_BIN", REPO_ROOT / "target" / "release" / "junction"))
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"no broker executable at {binary}: build it with "
            "`cargo build --release -p junction` or point JUNCTION_BIN at one",
            pytrace=False,
        )
    return binary


class Arena:
    """One attack's broker, canary and memory sampler (see the module documentation)."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.broker: JunctionBroker | None = None
        self.canary: Canary | None = None
        self.rss: RssSampler | None = None
        self.watched_from = 0.0
        self.attack_began: float | None = None
        self.attack_ended: float | None = None

    def start(
        self,
        config: str = "",
        *,
        control_canary: bool = False,
        open_files: int | None = None,
        canary: bool = True,
    ) -> JunctionBroker:
        """Starts the broker with ``ADVERSARIAL_CONFIG`` plus ``config`` (TOML), then the
        memory sampler and (unless ``canary=False``) the canary; ``control_canary`` makes the
        canary publish nothing (for a broker whose memory alarm holds publishers).
        ``open_files`` starts the broker with that soft RLIMIT_NOFILE (the hard limit kept),
        as a system with the usual default of 1024 would."""
        config_path = self.directory / "junction.toml"
        config_path.write_text(ADVERSARIAL_CONFIG + "\n" + config)
        self.broker = JunctionBroker(
            self.binary,
            self.directory / "data",
            self.directory / "junction.log",
            ["--config", str(config_path)],
        )
        with _soft_open_files(open_files):
            self.broker.start()
        assert self.broker.process is not None
        self.rss = RssSampler(self.broker.process.pid).start()
        if canary:
            self.canary = Canary(self.broker.listeners, control=control_canary)
            self.canary.start()
        self.watched_from = time.monotonic()
        return self.broker

    @property
    def listeners(self) -> dict[str, tuple[str, int]]:
        assert self.broker is not None
        return self.broker.listeners

    def memory_exceeded(self) -> bool:
        """Whether the broker's resident memory has passed ``RSS_BOUND`` (attacks that grow
        memory stop then)."""
        return self.rss is not None and self.rss.exceeded.is_set()

    def broker_alive(self) -> bool:
        return self.broker is not None and self.broker.running

    @contextlib.contextmanager
    def attack(self) -> Iterator[None]:
        """Marks the attack's start and end for the canary's judgement."""
        self.attack_began = time.monotonic()
        try:
            yield
        finally:
            self.attack_ended = time.monotonic()

    def assert_survived(self) -> None:
        """After the attack: the broker is alive, every canary client completed a round trip
        begun ``SETTLE`` seconds after the attack and none stalled for longer than
        ``FREEZE_BOUND`` at any time, and the broker's resident memory never passed
        ``RSS_BOUND``."""
        __tracebackhide__ = True  # the message says it all; show the test's line only
        assert self.broker is not None and self.rss is not None
        attack_end = self.attack_ended or time.monotonic()
        settled = attack_end + SETTLE
        deadline = settled + FREEZE_BOUND + 1.0
        while time.monotonic() < deadline and self.broker.running:
            if time.monotonic() >= settled and (
                self.canary is None or self.canary.completed_since(settled)
            ):
                break
            time.sleep(0.05)
        now = time.monotonic()
        if self.canary is not None:
            self.canary.stop()
        self.rss.sample()
        problems = []
        if not self.broker.running:
            code = self.broker.process.poll() if self.broker.process else None
            problems.append(f"the broker died (exit code {code})")
        if self.canary is not None and self.broker.running:
            problems += self.canary.problems(self.watched_from, settled, now)
        if self.rss.peak > RSS_BOUND:
            problems.append(
                f"broker VmRSS peaked at {self.rss.peak / 2**20:.1f} MiB "
                f"(bound {RSS_BOUND / 2**20:.0f} MiB)"
            )
        took = attack_end - (self.attack_began or attack_end)
        print(
            f"\n[arena] attack {took:.1f} s; VmRSS peak {self.rss.peak / 2**20:.0f} MiB; "
            f"canary: {self.canary.summary() if self.canary else 'none'}"
        )
        if problems:
            raise AssertionError(
                "the broker did not withstand the attack:\n  "
                + "\n  ".join(problems)
                + f"\ncanary: {self.canary.summary() if self.canary else 'none'}"
                + f"\n--- broker log tail ({self.broker.log_path}) ---\n{self.broker.log_tail(12)}"
            )

    def close(self) -> None:
        if self.rss is not None:
            self.rss.stop()
        if self.broker is not None:
            self.broker.stop(timeout=STOP_WAIT)
        if self.canary is not None:
            self.canary.close()


@contextlib.contextmanager
def _soft_open_files(limit: int | None) -> Iterator[None]:
    """Lowers this process's soft RLIMIT_NOFILE to ``limit`` for the duration, so a child
    started inside inherits it; restores it afterwards."""
    if limit is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def arena(junction_bin: Path, request: pytest.FixtureRequest) -> Iterator[Arena]:
    """An ``Arena`` in a directory of its own (data and log), removed after a test that
    passed and kept, for its log, after one that failed. Not pytest's ``tmp_path``: pytest
    prunes all but its three newest session directories, so other pytest runs on the same
    machine would remove ours under a running suite."""
    directory = Path(tempfile.mkdtemp(prefix=f"junction-adversarial-{request.node.name[:60]}-"))
    current = Arena(junction_bin, directory)
    yield current
    current.close()
    report = getattr(request.node, "adversarial_report", None)
    if report is not None and report.passed:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps the call phase's report on the test item, for the ``arena`` fixture."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.adversarial_report = report
