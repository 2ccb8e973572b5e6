"""Operating `natkit serve`: rate limit, metrics, signals, worker supervision, startup errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from natkit.testing import wait_until
from tests.integration.conftest import (
    HOST,
    Served,
    alive,
    binding_request,
    free_port,
    start_serve,
    stop_process,
)

pytestmark = pytest.mark.integration

Serve = Callable[..., Served]


def _flood(source_ip: str, port: int, rate: float, seconds: float) -> tuple[int, int]:
    """Send Binding requests from `source_ip` at `rate`/s for `seconds`; (sent, answered)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        sock.setblocking(False)
        sent = answered = 0
        start = time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            while sent < (now - start) * rate:
                sock.sendto(binding_request()[0], (HOST, port))
                sent += 1
            answered += _drain(sock)
            time.sleep(0.002)
        time.sleep(0.2)
        return sent, answered + _drain(sock)


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            if sock.recv(2048)[:2] == b"\x01\x01":
                n += 1
        except BlockingIOError:
            return n


def _ask(port: int, source_ip: str = HOST, tries: int = 1) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        sock.settimeout(1.0)
        for _ in range(tries):
            request, tid = binding_request()
            sock.sendto(request, (HOST, port))
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            if data[8:20] == tid:
                return True
    return False


def test_rate_limit_caps_flooding_source_only(natkit_serve: Serve) -> None:
    rate, burst, seconds = 50, 50, 2.0
    served = natkit_serve(stun={"rate_limit": {"per_source": rate, "burst": burst}})
    sent, answered = _flood("127.0.0.2", served.port, rate * 10, seconds)
    allowed = burst + rate * seconds  # what a token bucket lets through in `seconds`
    assert sent >= 0.8 * rate * 10 * seconds
    assert 0.7 * allowed <= answered <= 1.15 * allowed, (sent, answered, allowed)
    for _ in range(10):  # a well-behaved neighbour is unaffected meanwhile
        assert _ask(served.port, "127.0.0.3")
    assert wait_until(
        lambda: served.metric(r"natkit_stun_ratelimited_total\{.*\}") >= sent - answered - 5,
        10,
    )


def test_metrics_count_requests(natkit_serve: Serve) -> None:
    served = natkit_serve(stun={"workers": 2})
    for _ in range(10):
        assert _ask(served.port, tries=3)
    pattern = r'natkit_stun_requests_total\{transport="udp",family="ipv4",result="success"\}'
    assert wait_until(lambda: served.metric(pattern) >= 10, 10)
    text = served.metrics()
    assert "natkit_workers 2" in text
    assert text.count("natkit_worker_resident_memory_bytes{") == 2


def test_sigterm_drains_and_exits_0_leaving_no_process(natkit_serve: Serve) -> None:
    served = natkit_serve(stun={"workers": 2})
    assert served.lines[0].endswith("(STUN, 2 workers)")
    workers = served.workers()
    assert len(workers) >= 2
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(15) == 0
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 5)


def test_supervisor_death_takes_workers_along(natkit_serve: Serve) -> None:
    served = natkit_serve(stun={"workers": 2})
    workers = served.workers()
    served.proc.kill()  # SIGKILL: no chance to clean up; PDEATHSIG / pipe EOF must do it
    served.proc.wait(5)
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 10)


def test_crashed_worker_is_restarted(natkit_serve: Serve) -> None:
    served = natkit_serve(stun={"workers": 1})
    (old,) = [p for p in served.workers() if alive(p)][-1:]
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: any(p != old and alive(p) for p in served.workers()), 10)
    assert _ask(served.port, tries=10)


def test_sighup_reloads_rate_limit(natkit_serve: Serve) -> None:
    served = natkit_serve()
    assert _flood("127.0.0.4", served.port, 200, 0.5)[1] >= 90  # default 100/s, burst 200
    text = served.config_path.read_text().replace(
        "stun:\n", "stun:\n  rate_limit: {per_source: 5, burst: 5}\n", 1
    )
    served.config_path.write_text(text)
    served.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    sent, answered = _flood("127.0.0.5", served.port, 100, 1.0)
    assert answered <= 5 + 5 * 1.0 + 3, (sent, answered)


def test_sighup_with_broken_config_keeps_running(natkit_serve: Serve) -> None:
    served = natkit_serve()
    served.config_path.write_text("version: 1\nstun: {workers: -1}\n")
    served.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert served.proc.poll() is None
    assert _ask(served.port, tries=3)


def _one_line_error(config: Path) -> str:
    proc, lines = start_serve(config, 1, timeout=20)
    status = stop_process(proc)
    assert proc.stderr is not None
    err = proc.stderr.read().strip().splitlines()
    assert status == 2, (status, lines, err)
    assert len(err) == 1 and err[0].startswith("natkit: error: "), err
    return err[0]


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nstun:\n  listen: ['udp://127.0.0.1:3478']\n  wrokers: 2\n")
    assert "wrokers" in _one_line_error(path)


def test_port_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((HOST, port))
        path = tmp_path / "busy.yaml"
        path.write_text(
            f"version: 1\nstun:\n  listen: ['udp://{HOST}:{port}']\n  workers: 2\n"
            "metrics: {listen: null}\n"
        )
        assert "already in use" in _one_line_error(path)


def test_metrics_port_in_use_exits_2(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, mport))
        squatter.listen()
        path = tmp_path / "busy.yaml"
        path.write_text(
            f"version: 1\nstun:\n  listen: ['udp://{HOST}:{port}']\n"
            f"metrics: {{listen: '{HOST}:{mport}'}}\n"
        )
        assert "metrics" in _one_line_error(path)


def test_privileged_port_exits_2(unprivileged: tuple[list[str], Path]) -> None:
    prefix, workdir = unprivileged
    path = workdir / "low.yaml"
    path.write_text(
        "version: 1\nstun:\n  listen: ['udp://127.0.0.1:478']\nmetrics: {listen: null}\n"
    )
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "natkit", "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, (done.returncode, err)
    assert err[0].startswith("natkit: error: ") and "permission denied" in err[0], err


def test_json_logs_one_object_per_line(tmp_path: Path) -> None:
    import json

    port = free_port()
    path = tmp_path / "json.yaml"
    path.write_text(
        f"version: 1\nstun:\n  listen: ['udp://{HOST}:{port}']\n  workers: 1\n"
        "metrics: {listen: null}\nlogging: {format: json, level: debug}\n"
    )
    proc, lines = start_serve(path, 1)
    status = stop_process(proc)
    assert proc.stderr is not None
    records = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
    assert status == 0 and lines
    assert records and all({"ts", "level", "msg", "role"} <= r.keys() for r in records)


def test_cli_help_mentions_signals() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "natkit", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "SIGHUP" in out
