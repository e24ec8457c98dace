"""Sending as much as the broker will read, for the memory attacks.

``pump`` writes a chunk of bytes over and over (or up to ``total`` bytes) on a non-blocking
socket, keeping frame boundaries intact however the kernel cuts the writes, and stops when
the time is up, the total is sent, the caller's ``stop`` says so (the broker's memory passed
its bound), the broker closes the connection, or it stops reading for ``stall`` seconds (what
a broker that bounds a client's memory does). ``pump_many`` does that on many fresh
connections at once, each holding its connection open afterwards.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass
class Pumped:
    """How much went out on one connection and why sending stopped."""

    sent: int
    ended: str


def pump(
    sock: socket.socket,
    chunk: bytes,
    *,
    total: int | None = None,
    seconds: float = 8.0,
    stall: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
) -> Pumped:
    """Sends ``chunk`` repeatedly (at most ``total`` bytes in all) on ``sock``."""
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    whole = memoryview(chunk)
    pending = whole
    sent = 0
    started = last_progress = time.monotonic()
    while True:
        now = time.monotonic()
        if stop():
            return Pumped(sent, "the broker's memory passed its bound")
        if total is not None and sent >= total:
            return Pumped(sent, "all sent")
        if now - started >= seconds:
            return Pumped(sent, "time up")
        if now - last_progress >= stall:
            return Pumped(sent, "the broker stopped reading")
        events = poller.poll(50)
        if not events:
            continue
        if any(flags & (select.POLLERR | select.POLLHUP) for _, flags in events):
            return Pumped(sent, "the broker closed the connection")
        piece = pending if total is None else pending[: total - sent]
        try:
            written = sock.send(piece)
        except BlockingIOError:
            continue
        except OSError as error:
            return Pumped(sent, f"the broker closed the connection ({error})")
        sent += written
        last_progress = time.monotonic()
        pending = pending[written:]
        if not pending:
            pending = whole


def pump_many(
    count: int,
    open_connection: Callable[[int], socket.socket],
    chunk: bytes,
    *,
    total: int,
    stall: float,
    seconds: float,
    stop: Callable[[], bool],
    trailer: bytes = b"",
    workers: int = 16,
) -> tuple[list[socket.socket], list[Pumped]]:
    """``count`` connections from ``open_connection(i)``, each pumped with up to ``total``
    bytes of ``chunk`` and then ``trailer`` (``workers`` at a time); stops opening more once
    ``stop`` says so. Returns the sockets (still open, for the caller to close) and what each
    one sent."""
    sockets: list[socket.socket] = []
    results: list[Pumped] = []
    deadline = time.monotonic() + seconds

    def one(i: int) -> Pumped:
        if stop() or time.monotonic() >= deadline:
            return Pumped(0, "not started")
        try:
            sock = open_connection(i)
        except OSError as error:
            return Pumped(0, f"could not connect ({error})")
        sockets.append(sock)
        remaining = max(0.1, deadline - time.monotonic())
        pumped = pump(sock, chunk, total=total, seconds=remaining, stall=stall, stop=stop)
        if pumped.ended == "all sent" and trailer:
            try:
                sock.settimeout(stall)
                sock.sendall(trailer)
            except OSError as error:
                pumped.ended = f"the trailer was not taken ({error})"
        return pumped

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, range(count)))
    return sockets, results


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        try:
            sock.close()
        except OSError:
            pass
