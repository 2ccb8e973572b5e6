"""Starting a plan's daemons (NAT64, DNS64) inside their nodes, and where their files live.

A daemon is born in its node's namespace and in a session of its own (a Ctrl-C in the terminal
is for natkit, which then removes the lab), so every way a lab goes away kills it: `Lab.down()`,
`natkit lab down` from another process and `natkit lab gc` all kill the namespace's processes
before deleting it (`netlink.delete_namespaces`); `registry.remove_lab` removes the run
directory with the configs.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

from natkit.errors import DependencyError, LabError
from natkit.lab import netlink
from natkit.lab.ipv6 import Daemon

__all__ = ["READY_TIMEOUT", "check_binaries", "run_dir", "start"]

READY_TIMEOUT = 10.0
_PACKAGES = {"tayga": "tayga", "unbound": "unbound", "ip6tables-restore": "iptables"}


def run_dir(state_dir: Path, prefix: str) -> Path:
    """The lab's own directory for daemon configs and state (removed with the lab)."""
    return state_dir / f"{prefix}.run"


def check_binaries(daemons: list[Daemon], ip6tables: bool) -> None:
    """A missing binary is a one-line DependencyError before anything is built."""
    names = [d.argv[0] for d in daemons] + (["ip6tables-restore"] if ip6tables else [])
    for name in dict.fromkeys(names):
        if shutil.which(name) is None:
            package = _PACKAGES.get(name, name)
            raise DependencyError(
                f"this topology needs `{name}`: install the Debian {package} package "
                f"(apt-get install {package})"
            )


def _expand(text: str, run: Path) -> str:
    return text.replace("{run}", str(run))


def start(netns: dict[str, str], daemons: list[Daemon], run: Path) -> None:
    """Write each daemon's files, run its setup and start it in node `d.node` (namespace
    `netns[d.node]`); wait until those with a readiness check answer."""
    for d in daemons:
        node_dir = run / d.node
        node_dir.mkdir(parents=True, exist_ok=True)
        for name, text in d.files.items():
            (node_dir / name).write_text(_expand(text, run))
        ns = netns[d.node]
        for argv in d.setup:
            done = netlink.in_netns(
                ns, subprocess.run, [_expand(a, run) for a in argv],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                why = (done.stderr or done.stdout).strip().splitlines()[:1] or ["failed"]
                raise LabError(f"{d.name} in node {d.node}: {' '.join(argv)}: {why[0]}")
        log = (node_dir / f"{d.name}.log").open("w")
        with log:
            proc = netlink.popen_in_netns(
                ns, [_expand(a, run) for a in d.argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        if d.ready_udp is not None:
            _wait_dns(ns, d, proc, node_dir / f"{d.name}.log")


def _wait_dns(ns: str, d: Daemon, proc: subprocess.Popen[bytes], log: Path) -> None:
    assert d.ready_udp is not None
    host, port = d.ready_udp
    # A root SOA query: any answer (even REFUSED) means the daemon reads its socket.
    query = struct.pack("!HHHHHH", 0x4E4B, 0x0100, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 6, 1)
    deadline = time.monotonic() + READY_TIMEOUT
    sock = netlink.in_netns(ns, socket.socket, socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last = log.read_text().strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
                raise LabError(f"{d.name} in node {d.node} did not start: {last[0]}")
            try:
                sock.sendto(query, (host, port))
                sock.recvfrom(512)
                return
            except (TimeoutError, ConnectionRefusedError):
                continue
    finally:
        sock.close()
    raise LabError(f"{d.name} in node {d.node} did not answer on [{host}]:{port} in time")


def remove(run: Path) -> None:
    shutil.rmtree(run, ignore_errors=True)
    if run.exists():  # pragma: no cover - only when something else holds it
        os.rename(run, run.with_suffix(".stale"))
