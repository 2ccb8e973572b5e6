"""The control plane of the kernel fast path: build the BPF object, attach it where natkit's UDP
listeners receive, write what it answers with, read its counters, and remove it again.

Theory of operation. `KernelFastPath.start` compiles ``fastpath.bpf.c`` once per source
version (clang, cached), attaches it with `tc` to the ingress of every interface a UDP listener
receives on (its IP's interface; every interface for a wildcard), and writes three things into
each attachment's maps: per listener its address and the bytes user space puts after
XOR-MAPPED-ADDRESS in a plain answer (`BindingHandler.plain_suffix`: RESPONSE-ORIGIN,
OTHER-ADDRESS, SOFTWARE), so kernel and user space answer byte for byte alike; the
``stun.rate_limit`` bucket; and the owner's PID. The user-space server stays bound to the same
ports and answers whatever the program passes up. `close` detaches everything it attached.
A natkit serve killed with SIGKILL leaves its filters behind: `leftovers` finds those whose
owner PID is gone, and `remove_leftovers` (run by serve at start, and by
``natkit serve --cleanup``) removes them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from natkit.addr import Address
from natkit.fastpath import bpf, tc
from natkit.fastpath.build import FastPathError, build_object

__all__ = [
    "COUNTER_NAMES",
    "FastPathError",
    "KernelFastPath",
    "Listener",
    "build_object",
    "interfaces_for",
    "leftovers",
    "remove_leftovers",
    "status",
]

log = logging.getLogger("natkit.fastpath")

MAX_SUFFIX = 128  # fastpath.bpf.c
COUNTER_NAMES = (
    "answered_v4",
    "answered_v6",
    "rate_limited",
    "passed",
    "relayed_to_peer",
    "relayed_to_client",
)
_KEY = struct.Struct("=BBH16s")  # struct listener_key (port in network order: packed by hand)
_RATE = struct.Struct("=QQII")  # struct rate_config


@dataclass(frozen=True)
class Listener:
    """A UDP listener the kernel answers plain Binding requests for."""

    local: Address
    """Its bound address (a wildcard binds every address of its family)."""
    suffix: bytes
    """What follows XOR-MAPPED-ADDRESS in user space's plain answer (a multiple of 4 bytes)."""


def interfaces_for(local: Address) -> list[str]:
    """The interfaces a UDP socket bound to `local` receives on: the one holding its IP, or
    every interface that is up for a wildcard address."""
    proc = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                          timeout=10, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise FastPathError("`ip -j addr show` failed: install iproute2")
    links = json.loads(proc.stdout or "[]")
    family = "inet6" if local.family == 6 else "inet"
    wildcard = local.host in ("0.0.0.0", "::")
    found = []
    for link in links:
        name = link.get("ifname", "")
        up = "UP" in link.get("flags", ()) or name == "lo"
        for info in link.get("addr_info", ()):
            if info.get("family") != family:
                continue
            if (wildcard and up) or info.get("local") == local.host:
                found.append(name)
                break
    return found


def _key(local: Address) -> bytes:
    family = 6 if local.family == 6 else 4
    if local.host in ("0.0.0.0", "::"):
        raw = bytes(16)
    else:
        packed = socket.inet_pton(socket.AF_INET6 if family == 6 else socket.AF_INET, local.host)
        raw = packed.ljust(16, b"\0")
    return _KEY.pack(family, 0, socket.htons(local.port), raw)


@dataclass(frozen=True)
class Attachment:
    """The program on one interface, held by a tcx link (`bpf.tcx_attach`)."""

    device: str
    prog_id: int
    link_fd: int


@dataclass
class KernelFastPath:
    """What one natkit serve attached (`start`), until `close`."""

    attachments: list[Attachment] = field(default_factory=list)
    _maps: list[dict[str, bpf.Map]] = field(default_factory=list)

    @classmethod
    def start(cls, listeners: list[Listener], rate: tuple[int, int] | None) -> KernelFastPath:
        """Attach for `listeners` (`rate`: (per_source, burst), None for no limit). Raises
        FastPathError (nothing left attached) when it cannot run here."""
        if not bpf.available():
            raise FastPathError("bpf(2) is not available on this platform")
        served = [lst for lst in listeners if len(lst.suffix) <= MAX_SUFFIX]
        for skipped in set(listeners) - set(served):
            log.warning(
                "kernel fast path: %s left to user space (its answer suffix is %d bytes, "
                "over %d)", skipped.local, len(skipped.suffix), MAX_SUFFIX,
            )  # fmt: skip
        devices: dict[str, list[Listener]] = {}
        for lst in served:
            for device in interfaces_for(lst.local):
                devices.setdefault(device, []).append(lst)
        if not devices:
            raise FastPathError("no interface carries the UDP listeners' addresses")
        obj = build_object()
        remove_leftovers(list(devices))
        fast = cls()
        try:
            for device, mine in devices.items():
                fast._attach(device, obj, mine, rate)
        except (tc.TcError, bpf.BpfError, OSError) as err:
            fast.close()
            denied = "not permitted" in str(err) or isinstance(err, PermissionError)
            hint = " (it needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)" if denied else ""
            raise FastPathError(f"{err}{hint}") from err
        return fast

    def _attach(self, device: str, obj: Path, listeners: list[Listener],
                rate: tuple[int, int] | None) -> None:  # fmt: skip
        """`tc` (libbpf) loads the object as a filter for a moment; a tcx link on the same
        interface then holds the program and the filter goes: the program lives exactly as
        long as this process holds the link, so a SIGKILL leaves nothing answering."""
        loaded = tc.attach(device, obj)
        try:
            maps = bpf.program_maps(loaded.prog_id)
            self._maps.append(maps)
            self._write_rate(maps, rate)
            for lst in listeners:
                value = struct.pack("=I", len(lst.suffix)) + lst.suffix.ljust(MAX_SUFFIX, b"\0")
                maps["natkit_listen"].update(_key(lst.local), value)
            link = bpf.tcx_attach(loaded.prog_id, socket.if_nametoindex(device))
        finally:
            tc.detach(loaded)
        self.attachments.append(Attachment(device, loaded.prog_id, link))

    @staticmethod
    def _write_rate(maps: dict[str, bpf.Map], rate: tuple[int, int] | None) -> None:
        per_source, burst = rate or (0, 0)
        value = _RATE.pack(per_source, burst, os.getpid(), 0)
        maps["natkit_rate"].update(struct.pack("=I", 0), value)

    def set_rate(self, rate: tuple[int, int] | None) -> None:
        """New ``stun.rate_limit`` figures (SIGHUP): (per_source, burst), None for no limit."""
        for maps in self._maps:
            self._write_rate(maps, rate)

    def counters(self) -> dict[str, int]:
        """Each counter summed over every attachment and CPU."""
        totals = dict.fromkeys(COUNTER_NAMES, 0)
        for maps in self._maps:
            for index, name in enumerate(COUNTER_NAMES):
                totals[name] += maps["natkit_counters"].per_cpu_sum_u64(struct.pack("=I", index))
        return totals

    def close(self) -> None:
        for maps in self._maps:
            for opened in maps.values():
                opened.close()
        self._maps.clear()
        for attached in self.attachments:
            os.close(attached.link_fd)  # the link goes, and the program with it
        self.attachments.clear()


def _owner(prog_id: int) -> int | None:
    try:
        maps = bpf.program_maps(prog_id)
    except bpf.BpfError:
        return None
    try:
        raw = maps["natkit_rate"].lookup(struct.pack("=I", 0)) if "natkit_rate" in maps else None
        return None if raw is None else _RATE.unpack(raw[: _RATE.size])[2]
    finally:
        for opened in maps.values():
            opened.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _all_devices() -> list[str]:
    proc = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                          timeout=10, check=False)  # fmt: skip
    return [link["ifname"] for link in json.loads(proc.stdout or "[]") if "ifname" in link]


def _same_netns(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def _row(prog_id: int, row: dict[str, object]) -> dict[str, object]:
    """`row` completed with the program's owner and counters."""
    owner = _owner(prog_id)
    row["owner_pid"] = owner
    row["owner_alive"] = bool(owner) and _alive(owner or 0)
    try:
        maps = bpf.program_maps(prog_id)
    except bpf.BpfError:
        maps = {}
    try:
        if "natkit_counters" in maps:
            counters = maps["natkit_counters"]
            for index, name in enumerate(COUNTER_NAMES):
                row[name] = counters.per_cpu_sum_u64(struct.pack("=I", index))
        if "natkit_listen" in maps:
            row["listeners"] = len(maps["natkit_listen"].list_keys())
        if "natkit_chans" in maps:
            row["channels"] = len(maps["natkit_chans"].list_keys())
    finally:
        for opened in maps.values():
            opened.close()
    return row


def status(devices: list[str] | None = None) -> list[dict[str, object]]:
    """Every natkit program attached in this network namespace: its tcx links (owned by a
    running natkit serve here) and any tc filter an older or interrupted start left."""
    rows: list[dict[str, object]] = []
    for link_id, prog_id, ifindex in bpf.tcx_links():
        if bpf.program_name(prog_id) != tc.PROGRAM_NAME:
            continue
        owner = _owner(prog_id)
        if not owner or not _same_netns(owner):
            continue  # another namespace's (ifindexes are per namespace)
        try:
            device = socket.if_indextoname(ifindex)
        except OSError:
            continue
        if devices is None or device in devices:
            rows.append(_row(prog_id, {"device": device, "kind": "tcx", "link_id": link_id,
                                       "program_id": prog_id}))  # fmt: skip
    for device in devices or _all_devices():
        for pref, prog_id in tc.natkit_filters(device):
            rows.append(_row(prog_id, {"device": device, "kind": "tc", "pref": pref,
                                       "program_id": prog_id}))  # fmt: skip
    return rows


def leftovers(devices: list[str] | None = None) -> list[tuple[str, int]]:
    """(device, pref) of natkit filters whose owning process is gone."""
    found = []
    for device in devices or _all_devices():
        for pref, prog_id in tc.natkit_filters(device):
            owner = _owner(prog_id)
            if not owner or not _alive(owner):  # 0: killed before it wrote its PID
                found.append((device, pref))
    return found


def remove_leftovers(devices: list[str] | None = None) -> list[tuple[str, int]]:
    """Remove what `leftovers` finds; returns what was removed."""
    removed = leftovers(devices)
    for device, pref in removed:
        tc.remove(device, pref)
        log.info("kernel fast path: removed a leftover filter on %s (pref %d)", device, pref)
    return removed
