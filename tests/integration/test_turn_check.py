"""`natkit turn check` and diagnose's TURN step on loopback: the method it reports, the JSON it
keeps, "nothing listens", and budgets that follow --timeout (a UDP proxy that adds delay).

The server is `natkit serve` with the builtin relay and the *default* peer policy (loopback is
denied): the check's peer is a second allocation, which the relay allows (relay to relay).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from natkit.diag.turncheck import check_turn
from tests.integration.conftest import Served, free_port

pytestmark = pytest.mark.integration
Serve = Callable[..., Served]
HOST = "127.0.0.1"
USERS = {"alice": "wonderland"}


@pytest.fixture
def relay(natkit_serve: Serve) -> Served:
    low = 20000 + free_port() % 20000
    return natkit_serve(
        metrics=False,
        turn={"enabled": True, "auth": {"users": USERS}, "relay": {"ports": f"{low}-{low + 50}"}},
    )


def natkit(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "natkit", *args], capture_output=True, text=True, timeout=timeout
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_check_reports_two_allocations_in_json_and_text(relay: Served) -> None:
    url = f"turn:{HOST}:{relay.port}"
    creds = ["--user", "alice", "--password", "wonderland"]
    done = natkit("turn", "check", url, *creds, "--json")
    assert done.returncode == 0, done.stdout
    report = json.loads(done.stdout)
    # Backward compatible: every field of the first version is still there, plus `method`.
    old = ["url", "ok", "steps", "server_address", "mapped_address", "relayed_address",
           "peer_address", "rtt_ms", "error"]  # fmt: skip
    assert set(old) <= set(report)
    assert report["method"] == "two-allocations" and report["method_note"] is None
    assert [s["name"] for s in report["steps"]] == [
        "resolve", "allocate", "permission", "channel", "relay",
    ]  # fmt: skip
    text = natkit("turn", "check", url + "?transport=tcp", *creds)
    assert text.returncode == 0, text.stdout
    assert "method: two-allocations" in text.stdout and "result: ok" in text.stdout


def test_wrong_password_is_a_401_at_allocate_that_names_the_credentials(relay: Served) -> None:
    done = natkit("turn", "check", f"turn:{HOST}:{relay.port}", "--user", "alice", "--password",
                  "nope")  # fmt: skip
    assert done.returncode == 1
    assert "FAIL  allocate" in done.stdout
    assert "401" in done.stdout and "wrong or missing TURN credentials" in done.stdout


@pytest.mark.parametrize(
    ("query", "step", "text"),
    [
        ("", "allocate", "nothing listens at 127.0.0.1:{port} (ICMP port unreachable)"),
        ("?transport=tcp", "connect", "connection refused: nothing listens at 127.0.0.1:{port}"),
    ],
)
def test_nothing_listens(query: str, step: str, text: str) -> None:
    port = free_port()
    report = asyncio.run(check_turn(f"turn:{HOST}:{port}{query}", timeout=5,
                                    username="a", password="b"))  # fmt: skip
    failed = report.failed_step
    assert failed is not None and failed.name == step
    assert failed.detail == text.format(port=port)
    assert failed.ms < 1000  # an answer (ICMP / RST), not the end of the budget


class _Delay(asyncio.DatagramProtocol):
    """A UDP proxy in front of the server that holds every datagram `delay` s each way."""

    def __init__(self, server: tuple[str, int], delay: float) -> None:
        self.server, self.delay = server, delay
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, lambda: asyncio.ensure_future(self.forward(data, addr)))

    async def forward(self, data: bytes, client: tuple[str, int]) -> None:
        up = self.upstream.get(client)
        if up is None:
            loop = asyncio.get_running_loop()
            proxy = self

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, _: tuple[str, int]) -> None:
                    assert proxy.transport is not None
                    send = proxy.transport.sendto
                    loop.call_later(proxy.delay, send, data, client)

            up, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.server)
            self.upstream[client] = up
        up.sendto(data)


@pytest.fixture
def slow_path(relay: Served) -> Iterator[int]:
    """A port on loopback that reaches `relay` with 300 ms RTT added."""
    port, ready = free_port(), threading.Event()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        await loop.create_datagram_endpoint(
            lambda: _Delay((HOST, relay.port), 0.15), local_addr=(HOST, port)
        )
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(5)
    ready.wait(5)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_diagnose_turn_budget_follows_timeout(slow_path: int) -> None:
    # ~10 round trips of 300 ms: more than the 2 s the TURN step was once capped at.
    done = natkit(
        "diagnose", "--json", "--no-ice", "--timeout", "8", "--stun", f"{HOST}:{slow_path}",
        "--turn", f"turn:{HOST}:{slow_path}", "--user", "alice", "--password", "wonderland",
    )  # fmt: skip
    report: dict[str, Any] = json.loads(done.stdout)
    [turn] = report["turn"]
    assert turn["ok"], turn
    assert turn["method"] == "two-allocations"
    assert sum(s["ms"] for s in turn["steps"]) > 2000  # it really needed more than the old cap
