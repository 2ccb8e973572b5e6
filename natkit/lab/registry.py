"""Which labs exist: one JSON state file per lab, written *before* any object is created.

A state file names the lab's prefix, its namespaces and its owner (pid + process start time, so a
reused pid is not mistaken for the owner). `gc` removes a lab whose build never finished and whose
owner is gone (killed in the middle of `up`), a lab owned by a dead process unless it was made
`persistent` (the CLI's `natkit lab up` returns while the lab stays up), and any namespace that
carries a lab prefix but belongs to no live lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from natkit.errors import LabError
from natkit.lab import netlink

__all__ = [
    "PREFIX_PATTERN",
    "LabState",
    "claim",
    "files_dir",
    "gc",
    "load_all",
    "load_state",
    "remove_lab",
    "state_dir",
]

PREFIX_PATTERN = re.compile(r"^(nk[0-9a-f]{4})-")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def state_dir() -> Path:
    return Path(os.environ.get("NATKIT_LAB_STATE_DIR", "/run/natkit/labs"))


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class LabState:
    """What is on disk for one lab."""

    name: str
    prefix: str
    topology: str
    status: str = "building"
    """building → up; a lab stuck in "building" with a dead owner was interrupted."""
    persistent: bool = False
    pid: int = field(default_factory=os.getpid)
    pid_start: int | None = field(default_factory=lambda: _start_time(os.getpid()))
    namespaces: list[str] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return state_dir() / f"{self.name}.json"

    def owner_alive(self) -> bool:
        return _start_time(self.pid) == self.pid_start and self.pid_start is not None

    def save(self, *, create: bool = False) -> None:
        data = json.dumps(asdict(self), indent=1)
        if create:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise LabError(
                    f"a lab named {self.name} already exists (natkit lab down {self.name})"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(data)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(data)
        tmp.replace(self.path)


def files_dir(state: LabState) -> Path:
    """Where a lab keeps files its daemons need (configs, logs); removed with the lab."""
    return state_dir() / f"{state.name}.d"


def load_state(name: str) -> LabState:
    try:
        raw = json.loads((state_dir() / f"{name}.json").read_text())
        return LabState(**raw)
    except FileNotFoundError:
        raise LabError(f"no lab named {name} (natkit lab status lists them)") from None
    except (ValueError, TypeError) as err:
        raise LabError(f"state of lab {name} is unreadable: {err}") from err


def load_all() -> list[LabState]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for path in sorted(state_dir().glob("*.json")):
            with contextlib.suppress(LabError, OSError):
                out.append(load_state(path.stem))
    return out


def claim(topology: str, name: str | None, persistent: bool) -> LabState:
    """Reserve a unique name and prefix and write the state file (status "building")."""
    if name is not None and not _NAME.match(name):
        raise LabError(f"lab name {name!r}: use 1-63 of A-Z a-z 0-9 _ . - (starting alphanumeric)")
    state_dir().mkdir(parents=True, exist_ok=True)
    taken = {s.prefix for s in load_all()} | {
        m.group(1)
        for n in netlink.list_namespaces(PREFIX_PATTERN)
        if (m := PREFIX_PATTERN.match(n))
    }
    for _ in range(64):
        prefix = "nk" + secrets.token_hex(2)
        if prefix not in taken:
            break
    else:
        raise LabError("no free lab prefix (run natkit lab gc)")
    state = LabState(
        name=name or f"{topology}-{prefix[2:]}",
        prefix=prefix,
        topology=topology,
        persistent=persistent,
    )
    state.save(create=True)
    return state


def remove_lab(state: LabState) -> None:
    """Remove every namespace of the lab (known or carrying its prefix), then its state file."""
    names = set(state.namespaces) | {
        n for n in netlink.list_namespaces(PREFIX_PATTERN) if n.startswith(state.prefix + "-")
    }
    netlink.delete_namespaces(sorted(names))  # kills the lab's daemons too
    from natkit.lab import daemons  # lazily: `natkit lab down` stays light

    daemons.remove(daemons.run_dir(state_dir(), state.prefix))
    shutil.rmtree(files_dir(state), ignore_errors=True)  # after the daemons that used it died
    with contextlib.suppress(FileNotFoundError):
        state.path.unlink()


def gc() -> list[str]:
    """Remove leftovers of crashed labs; return what was removed (lab names, namespace names)."""
    removed = []
    live_prefixes = set()
    # Namespaces first, states second: a lab claimed in between has its state file already.
    candidates = netlink.list_namespaces(PREFIX_PATTERN)
    for state in load_all():
        stale = not state.owner_alive() and (state.status != "up" or not state.persistent)
        if stale:
            remove_lab(state)
            removed.append(state.name)
        else:
            live_prefixes.add(state.prefix)
    orphans = [
        n for n in candidates if (m := PREFIX_PATTERN.match(n)) and m.group(1) not in live_prefixes
    ]
    if orphans:
        netlink.delete_namespaces(orphans)
        removed += orphans
    from natkit.lab import daemons

    for run in state_dir().glob("nk*.run"):  # daemon files of labs no longer on record
        if run.name.removesuffix(".run") not in live_prefixes:
            daemons.remove(run)
            removed.append(str(run))
    return removed
