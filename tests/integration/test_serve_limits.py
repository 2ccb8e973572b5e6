"""`natkit serve` as a whole: the signal limits from config and their metrics, co-binding a port
another server holds, and what a respawned worker runs after a staged reload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from natkit.diag.turncheck import check_turn
from natkit.testing import wait_until
from tests.integration.conftest import (
    HOST,
    Served,
    alive,
    binding_request,
    children,
    free_port,
    start_serve,
    stop_process,
)

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


# --- co-binding (issue 11 #8) -------------------------------------------------------------------


def _refused_at_start(path: Path) -> str:
    """natkit serve -c `path` must exit 2 with one `natkit: error:` line; that line."""
    proc, lines = start_serve(path, 1, timeout=20)
    status = stop_process(proc)
    assert proc.stderr is not None
    err = proc.stderr.read().strip().splitlines()
    assert status == 2, (status, lines, err)
    assert len(err) == 1 and err[0].startswith("natkit: error: "), err
    return err[0]


def _stun_only(path: Path, port: int, workers: int = 2) -> Path:
    path.write_text(
        f"version: 1\nstun:\n  listen: ['udp://{HOST}:{port}', 'tcp://{HOST}:{port}']\n"
        f"  workers: {workers}\nmetrics: {{listen: null}}\n"
    )
    return path


def _answered(port: int, clients: int) -> int:
    """Binding requests answered, one from each of `clients` fresh source ports."""
    answered = 0
    for _ in range(clients):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            request, tid = binding_request()
            for _ in range(3):
                sock.sendto(request, (HOST, port))
                try:
                    if sock.recv(2048)[8:20] == tid:
                        answered += 1
                        break
                except TimeoutError:
                    continue
    return answered


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_port_held_by_a_reuseport_socket_is_refused(tmp_path: Path, kind: int) -> None:
    # Same uid + SO_REUSEPORT: the kernel would let natkit's workers join this socket's group.
    port = free_port()
    with socket.socket(socket.AF_INET, kind) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        squatter.bind((HOST, port))
        if kind == socket.SOCK_STREAM:
            squatter.listen()
        line = _refused_at_start(_stun_only(tmp_path / "c.yaml", port))
    proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    assert line.startswith(f"natkit: error: {proto}://{HOST}:{port}: address already in use")


def test_port_held_by_a_plain_socket_is_refused(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((HOST, port))
        assert "already in use" in _refused_at_start(_stun_only(tmp_path / "c.yaml", port))


def test_second_natkit_on_the_port_is_refused_and_the_first_keeps_everything(
    natkit_serve: Serve, tmp_path: Path
) -> None:
    first = natkit_serve(stun={"workers": 2})
    line = _refused_at_start(_stun_only(tmp_path / "b.yaml", first.port))
    assert "already in use (another server?" in line
    assert first.proc.poll() is None
    # Had B joined the reuseport group, about half of these would have gone to it.
    assert _answered(first.port, 40) == 40


@pytest.mark.coturn
@pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed")
def test_port_held_by_coturn_is_refused(tmp_path: Path) -> None:
    from tests.integration.coturn_harness import lab_config, start

    cfg = lab_config()
    port = cfg.stun.listen[0].port
    workdir = tmp_path / "coturn"
    workdir.mkdir()
    with start(cfg, workdir):
        assert "already in use" in _refused_at_start(_stun_only(tmp_path / "c.yaml", port))


# --- respawn after a staged reload (issue 11 #9) ------------------------------------------------

USER, PASSWORD = "alice", "wonderland"


def _worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    pids = []
    for pid in children(supervisor):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"spawn_main" in cmdline and alive(pid):
            pids.append(pid)
    return pids


def _loopback_peer_permitted(port: int) -> bool:
    """One TURN allocation + CreatePermission for peer 127.0.0.1 (nothing is sent to it)."""
    report = asyncio.run(
        check_turn(
            f"turn:{HOST}:{port}",
            username=USER,
            password=PASSWORD,
            peer=HOST,
            until="permission",
            timeout=5,
        )
    )
    failed = report.failed_step
    assert failed is None or failed.error_code == 403, report
    return failed is None


def _burst_answered(source_ip: str, port: int, count: int = 40) -> int:
    """Binding requests sent at once from one 5-tuple (so one worker), answers counted."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        for _ in range(count):
            sock.sendto(binding_request()[0], (HOST, port))
        sock.settimeout(0.5)
        got = 0
        with contextlib.suppress(TimeoutError):
            while True:
                sock.recv(2048)
                got += 1
    return got


def test_respawned_worker_runs_the_running_config_not_the_staged_one(
    natkit_serve: Serve,
) -> None:
    turn = {
        "enabled": True,
        "auth": {"users": {USER: PASSWORD}},
        "peers": {"allow": [f"{HOST}/32"]},
    }
    served = natkit_serve(stun={"workers": 2}, turn=turn)
    assert wait_until(lambda: len(_worker_pids(served.proc.pid)) == 2, 10)
    assert _loopback_peer_permitted(served.port)
    # Stage a new port and a new peer policy (restart-only) and a new rate limit (live).
    new_port = free_port()
    config = yaml.safe_load(served.config_path.read_text())
    config["stun"]["listen"] = [f"udp://{HOST}:{new_port}", f"tcp://{HOST}:{new_port}"]
    config["stun"]["rate_limit"] = {"per_source": 20, "burst": 20}
    config["turn"]["peers"] = {"allow": []}
    served.config_path.write_text(yaml.safe_dump(config))
    served.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    victim = _worker_pids(served.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(
        lambda: len([p for p in _worker_pids(served.proc.pid) if p != victim]) == 2, 10
    ), "worker not respawned"
    time.sleep(0.5)
    # Each check comes from a fresh source port: the kernel hashes them over both workers, so
    # 10 of them reach the respawned one with probability 1 - 2**-10.
    assert all(_loopback_peer_permitted(served.port) for _ in range(10)), "new policy leaked"
    assert _burst_answered(HOST, new_port, 5) == 0, "a worker serves the staged port"
    # The new rate limit (20/s, burst 20; the default's burst is 200) holds in both workers:
    # ten sources, one 5-tuple each, 60 requests at once.
    bursts = [_burst_answered(f"127.0.0.{20 + i}", served.port, 60) for i in range(10)]
    assert max(bursts) <= 35, bursts
