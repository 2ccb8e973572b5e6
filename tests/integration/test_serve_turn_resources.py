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

import contextlib
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import yaml

from natkit.addr import Address
from natkit.testing import self_signed_certificate, wait_until
from tests.integration.conftest import HOST, Served, free_port, stop_process
from tests.integration.turn_client import TurnClient, code, relayed

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
    assert wait_until(lambda: all(_bindable(p) for p in range(low, high + 1))), [
        p for p in range(low, high + 1) if not _bindable(p)
    ]


def _flood(peer: socket.socket, target: tuple[str, int], stop: threading.Event) -> None:
    """The peer keeps sending toward the relay (bounded: until `stop`, at most 10 s)."""
    deadline = time.monotonic() + 10
    payload = bytes(1000)
    while not stop.is_set() and time.monotonic() < deadline:
        for _ in range(50):
            with contextlib.suppress(OSError):
                peer.sendto(payload, target)
        time.sleep(0.001)


def _allocate_soon(make: Callable[[], TurnClient], timeout: float = 3.0) -> TurnClient:
    """A client whose Allocate succeeded: the port of a connection just reset is freed when
    the server has seen the reset."""
    deadline = time.monotonic() + timeout
    while True:
        client = make()
        answer = client.allocate()
        if code(answer) == 0 or time.monotonic() > deadline:
            assert code(answer) == 0, answer
            return client
        client.close()
        time.sleep(0.1)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_a_stream_client_reset_under_a_peer_flood_costs_only_its_allocation(
    natkit_serve: Callable[..., Served], tmp_path: Path, transport: str
) -> None:
    low, high = _free_range(2)  # one port for the bystander, one for the stream clients
    port = free_port()
    stun: dict[str, object] = {"listen": [f"udp://{HOST}:{port}", f"tcp://{HOST}:{port}"]}
    tls = None
    if transport == "tls":
        cert, key = self_signed_certificate(tmp_path)
        stun = {"listen": [f"udp://{HOST}:{port}", f"tls://{HOST}:{port}"],
                "tls": {"cert": str(cert), "key": str(key)}}  # fmt: skip
        tls = ssl.create_default_context(cafile=str(cert))
    served = natkit_serve(port=port, stun=stun, turn=_turn(f"{low}-{high}"))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    peer.settimeout(5)
    peer_addr = Address(HOST, peer.getsockname()[1])
    bystander = TurnClient(port, USER, PASSWORD, REALM)
    stop = threading.Event()
    try:
        by_relay = relayed(bystander.allocate())
        assert code(bystander.channel_bind(0x4001, peer_addr)) == 0
        for _ in range(3):
            victim = _allocate_soon(
                lambda: TurnClient(port, USER, PASSWORD, REALM, tcp=True, tls=tls)
            )
            target = victim.relayed
            assert target is not None
            assert code(victim.channel_bind(0x4000, peer_addr)) == 0
            stop.clear()
            flood = threading.Thread(target=_flood, args=(peer, target, stop))
            flood.start()
            time.sleep(0.5)  # the server's send buffer toward the victim fills
            victim.reset()
            time.sleep(1.0)  # the flood goes on after the reset
            stop.set()
            flood.join()
        # The bystander still relays both ways.
        peer.sendto(b"to bystander", by_relay)
        deadline = time.monotonic() + 5
        got = b""
        while got[4:] != b"to bystander" and time.monotonic() < deadline:
            got = bystander.recv()
        assert got[4:16] == b"to bystander"
        # The stream clients' port is free: a new allocation takes it.
        _allocate_soon(lambda: TurnClient(port, USER, PASSWORD, REALM, tcp=True, tls=tls)).close()
    finally:
        stop.set()
        bystander.close()
        peer.close()
    stop_process(served.proc)
    assert served.proc.stderr is not None
    log = served.proc.stderr.read()
    for bad in ("Traceback", "RuntimeError", "SSL connection is closed", "socket.send() raised"):
        assert bad not in log, log[-3000:]


def _start_limited(config: dict[str, object], path: Path, nofile: int) -> subprocess.Popen[str]:
    """natkit serve with RLIMIT_NOFILE soft = hard = `nofile` (nothing left to raise)."""
    path.write_text(yaml.safe_dump(config))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(
        [sys.executable, "-m", "natkit", "serve", "-c", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=limit,
    )  # fmt: skip
    assert proc.stdout is not None
    for _ in range(3):  # udp + tcp listeners, metrics
        if not proc.stdout.readline():
            break
    return proc


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _more_fds(pid: int, than: int) -> bool:
    return _open_fds(pid) > than


def test_out_of_file_descriptors_allocate_is_508_then_recovers(tmp_path: Path) -> None:
    low, high = _free_range(10)
    port, mport = free_port(), free_port()
    config = {
        "version": 1,
        "stun": {"listen": [f"udp://{HOST}:{port}", f"tcp://{HOST}:{port}"], "workers": 1},
        "metrics": {"listen": f"{HOST}:{mport}"},
        "logging": {"level": "info"},
        "turn": _turn(f"{low}-{high}"),
    }
    nofile = 64
    proc = _start_limited(config, tmp_path / "natkit.yaml", nofile)
    served = Served(proc, tmp_path / "natkit.yaml", port, mport)
    hogs: list[socket.socket] = []
    try:
        assert wait_until(lambda: len(served.workers()) >= 1), (proc.poll(), served.workers())
        worker = max(served.workers(), key=_open_fds)  # not multiprocessing's resource tracker
        while _open_fds(worker) < nofile and len(hogs) < 2 * nofile:
            before = _open_fds(worker)
            hogs.append(socket.create_connection((HOST, port), timeout=5))
            wait_until(partial(_more_fds, worker, before), 0.2)  # accepted (until none is left)
        assert _open_fds(worker) >= nofile - 1, _open_fds(worker)
        client = TurnClient(port, USER, PASSWORD, REALM)
        try:
            assert code(client.allocate()) == 508  # not a success without a socket
        finally:
            client.close()
        for hog in hogs:
            hog.close()
        hogs.clear()
        assert wait_until(lambda: _open_fds(worker) < nofile - 8)
        client = TurnClient(port, USER, PASSWORD, REALM)
        try:
            assert code(client.allocate()) == 0
        finally:
            client.close()
        series = r'natkit_turn_refusals_total\{code="508",method="allocate",reason="capacity"\}'
        assert wait_until(lambda: served.metric(series) == 1), served.metrics()
    finally:
        for hog in hogs:
            hog.close()
        stop_process(proc)
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert "Traceback" not in log, log[-3000:]
    warnings = [line for line in log.splitlines() if "file descriptor limit 64" in line]
    assert len(warnings) == 1 and "stun.stream.max_connections" in warnings[0], log[-3000:]
    assert "no relay socket for" in log and "Too many open files" in log, log[-3000:]


def test_a_permission_flood_is_refused_as_capacity(natkit_serve: Callable[..., Served]) -> None:
    low, high = _free_range(2)
    limits = {"peers_per_request": 10, "permissions_per_allocation": 12}
    served = natkit_serve(turn=_turn(f"{low}-{high}", limits=limits))
    client = TurnClient(served.port, USER, PASSWORD, REALM)
    try:
        assert code(client.allocate()) == 0
        # Only 127.0.0.1 is an allowed peer here (the relay never sends elsewhere): ports differ.
        many = [Address(HOST, 1000 + i) for i in range(11)]
        assert code(client.permit(many)) == 508  # 11 XOR-PEER-ADDRESS in one request
        assert code(client.permit(many[:10])) == 0  # one IP: one permission
    finally:
        client.close()
    series = (
        r'natkit_turn_refusals_total\{code="508",method="create_permission",reason="capacity"\}'
    )
    assert wait_until(lambda: served.metric(series) == 1), served.metrics()
