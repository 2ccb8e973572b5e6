"""A real redis-server (Debian package) for the cluster tests: no disk persistence, stopped
(SIGKILL after a grace) on `stop` and on leaving the context, also on failure."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
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
        ping: Callable[[], bool] | None = None, tls: tuple[Path, Path] | None = None,
        password: str | None = None,
    ) -> None:  # fmt: skip
        """`tls`: (certificate, key) to serve TLS only (the certificate is also the CA);
        `password`: requirepass."""
        self.host, self.port = host, port
        self.tls, self.password = tls, password
        self._spawn = spawn or (lambda argv: subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        self._ping = ping or self._ping_here
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return (f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.tls[0]}"
                    "&ssl_check_hostname=false")  # fmt: skip
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        argv = [redis_binary(), "--bind", self.host, "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--dir", "/tmp",
                "--loglevel", "warning"]  # fmt: skip
        if self.tls is not None:
            cert, key = self.tls
            argv[3:5] = ["--port", "0", "--tls-port", str(self.port)]
            argv += ["--tls-cert-file", str(cert), "--tls-key-file", str(key),
                     "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
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
        if self.tls is not None or self.password:
            import redis

            try:
                return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
            except (redis.RedisError, OSError):
                return False
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
