"""Helpers for tests that run a real `natkit serve`: natkit's own suite uses them, and so can yours.

    from natkit.testing import free_port, serve

    port = free_port()
    config = {"version": 1, "stun": {"listen": [f"udp://127.0.0.1:{port}"]}}
    with serve(config) as served:
        ...  # send STUN to 127.0.0.1:port; served.metric(...) reads /metrics if enabled

`serve` writes the config to a temporary file, starts ``python -m natkit serve -c FILE`` in its
own session (process group), returns once every ``listening``/``signal``/``metrics`` line is out
and, on leaving (also on an exception or Ctrl-C), SIGTERMs the group, SIGKILLs what is left
after a timeout and reaps it: no server or worker outlives the test. `launch` is the same start
without the context manager, for fixtures that stop servers in their own teardown (`reap`).

`free_port` asks the kernel for a free port, by default one free for both UDP and TCP (a natkit
listener URI names one port for both) and outside natkit's default relay range 49152-65535,
where ``natkit serve`` refuses a listener (the relays would collide with it).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from natkit.addr import ListenURI, format_hostport, parse_hostport

__all__ = [
    "RELAY_PORTS",
    "PortKind",
    "ServeError",
    "Served",
    "children",
    "expected_lines",
    "free_port",
    "launch",
    "reap",
    "self_signed_certificate",
    "serve",
    "start_serve",
    "stop_process",
    "wait_until",
]

RELAY_PORTS = range(49152, 65536)
"""The default turn.relay.ports: a listener there is refused at load (it would collide)."""

PortKind = Literal["udp", "tcp", "udp+tcp"]


class ServeError(RuntimeError):
    """`natkit serve` exited or stayed silent before printing its listening lines."""


def free_port(
    kind: PortKind = "udp+tcp",
    host: str = "127.0.0.1",
    avoid: Collection[range] = (RELAY_PORTS,),
) -> int:
    """A port free on `host` for `kind` (UDP, TCP or both), in none of the `avoid` ranges.

    Free when asked: another process may take it before the caller binds it, which on loopback
    in a test run is rare; the kernel hands out ports round-robin, not the same one again.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    first, *rest = {"udp": ["udp"], "tcp": ["tcp"], "udp+tcp": ["udp", "tcp"]}[kind]
    types = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM}
    for _ in range(100):
        with socket.socket(family, types[first]) as probe:
            probe.bind((host, 0))
            port: int = probe.getsockname()[1]
            if any(port in r for r in avoid):
                continue
            try:
                for other in rest:
                    with socket.socket(family, types[other]) as s:
                        s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free {kind} port on {host} outside {list(avoid)}")


def wait_until(
    condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.05
) -> bool:
    """Poll `condition` until it is true or `timeout` seconds pass; its last answer (a server's
    counters, workers and sockets change shortly after the event a test caused)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def children(pid: int) -> list[int]:
    """Direct children of `pid` (the workers of a `natkit serve`), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry))
    return out


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM the session (process group) of `proc`, then SIGKILL it; returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def reap(proc: subprocess.Popen[Any]) -> int:
    """`stop_process`, then close the pipes opened to it; returns the exit status."""
    status = stop_process(proc)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return status


def start_serve(
    config_path: Path, expect_lines: int, timeout: float = 30.0
) -> tuple[subprocess.Popen[str], list[str]]:
    """Start natkit serve in its own session; return once it printed `expect_lines` lines (or
    exited, or `timeout` passed: then fewer lines). The caller stops it (`reap`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "natkit", "serve", "-c", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    # Raw reads: a buffered readline would hide the second line from the selector.
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    raw = b""
    while raw.count(b"\n") < expect_lines and time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            raw += chunk
    lines = raw.decode().splitlines()[:expect_lines] if raw.count(b"\n") else []
    sel.close()
    return proc, lines


@dataclass
class Served:
    """A running `natkit serve`: its process, config file, first listener port, metrics port."""

    proc: subprocess.Popen[str]
    config_path: Path
    port: int
    metrics_port: int | None
    lines: list[str] = field(default_factory=list)
    metrics_host: str = "127.0.0.1"

    def _url(self, path: str) -> str:
        assert self.metrics_port is not None, "this natkit serve has no metrics.listen"
        return f"http://{format_hostport(self.metrics_host, self.metrics_port)}{path}"

    def metrics(self) -> str:
        with urllib.request.urlopen(self._url("/metrics"), timeout=5) as response:
            body: bytes = response.read()
        return body.decode()

    def status(self, path: str) -> int:
        """The HTTP status of `path` on the metrics listener (``/healthz``, ``/readyz``)."""
        try:
            with urllib.request.urlopen(self._url(path), timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code

    def metric(self, pattern: str) -> float:
        """Sum of every sample whose `name{labels}` matches the regex `pattern`."""
        total = 0.0
        for line in self.metrics().splitlines():
            name, _, value = line.rpartition(" ")
            if not line.startswith("#") and re.fullmatch(pattern, name):
                total += float(value)
        return total

    def workers(self) -> list[int]:
        """Worker pids: the children but multiprocessing's resource tracker (the shared TURN
        quota lock's semaphore starts one)."""
        return [pid for pid in children(self.proc.pid) if not _is_resource_tracker(pid)]


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    except OSError:
        return False


def expected_lines(config: Mapping[str, Any]) -> int:
    """How many start-up lines `natkit serve` prints for `config`: one per listener, then the
    signal URL, the check page URL and the metrics URL when enabled (natkit.serve)."""
    listen = (config.get("stun") or {}).get("listen") or []
    signal_on = bool((config.get("signal") or {}).get("enabled"))
    check_on = bool((config.get("check") or {}).get("enabled"))
    metrics_on = bool((config.get("metrics") or {}).get("listen"))
    return len(listen) + signal_on + check_on + metrics_on


def launch(config: Mapping[str, Any], path: Path, timeout: float = 30.0) -> Served:
    """Write `config` to `path`, start natkit serve and wait for its lines; on failure stop it
    and raise `ServeError` with its status, lines and stderr. The caller `reap`s `.proc`."""
    path.write_text(yaml.safe_dump(dict(config)))
    expect = expected_lines(config)
    proc, lines = start_serve(path, expect, timeout)
    if len(lines) < expect:
        status, err = _stop_with_stderr(proc)
        raise ServeError(f"natkit serve did not start (status {status}): {lines} {err}")
    listen = ListenURI.parse(config["stun"]["listen"][0])
    metrics = (config.get("metrics") or {}).get("listen")
    mhost, mport = parse_hostport(metrics) if metrics else ("127.0.0.1", None)
    return Served(proc, path, listen.port, mport, lines, metrics_host=mhost)


def _stop_with_stderr(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Stop `proc` and return its status and the last 2000 characters of its stderr."""
    status = stop_process(proc)
    err = proc.stderr.read()[-2000:] if proc.stderr is not None else ""
    reap(proc)
    return status, err


@contextlib.contextmanager
def serve(config: Mapping[str, Any], timeout: float = 30.0) -> Iterator[Served]:
    """A running `natkit serve` for `config` (a dict as natkit.yaml holds it), stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="natkit-test-") as tmp:
        served = launch(config, Path(tmp) / "natkit.yaml", timeout)
        try:
            yield served
        finally:
            reap(served.proc)


def self_signed_certificate(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A throw-away EC certificate for `name` (valid one day) and its key, as PEM files in
    `directory`: for a ``tls://`` listener in a test. Needs `cryptography` (aiortc's own
    dependency, so installed with natkit)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    )
    return cert_path, key_path
