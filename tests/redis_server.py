"""A real redis-server (Debian package) for the cluster tests: no disk persistence, stopped
(SIGKILL after a grace) on `stop` and on leaving the context, also on failure."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

Spawn = Callable[[list[str]], "subprocess.Popen[Any]"]


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:  # CI installs it (Makefile APT_PACKAGES): never skip there
        import os

        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing: make system-packages installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return found


class RedisServer:
    """redis-server on HOST:PORT, started with `spawn` (default: here; a lab's `spawn` puts it
    in a namespace) and answered PING before `start` returns."""

    def __init__(
        self, host: str, port: int, spawn: Spawn | None = None,
        ping: Callable[[], bool] | None = None,
    ) -> None:  # fmt: skip
        self.host, self.port = host, port
        self._spawn = spawn or (lambda argv: subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        self._ping = ping or self._ping_here
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        argv = [redis_binary(), "--bind", self.host, "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--dir", "/tmp",
                "--loglevel", "warning"]  # fmt: skip
        self.proc = self._spawn(argv)
        deadline = time.monotonic() + timeout
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on {self.host}:{self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _ping_here(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
