"""`natkit serve` as a whole: the signal limits from config and their metrics, co-binding a port
another server holds, and what a respawned worker runs after a staged reload."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from tests.integration.conftest import HOST, Served, free_port

pytestmark = pytest.mark.integration

Serve = Callable[..., Served]


def _http_status(sock: socket.socket) -> int:
    sock.settimeout(5)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_signal_limits_come_from_config_and_refusals_reach_metrics(natkit_serve: Serve) -> None:
    sport = free_port()
    served = natkit_serve(
        signal={"enabled": True, "listen": f"{HOST}:{sport}", "max_connections_per_source": 1}
    )
    text = served.metrics()
    assert "natkit_signal_refused_source_connections_total 0" in text
    with socket.create_connection((HOST, sport)) as held:  # sends nothing: holds its slot
        time.sleep(0.2)
        with socket.create_connection((HOST, sport)) as second:
            # The default cap (32) would admit it; the configured 1 must answer 429.
            assert _http_status(second) == 429
        assert held.fileno() >= 0
    assert served.metric("natkit_signal_refused_source_connections_total") == 1
    assert served.metric("natkit_signal_connections_total") >= 2
