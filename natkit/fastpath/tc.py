"""Attaching and detaching natkit's tc-BPF programs (iproute2 `tc`, clsact ingress).

Each attachment is one `bpf direct-action` filter on an interface's clsact ingress hook, at a
preference of its own in natkit's range (`PREF_LOW`..`PREF_HIGH`), so several natkit servers in
one network namespace never touch each other's filters and nothing else's. `tc` runs in the
caller's network namespace (a lab node's when serve runs inside the lab).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PREF_HIGH", "PREF_LOW", "Attached", "TcError", "attach", "detach", "natkit_filters"]

PREF_LOW, PREF_HIGH = 0xC000, 0xC0FF
PROGRAM_NAME = "natkit_stun"
_FILTER = re.compile(r"pref (\d+) bpf .*? id (\d+) name (\S+)")


class TcError(RuntimeError):
    """`tc` failed or is missing: the message says what and how to fix it."""


@dataclass(frozen=True)
class Attached:
    device: str
    pref: int
    prog_id: int
    created_qdisc: bool


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    tc = shutil.which("tc") or shutil.which("tc", path="/usr/sbin:/sbin")
    if tc is None:
        raise TcError("`tc` not found: install iproute2 (apt-get install iproute2)")
    proc = subprocess.run([tc, *args], capture_output=True, text=True, timeout=10, check=False)
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TcError(f"tc {' '.join(args[:4])}: {detail}")
    return proc


def natkit_filters(device: str) -> list[tuple[int, int]]:
    """(pref, program id) of every natkit filter on `device`'s ingress."""
    proc = _tc("filter", "show", "dev", device, "ingress", check=False)
    found = []
    for match in _FILTER.finditer(proc.stdout):
        pref, prog_id, name = int(match[1]), int(match[2]), match[3]
        if PREF_LOW <= pref <= PREF_HIGH and name == PROGRAM_NAME:
            found.append((pref, prog_id))
    return found


def _filter_count(device: str) -> int:
    counts = 0
    for hook in ("ingress", "egress"):
        proc = _tc("filter", "show", "dev", device, hook, check=False)
        counts += sum(1 for line in proc.stdout.splitlines() if " handle " in line)
    return counts


def attach(device: str, obj: Path) -> Attached:
    """Load `obj` (its ``tc`` section) on `device`'s ingress at a free natkit preference."""
    added = _tc("qdisc", "add", "dev", device, "clsact", check=False)
    created = added.returncode == 0
    if not created and not ("File exists" in added.stderr or "Exclusivity" in added.stderr):
        detail = (added.stderr.strip().splitlines() or ["no output"])[-1]
        raise TcError(f"tc qdisc add dev {device} clsact: {detail}")
    taken = {pref for pref, _ in natkit_filters(device)}
    last = "no free natkit preference on the interface"
    for pref in range(PREF_LOW, PREF_HIGH + 1):
        if pref in taken:
            continue
        proc = _tc("filter", "add", "dev", device, "ingress", "pref", str(pref), "handle", "1",
                   "bpf", "direct-action", "obj", str(obj), "sec", "tc", check=False)  # fmt: skip
        if proc.returncode == 0:
            for found_pref, prog_id in natkit_filters(device):
                if found_pref == pref:
                    return Attached(device, pref, prog_id, created)
            last = "the filter was added but is not listed"
            break
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "exists" not in last.lower():  # a real failure (verifier, permissions), not a race
            break
    if created and _filter_count(device) == 0:
        _tc("qdisc", "del", "dev", device, "clsact", check=False)
    raise TcError(f"loading the kernel fast path on {device} failed: {last}")


def detach(attached: Attached) -> None:
    """Remove the filter; the clsact qdisc too when natkit created it and nothing else uses it."""
    _tc("filter", "del", "dev", attached.device, "ingress", "pref", str(attached.pref),
        check=False)  # fmt: skip
    if attached.created_qdisc and _filter_count(attached.device) == 0:
        _tc("qdisc", "del", "dev", attached.device, "clsact", check=False)


def remove(device: str, pref: int) -> None:
    """Remove a leftover natkit filter (its owner is gone), and the clsact qdisc if empty."""
    _tc("filter", "del", "dev", device, "ingress", "pref", str(pref), check=False)
    if _filter_count(device) == 0:
        _tc("qdisc", "del", "dev", device, "clsact", check=False)
