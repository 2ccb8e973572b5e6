"""A fleet in a lab (needs root): a real redis-server in node `redis`, `natkit serve` in nodes
n1..n3 (each its own namespace on the lab's internet), an echo peer in node `echo`, clients in
node `peer` behind a port-restricted-cone NAT. Everything it starts is stopped on `close` (and
`lab.down()` stops whatever a failure left)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from natkit.addr import Address
from natkit.lab import Lab
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.message import Message, parse_message
from tests.integration.turn_client import TurnClient, code
from tests.redis_server import RedisServer

REDIS_IP, ECHO_IP = "203.0.113.20", "203.0.113.30"
NODES = {"n1": "203.0.113.21", "n2": "203.0.113.22", "n3": "203.0.113.23"}
ECHO = Address(ECHO_IP, 5000)
REALM = "fleet.test"
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
LEASE = 3.0

TOPOLOGY = f"""version: 1
description: a fleet of three natkit servers sharing Redis; a client behind a NAT
servers:
  redis: {{addresses: [{REDIS_IP}]}}
  n1: {{addresses: [{NODES["n1"]}]}}
  n2: {{addresses: [{NODES["n2"]}]}}
  n3: {{addresses: [{NODES["n3"]}]}}
  echo: {{addresses: [{ECHO_IP}]}}
nats:
  nat: {{type: port-restricted-cone}}
hosts:
  peer: {{behind: nat}}
"""


def node_config(node: str, **cluster: Any) -> dict[str, Any]:
    ip = NODES[node]
    return {
        "version": 1,
        "stun": {"listen": [f"udp://{ip}:3478", f"tcp://{ip}:3478"], "workers": 1},
        "turn": {
            "enabled": True,
            "realm": REALM,
            "auth": {"users": dict(USERS)},
            "quota": {"per_user": 5, "total": 100},
            "peers": {"allow": ["203.0.113.0/24"]},  # the lab's internet: the echo peer
            "drain_timeout": 5.0,
        },
        "metrics": {"listen": f"{ip}:9641"},
        "cluster": {
            "redis": f"redis://{REDIS_IP}:6379/0",
            "node_id": node,
            "lease": LEASE,
            "timeout": 0.2,
            **cluster,
        },
    }


class Fleet:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.redis = RedisServer(
            REDIS_IP, 6379, spawn=lambda argv: lab.spawn("redis", argv, stdout=subprocess.DEVNULL),
            ping=lambda: lab.call("redis", _ping, REDIS_IP),
        )  # fmt: skip
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self._echo_stop = threading.Event()
        self._echo: threading.Thread | None = None
        self.clients: list[TurnClient] = []

    # -- processes ---------------------------------------------------------------------------

    def start(self, configs: dict[str, dict[str, Any]]) -> None:
        self.redis.start()
        self._start_echo()
        for node, config in configs.items():
            self.start_node(node, config, wait=False)
        for node in configs:
            self.wait_node(node)

    def start_node(self, node: str, config: dict[str, Any], wait: bool = True) -> None:
        path = self.tmp / f"{node}.yaml"
        path.write_text(yaml.safe_dump(config))
        out = (self.tmp / f"{node}.out").open("w")
        argv = [sys.executable, "-m", "natkit", "serve", "-c", str(path)]
        # Its own session: SIGKILL to the group kills the supervisor and its worker at once.
        self.procs[node] = self.lab.spawn(node, argv, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)  # fmt: skip
        out.close()
        if wait:
            self.wait_node(node)

    def output(self, node: str) -> str:
        return (self.tmp / f"{node}.out").read_text()

    def wait_node(self, node: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while "metrics http://" not in self.output(node):
            proc = self.procs[node]
            assert proc.poll() is None and time.monotonic() < deadline, self.output(node)
            time.sleep(0.05)

    def kill(self, node: str) -> None:
        """SIGKILL the whole node (supervisor and worker): no drain, no goodbye to Redis."""
        proc = self.procs.pop(node)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_node(self, node: str) -> int:
        proc = self.procs.pop(node)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for node in list(self.procs):
            self.kill(node)
        self._echo_stop.set()
        if self._echo is not None:
            self._echo.join(5)
        self.redis.stop()

    # -- the echo peer -----------------------------------------------------------------------

    def _start_echo(self) -> None:
        sock = self.lab.socket("echo")
        sock.bind((ECHO_IP, ECHO.port))
        sock.settimeout(0.2)

        def run() -> None:
            with sock:
                while not self._echo_stop.is_set():
                    try:
                        data, addr = sock.recvfrom(2048)
                    except TimeoutError:
                        continue
                    sock.sendto(data, addr)

        self._echo = threading.Thread(target=run, daemon=True)
        self._echo.start()

    # -- clients and checks ------------------------------------------------------------------

    def client(self, node: str, user: str, password: str | None = None) -> TurnClient:
        sock = self.lab.socket("peer")
        client = TurnClient(3478, user, password or USERS[user], REALM, lab_socket=sock,
                            server_host=NODES[node])  # fmt: skip
        client.sock.settimeout(3)
        self.clients.append(client)
        return client

    def cli(
        self, *args: str, config: str = "n1", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`natkit cluster ARGS -c <node's config>`, run in node `redis`."""
        argv = [sys.executable, "-m", "natkit", "cluster", *args, "-c",
                str(self.tmp / f"{config}.yaml")]  # fmt: skip
        return self.lab.exec("redis", argv, timeout=20, env={**os.environ, **(env or {})})

    def status(self) -> dict[str, Any]:
        done = self.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def readyz(self, node: str) -> tuple[int, str]:
        return self.lab.call(node, _get, f"http://{NODES[node]}:9641/readyz")

    def metric(self, node: str, name: str) -> float:
        _, text = self.lab.call(node, _get, f"http://{NODES[node]}:9641/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in the metrics of {node}")


def relays(client: TurnClient, payload: bytes = b"ping") -> bool:
    """A Send indication to the echo peer comes back as a Data indication (permission first)."""
    assert client.permit([ECHO]) is not None
    tid = os.urandom(12)
    attrs = [(AttrType.XOR_PEER_ADDRESS, ECHO), (AttrType.DATA, payload)]
    client._send(Message(Method.SEND, MessageClass.INDICATION, tid, attrs).encode())  # type: ignore[arg-type]
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            data = client.recv()
        except TimeoutError:
            return False
        if data[0] < 0x40:
            msg = parse_message(data)
            if msg.method == Method.DATA and msg.get(AttrType.DATA) == payload:
                return True
    return False


def wait_for(check: Callable[[], bool], timeout: float, step: float = 0.1) -> float:
    """Seconds until `check()` held; AssertionError after `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(step)
    return time.monotonic() - start


def _ping(host: str) -> bool:
    import socket

    try:
        with socket.create_connection((host, 6379), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()


__all__ = ["ECHO", "LEASE", "NODES", "TOPOLOGY", "Fleet", "code", "node_config", "relays",
           "wait_for"]  # fmt: skip
