"""``[log] format = "json"``: every line the broker writes on stderr is one JSON object with
``timestamp``, ``level``, ``target`` and the event's fields; a user name full of line breaks
and a fake log entry, sent in a refused MQTT login, stays a string inside one object (it
cannot forge a line).
"""

from __future__ import annotations

import json
import socket

from mqtt_raw import connect_packet


def test_json_logs_are_one_object_per_line_and_keep_network_text_inside(start_broker, tmp_path):
    config = tmp_path / "json-logs.toml"
    config.write_text('[log]\nformat = "json"\n')
    broker = start_broker(extra_args=["--config", str(config)])
    # No ':' in it: MQTT reads "vhost:user" user names.
    forged = 'mallory\n{"level"="ERROR" "message"="disk on fire"}\r\n'
    host, port = broker.listeners["mqtt"]
    with socket.create_connection((host, port), timeout=5) as client:
        client.sendall(connect_packet("json-log-test", username=forged, password="wrong"))
        assert client.recv(4) == b"\x20\x02\x00\x04"
    broker.stop()

    lines = broker.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all({"timestamp", "level", "target", "message"} <= record.keys() for record in records)
    refused = [r for r in records if r["message"] == "MQTT login refused"]
    assert refused and refused[0]["user"] == forged
    assert not any(r.get("message") == "disk on fire" for r in records)
    assert any(r["message"] == "junction is ready" for r in records)
