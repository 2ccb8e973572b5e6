"""The Lab API: build a topology, run commands and Python inside its nodes, tear it down.

    with Lab.up("symmetric") as lab:
        lab.exec("peer", ["ping", "-c1", "203.0.113.10"], check=True)
        sock = lab.socket("peer")             # a UDP socket living in node "peer"
        server = lab.spawn("server", ["natkit", "serve"])   # killed by down()

Everything a lab creates is recorded (`natkit.lab.registry`) before it exists, so `down()`, a
failed `up()`, `natkit lab down` and `natkit lab gc` can always remove all of it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from natkit.errors import LabError
from natkit.lab import netlink, registry, signals
from natkit.lab.registry import LabState

if TYPE_CHECKING:  # imported in up(): attach/down/gc (the CLI's `lab down`) never need yaml
    from natkit.lab.topology import Topology

__all__ = ["Lab", "down_all", "gc"]

T = TypeVar("T")


class Lab:
    """A running lab. Create with `Lab.up(...)` (or `Lab.attach(name)` for one already up)."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self._procs: list[subprocess.Popen[Any]] = []
        self._sockets: list[socket.socket] = []
        self._running: set[subprocess.Popen[Any]] = set()  # exec() children, while they run
        self._lock = threading.Lock()
        self._stopping = False
        self._owner_token: str | None = None  # set while this process owns the lab
        self.build_seconds = 0.0

    # -- life cycle -------------------------------------------------------------------------
    @classmethod
    def up(
        cls, topology: Topology | str | Path, name: str | None = None, *, persistent: bool = False
    ) -> Lab:
        """Build `topology` (a Topology, preset name or YAML path); return the running lab.

        `persistent` labs outlive this process (the CLI's `lab up`). Others belong to this
        process: SIGTERM and SIGHUP unwind like Ctrl-C while it holds one, interpreter exit
        removes one left up, and `natkit lab gc` removes them once the process is gone.
        """
        from natkit.lab.portmap import check_dependencies
        from natkit.lab.presets import load_topology

        topo = load_topology(topology)
        netlink.check_privileges()
        check_dependencies(topo)
        started = time.perf_counter()
        # Owned before the state file exists: a SIGTERM from here on unwinds (natkit.lab.signals).
        token = f"#building-{secrets.token_hex(4)}"  # "#" is in no lab name
        built: list[LabState] = []

        def remove_built() -> None:
            for state in built:
                registry.remove_lab(state)

        signals.own(token, remove_built)
        try:
            state = registry.claim(topo.name, name, persistent)
            built.append(state)
            forwarders = _build(topo, state)
        except BaseException:
            try:
                with signals.deferred(), contextlib.suppress(Exception):
                    remove_built()
            finally:
                signals.disown(token)
            raise
        lab = cls(state)
        lab._procs.extend(forwarders)  # reaped by stop(); namespace removal kills them anyway
        lab.build_seconds = time.perf_counter() - started
        if not persistent:  # a persistent lab outlives this process: it is nobody's to remove
            lab._owner_token = state.name
            signals.own(state.name, lab.down)
        signals.disown(token)
        return lab

    @classmethod
    def attach(cls, name: str) -> Lab:
        """A handle on a lab that is already up (e.g. started by `natkit lab up`)."""
        return cls(registry.load_state(name))

    def down(self) -> None:
        """Stop what was spawned, close lab sockets, remove every namespace and the record.

        SIGTERM / SIGHUP arriving meanwhile are held until the lab is gone (`signals.deferred`).
        """
        try:
            with signals.deferred():
                self.stop()
                for sock in self._sockets:
                    sock.close()  # an open socket would keep its namespace (and veths) alive
                self._sockets.clear()
                registry.remove_lab(self.state)
        finally:
            if self._owner_token is not None:
                signals.disown(self._owner_token)
                self._owner_token = None

    def stop(self, grace: float = 1.0) -> None:
        """Terminate every process `spawn()` and `exec()` started (SIGTERM, SIGKILL after
        `grace` seconds) and refuse new ones: threads still using the lab then return soon."""
        with signals.deferred():
            with self._lock:
                self._stopping = True
                procs = [*self._procs, *self._running]
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + grace
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, deadline - time.monotonic()))
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            with self._lock:
                self._procs.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"<Lab {self.name} ({self.state.topology}, prefix {self.prefix})>"

    # -- facts ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.state.name

    @property
    def prefix(self) -> str:
        return self.state.prefix

    @property
    def nodes(self) -> list[str]:
        return [n for n in self.state.nodes if n != "internet"]

    def _node(self, node: str) -> dict[str, Any]:
        try:
            return self.state.nodes[node]
        except KeyError:
            raise LabError(
                f"lab {self.name} has no node {node!r} (nodes: {', '.join(self.nodes)})"
            ) from None

    def netns(self, node: str) -> str:
        """The network namespace name of `node`."""
        return str(self._node(node)["netns"])

    def addresses(self, node: str) -> list[str]:
        """All addresses of `node`'s uplink, IPv4 first (a NAT's are its WAN addresses)."""
        return list(self._node(node)["addresses"])

    def address(self, node: str, family: socket.AddressFamily = socket.AF_INET) -> str:
        """The first address of `node` in `family`."""
        version = 6 if family == socket.AF_INET6 else 4
        for addr in self.addresses(node):
            if ipaddress.ip_address(addr).version == version:
                return addr
        raise LabError(f"node {node} has no IPv{version} address")

    def link_stats(self, node: str) -> dict[str, Any]:
        """Counters of the forwarder on `node`'s delayed uplink, per direction ("to_parent",
        "to_node": received, forwarded, lost, queue_drops, reordered, queued, ...) and its
        memory ("rss_kib")."""
        netns = self._node(node).get("link_netns")
        if netns is None:
            raise LabError(f"node {node}'s uplink has no forwarder (no delay, jitter or reorder)")
        from natkit.lab.forwarder import stats

        return stats(str(netns))

    def status(self) -> dict[str, Any]:
        """The lab as JSON-able data (what `natkit lab status --json` prints)."""
        return {
            "name": self.name,
            "topology": self.state.topology,
            "prefix": self.prefix,
            "status": self.state.status,
            "owner_pid": self.state.pid,
            "persistent": self.state.persistent,
            "nodes": self.state.nodes,
        }

    # -- running things inside nodes --------------------------------------------------------
    def call(self, node: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` in a thread inside `node`'s namespace; return the result."""
        return netlink.in_netns(self.netns(node), fn, *args, **kwargs)

    def socket(
        self,
        node: str,
        family: socket.AddressFamily = socket.AF_INET,
        type: socket.SocketKind = socket.SOCK_DGRAM,
    ) -> socket.socket:
        """A socket living in `node` (closed by `down()` if still open)."""
        sock = self.call(node, socket.socket, family, type)
        self._sockets.append(sock)
        return sock

    def exec(
        self,
        node: str,
        argv: list[str],
        *,
        check: bool = False,
        timeout: float | None = 60,
        capture_output: bool = True,
        text: bool = True,
        input: str | bytes | None = None,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run `argv` inside `node` and wait (like `subprocess.run`, argv list only)."""
        if capture_output:
            kwargs.setdefault("stdout", subprocess.PIPE)
            kwargs.setdefault("stderr", subprocess.PIPE)
        if input is not None:
            kwargs["stdin"] = subprocess.PIPE
        proc = self._popen(node, argv, self._running, text=text, **kwargs)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            with self._lock:
                self._running.discard(proc)
        done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check:
            done.check_returncode()
        return done

    def execvp(self, node: str, argv: list[str]) -> NoReturn:
        """Replace this process with `argv` running inside `node` (what `natkit lab exec` does):
        signals then reach the command itself and its exit status is the process's."""
        netns = self.netns(node)
        sys.stdout.flush()
        sys.stderr.flush()
        netlink.exec_in_netns(netns, argv)
        raise AssertionError("unreachable: execvp returned")

    def spawn(self, node: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in the background inside `node`; `down()` terminates it."""
        return self._popen(node, argv, self._procs, **kwargs)

    def _popen(
        self,
        node: str,
        argv: list[str],
        into: list[subprocess.Popen[Any]] | set[subprocess.Popen[Any]],
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        netns = self.netns(node)
        with self._lock:  # started and recorded at once: stop() sees every process
            if self._stopping:
                raise LabError(f"lab {self.name} is being removed")
            proc = netlink.popen_in_netns(netns, argv, **kwargs)
            if isinstance(into, set):
                into.add(proc)
            else:
                into.append(proc)
        return proc


def _build(topo: Topology, state: LabState) -> list[subprocess.Popen[Any]]:
    from natkit.lab import daemons
    from natkit.lab.plan import build_plan

    plan = build_plan(topo, state.prefix)
    daemons.check_binaries(plan.daemons, bool(plan.ip6tables))
    state.namespaces = plan.namespaces
    state.nodes = {
        n.name: {
            "kind": n.kind,
            "netns": n.netns,
            "addresses": [str(a) for a in (*n.addresses, *n.addresses6)],
            **({"lan": str(n.lan)} if n.lan else {}),
            **({"behind": n.parent} if n.parent else {}),
            **({"lan6": str(n.lan6)} if n.lan6 else {}),
            **({"dns": n.dns} if n.dns else {}),
            **({"link_netns": n.link_netns} if n.link_netns else {}),
        }
        for n in plan.nodes.values()
    }
    state.save()  # the namespaces are on record before the first one exists
    forwarders = netlink.apply_plan(plan)
    if plan.daemons:
        run = daemons.run_dir(registry.state_dir(), state.prefix)
        daemons.start({n.name: n.netns for n in plan.nodes.values()}, plan.daemons, run)
    if any(n.port_mapping.enabled for n in topo.nats):
        from natkit.lab.portmap import start_daemons

        start_daemons(topo, plan, registry.files_dir(state))
    state.status = "up"
    state.save()
    return forwarders


def down_all() -> list[str]:
    """Remove every lab on record (of any owner); return their names."""
    names = []
    for state in registry.load_all():
        registry.remove_lab(state)
        names.append(state.name)
    return names


def gc() -> list[str]:
    """Remove leftovers of crashed labs (see `natkit.lab.registry.gc`)."""
    netlink.check_privileges()
    return registry.gc()
