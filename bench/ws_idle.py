#!/usr/bin/env python3
"""Idle logged-in WebSocket connections: what each costs the broker (issue 13, defect 12).

For each of MQTT over WebSocket (web-mqtt listener, CONNECT with keep-alive 0) and STOMP over
WebSocket (web-stomp listener, CONNECT with heart-beat 0,0) it starts BINARY (default
target/release/junction, else target/debug/junction) afresh on free loopback ports with a
fresh data directory (memory freed by one run would hide the next one's), opens WARM
connections (allocator and runtime warm-up, not counted), reads the
broker's VmRSS, opens N more (default 1000), holds them HOLD seconds, reads VmRSS again and
prints the slope (KiB per connection), then closes them. Not part of the test run; results
go to bench/RESULTS.md. Needs websocket-client (tests/interop/python/requirements.txt).

Usage: bench/ws_idle.py [--binary PATH] [--connections N] [--warm W] [--hold S]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websocket

ROOT = Path(__file__).resolve().parent.parent


def mqtt_connect(client_id: str) -> bytes:
    def string(text: str) -> bytes:
        data = text.encode()
        return len(data).to_bytes(2, "big") + data

    variable = string("MQTT") + bytes([4, 0xC2]) + (0).to_bytes(2, "big")
    payload = string(client_id) + string("guest") + string("guest")
    body = variable + payload
    return bytes([0x10, len(body)]) + body


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_mqtt(address: tuple[str, int], n: int) -> websocket.WebSocket:
    ws = websocket.create_connection(
        f"ws://{address[0]}:{address[1]}/ws", timeout=30, subprotocols=["mqtt"]
    )
    ws.send_binary(mqtt_connect(f"idle-{n}"))
    connack = ws.recv()
    assert connack == b"\x20\x02\x00\x00", connack
    return ws


def open_stomp(address: tuple[str, int], _n: int) -> websocket.WebSocket:
    ws = websocket.create_connection(
        f"ws://{address[0]}:{address[1]}/ws", timeout=30, subprotocols=["v12.stomp"]
    )
    ws.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0")
    connected = ws.recv()
    assert connected.startswith("CONNECTED"), connected
    return ws


def measure(args, data: str, name: str, listener: str, opener) -> None:
    """One fresh broker, WARM then N connections of one kind; prints the slope."""
    broker = subprocess.Popen(
        [
            str(args.binary), "--data-dir", data,
            "--amqp", "off", "--mqtt", "off", "--stomp", "off", "--http", "off",
            "--web-stomp", "127.0.0.1:0", "--web-mqtt", "127.0.0.1:0", "--prometheus", "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        listeners = {}
        for line in broker.stdout:
            words = line.split()
            if words[:1] == ["listening"]:
                host, _, port = words[2].rpartition(":")
                listeners[words[1]] = (host, int(port))
            if line.strip() == "ready":
                break
        address = listeners[listener]
        opened = [opener(address, i) for i in range(args.warm)]
        before = rss_kib(broker.pid)
        started = time.monotonic()
        opened += [opener(address, args.warm + i) for i in range(args.connections)]
        took = time.monotonic() - started
        time.sleep(args.hold)
        after = rss_kib(broker.pid)
        slope = (after - before) / args.connections
        print(
            f"{name}: {args.connections} idle logged-in connections, VmRSS "
            f"{before / 1024:.1f} -> {after / 1024:.1f} MiB, {slope:.2f} KiB each "
            f"(connected in {took:.1f} s)",
            flush=True,
        )
        for ws in opened:
            ws.close()
    finally:
        broker.terminate()
        broker.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT / "target" / "release" / "junction"
    if not default.exists():
        default = ROOT / "target" / "debug" / "junction"
    parser.add_argument("--binary", type=Path, default=default)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--hold", type=float, default=5.0)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    print(f"binary: {args.binary}")
    for name, listener, opener in [
        ("MQTT over WebSocket", "web-mqtt", open_mqtt),
        ("STOMP over WebSocket", "web-stomp", open_stomp),
    ]:
        with tempfile.TemporaryDirectory() as data:
            measure(args, data, name, listener, opener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
