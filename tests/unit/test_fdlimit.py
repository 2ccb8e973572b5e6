"""natkit serve's file descriptor budget: the soft limit raised to the hard one, one line when
connections + relay sockets cannot fit (issue 11, item 2)."""

from __future__ import annotations

import resource
import subprocess
import sys

from natkit.config import loads
from natkit.fdlimit import SPARE, fd_budget


def test_raise_nofile_lifts_the_soft_limit_to_the_hard_one() -> None:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 256))

    code = "import resource; from natkit.fdlimit import raise_nofile; print(raise_nofile(), " \
        "resource.getrlimit(resource.RLIMIT_NOFILE))"  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=limit, capture_output=True, text=True, check=True
    ).stdout
    assert out.split(None, 1) == ["256", "(256, 256)\n"]


def test_fd_budget_names_the_keys_when_they_cannot_fit() -> None:
    config = loads(
        "version: 1\nstun: {stream: {max_connections: 100}}\n"
        "turn: {enabled: true, auth: {users: {a: b}}, relay: {ports: 50000-50099}}\n",
        "n.yaml",
    )
    need = 100 + 100 + SPARE
    assert fd_budget(config, need) is None
    line = fd_budget(config, need - 1)
    assert line is not None and "\n" not in line
    assert "stun.stream.max_connections" in line and f"= {need}" in line
    stun_only = loads("version: 1\nstun: {stream: {max_connections: 100}}\n", "n.yaml")
    assert fd_budget(stun_only, 100 + SPARE) is None
