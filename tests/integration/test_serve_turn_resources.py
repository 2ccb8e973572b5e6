"""`natkit serve` (builtin TURN) frees every relay socket, whatever ends an allocation.

- Re-allocating from the same 5-tuple right after the lifetime ended, before the 1 s sweep, used
  to drop the old allocation without closing its socket: with a 10-port range, 4 clients x 3
  cycles leaked every port and then everyone got 508 (issue 11, item 1).
- Out of file descriptors, Allocate is a 508, logged and counted, never a success without a
  socket; it works again once descriptors are free (item 2).
- A TCP client that resets its connection while a peer floods it costs nothing but its own
  allocation: no traceback, the port is free again (item 14).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from tests.integration.conftest import HOST, Served, free_port
from tests.integration.turn_client import TurnClient, code

pytestmark = [pytest.mark.integration]

USER, PASSWORD, REALM = "alice", "wonderland", "natkit.test"


def _turn(ports: str, **extra: object) -> dict[str, object]:
    return {
        "enabled": True,
        "realm": REALM,
        "auth": {"users": {USER: PASSWORD}},
        "quota": {"per_user": 100},
        "relay": {"ports": ports},
        "peers": {"allow": [f"{HOST}/32"]},
        **extra,
    }


def _free_range(size: int) -> tuple[int, int]:
    """`size` consecutive UDP ports on 127.0.0.1 that are free now."""
    for _ in range(50):
        low = free_port()
        if low + size > 65535:
            continue
        if all(_bindable(port) for port in range(low, low + size)):
            return low, low + size - 1
    pytest.skip("no free range of relay ports on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_reallocating_right_at_expiry_leaks_no_relay_port(
    natkit_serve: Callable[..., Served],
) -> None:
    low, high = _free_range(10)
    lifetime = {"default": 1, "max": 1}
    served = natkit_serve(turn=_turn(f"{low}-{high}", lifetime=lifetime))
    clients = [TurnClient(served.port, USER, PASSWORD, REALM) for _ in range(4)]
    try:
        for cycle in range(3):
            started = time.monotonic()
            for client in clients:
                answer = client.allocate()
                assert code(answer) == 0, (cycle, answer)
            # Past the 1 s lifetime of each, and (most likely) before the next 1 s sweep.
            time.sleep(max(0.0, started + 1.05 - time.monotonic()))
        for client in clients:
            assert code(client.allocate()) == 0
            assert code(client.refresh(0)) == 0
    finally:
        for client in clients:
            client.close()
    # Every relay socket is closed: the test can bind each port of the range again.
    assert _wait(lambda: all(_bindable(p) for p in range(low, high + 1))), [
        p for p in range(low, high + 1) if not _bindable(p)
    ]
