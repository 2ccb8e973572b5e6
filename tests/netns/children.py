"""Child processes the lab tests start and signal: a `Lab.up` frozen mid-build, and reaping."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Lab.up with the build stopped right after the links exist: namespaces and state are on disk.
_SLOW_UP = textwrap.dedent(
    """
    import sys, time
    import natkit.lab.netlink as nl
    from natkit.lab import Lab
    real = nl._run
    def slow(argv, stdin=None, what=""):
        real(argv, stdin, what)
        if what == "ip link add":
            print("READY", flush=True)
            time.sleep(60)
    nl._run = slow
    Lab.up("pair-full-cone", name=sys.argv[1], persistent=sys.argv[2] == "persistent")
    """
)


def slow_up(name: str, *, persistent: bool = False) -> subprocess.Popen[str]:
    """A child building lab `name`, returned once it is stuck in the middle of the build."""
    how = "persistent" if persistent else "owned"
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_UP, name, how], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "READY":
        child.kill()
        child.wait()
        raise AssertionError(f"the slow build did not start: {line!r}")
    return child


@contextmanager
def reaped(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """`proc`, SIGKILLed and waited for on the way out if it is still running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
