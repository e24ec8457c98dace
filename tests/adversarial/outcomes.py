"""How the broker answered an attacker, as short words a test can compare and a failure
message can show: ``"accepted"``, ``"channel.close 406"``, ``"SUBACK 80"``, ``"closed (...)"``.
"""

from __future__ import annotations

from amqp_raw import WAIT, Closed, ConnectionEnded, RawAmqp
from mqtt_raw import RawClient

#: AMQP reply codes a refusal of an oversized or too deep input may carry.
REFUSAL_CODES = {403, 406, 502}


def amqp_outcome(client: RawAmqp, expected: tuple[int, int], timeout: float = WAIT) -> str:
    """``"accepted"`` when the next method, within ``timeout`` seconds, is ``expected``;
    otherwise how the broker refused (``"channel.close 406"``, ...) or that the connection
    ended or stayed silent (``"no answer"``)."""
    if timeout <= 0:
        return "no answer"
    try:
        client.expect(expected, timeout=timeout)
        return "accepted"
    except Closed as closed:
        return f"{closed.scope}.close {closed.code}"
    except TimeoutError:
        return "no answer"
    except (ConnectionEnded, OSError) as error:
        return f"connection ended ({error})"


def acceptable_amqp(outcome: str) -> bool:
    if outcome == "accepted":
        return True
    words = outcome.split()
    return words[0] in ("channel.close", "connection.close") and int(words[1]) in REFUSAL_CODES


def mqtt_reply(client: RawClient, timeout: float = WAIT) -> str:
    """The next packet's type as a word, or that the broker closed the connection or sent
    nothing within ``timeout`` seconds."""
    try:
        first, body = client.read_packet(timeout=timeout)
    except AssertionError as error:
        if "deadline" in str(error):
            return "no answer"
        return f"closed ({error})"
    kinds = {0x20: "CONNACK", 0x90: "SUBACK", 0xB0: "UNSUBACK", 0x40: "PUBACK", 0xD0: "PINGRESP"}
    name = kinds.get(first, f"packet {first:#x}")
    if first == 0x90:
        return f"{name} {body[2:].hex()}"
    if first == 0x20:
        return f"{name} {body.hex()}"
    return name
