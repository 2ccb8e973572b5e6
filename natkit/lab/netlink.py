"""Carrying out a plan: namespaces, links, addresses, sysctls, nft and tc, and removing them again.

Links and addresses go through `ip -batch` (one process for all links, one per namespace for
addresses and routes, run in parallel); rulesets through one `nft -f` per namespace. Work inside a
namespace that needs no external binary (sysctls, sockets, Python callables) runs in a short-lived
thread that `setns()`es into it: the thread's namespace is its own, and a socket it creates stays
in that namespace (FIELD-NOTES.md), so nothing pays for a process start. Subprocesses started from
such a thread are born in the namespace too.

Every veth is created with both ends directly in lab namespaces (`ip link add ... netns A type veth
peer name ... netns B`): the host namespace never holds a lab interface, even for a moment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from natkit.errors import DependencyError, LabError, PrivilegeError

if TYPE_CHECKING:  # `natkit lab down` must not pay for the topology/plan/nft modules and yaml
    from natkit.lab.plan import Plan

__all__ = [
    "NETNS_DIR",
    "alive",
    "apply_plan",
    "check_privileges",
    "delete_namespaces",
    "exec_in_netns",
    "in_netns",
    "kill_namespace_processes",
    "list_namespaces",
    "popen_in_netns",
]

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> None:
    """PrivilegeError unless we may create namespaces; DependencyError if a tool is missing."""
    # Capabilities, not the uid: root in a container with dropped capabilities cannot either.
    caps = _effective_caps()
    if not (caps >> 12 & 1 and caps >> 21 & 1):  # CAP_NET_ADMIN, CAP_SYS_ADMIN
        raise PrivilegeError(
            "natkit lab needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network "
            "namespaces: run it with sudo"
        )
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            raise DependencyError(f"natkit lab needs `{tool}`: install the {package} package")


def in_netns(netns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` in a thread inside network namespace `netns`; return its result.

    Only the thread switches namespace; sockets it creates stay in `netns` for their lifetime.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            _setns(netns)
            result.append(fn(*args, **kwargs))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _setns(netns: str) -> None:
    """Move the calling thread into network namespace `netns`."""
    try:
        fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {netns} does not exist") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def exec_in_netns(netns: str, argv: list[str]) -> None:
    """Replace this process with `argv` running inside `netns` (returns only by raising).

    No parent stays behind to forward signals: SIGTERM, SIGINT and SIGHUP reach the command
    itself, and its exit status (or the signal that killed it) is the caller's.
    """
    _setns(netns)
    # What Python changed at start-up that an exec'd command must not inherit (subprocess
    # restores the same for its children).
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    os.execvp(argv[0], argv)


def popen_in_netns(netns: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start `argv` inside `netns` (a child forked from a thread that is in the namespace)."""
    return in_netns(netns, subprocess.Popen, argv, **kwargs)


def _run(argv: list[str], stdin: str | None = None, what: str = "") -> None:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"{what or argv[0]} failed: {detail[0] if detail else proc.returncode}")


def _wait_all(procs: list[tuple[str, subprocess.Popen[str]]]) -> None:
    failure = None
    for what, proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0 and failure is None:
            lines = err.strip().splitlines()
            failure = f"{what} failed: {lines[0] if lines else proc.returncode}"
    if failure:
        raise LabError(failure)


def _write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        path = "/proc/sys/" + key
        if key.startswith("net/bridge/") and not os.path.exists(path):
            continue  # br_netfilter not loaded: bridged frames skip netfilter anyway
        with open(path, "w") as f:
            f.write(value)


def apply_plan(plan: Plan) -> list[subprocess.Popen[bytes]]:
    """Create everything in `plan`; return the link forwarders started. On error the caller
    removes the namespaces (all of it, forwarders included: they live in lab namespaces)."""
    names = plan.namespaces
    _run(["ip", "-batch", "-"], "".join(f"netns add {n}\n" for n in names), "ip netns add")
    for ns, values in plan.sysctls.items():
        in_netns(ns, _write_sysctls, values)
    _run(["ip", "-batch", "-"], "\n".join(plan.link_batch) + "\n", "ip link add")
    procs = []
    for ns, lines in plan.ns_batch.items():
        proc = subprocess.Popen(
            ["ip", "-n", ns, "-batch", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write("\n".join(lines) + "\n")
        proc.stdin.close()
        procs.append((f"ip -n {ns}", proc))
    for ns, text in plan.nft.items():
        procs.append(
            (
                f"nft in {ns}",
                popen_in_netns(
                    ns,
                    ["nft", "-f", "-"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
        stdin = procs[-1][1].stdin
        assert stdin is not None
        stdin.write(text)
        stdin.close()
    for _, proc in procs:
        proc.stdin = None  # already closed; communicate() must not flush it again
    _wait_all(procs)
    for ns, lines in plan.tc_batch.items():
        _run(["tc", "-n", ns, "-batch", "-"], "\n".join(lines) + "\n", f"tc in {ns}")
    for ns, values in plan.late_sysctls.items():
        in_netns(ns, _write_sysctls, values)
    for ns, text in plan.ip6tables.items():
        done = in_netns(
            ns, subprocess.run, ["ip6tables-restore"], input=text,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise LabError(f"ip6tables-restore in {ns} failed: {done.stderr.strip()[:200]}")
    return _start_forwarders(plan)


def _start_forwarders(plan: Plan) -> list[subprocess.Popen[bytes]]:
    """Start every link forwarder (in parallel) and wait until each has its sockets bound."""
    from natkit.lab import forwarder

    procs = [
        (f"node {f.node}", forwarder.start((f.node_side, f.parent_side), f.model, f.netns))
        for f in plan.forwarders
    ]
    for what, proc in procs:
        forwarder.wait_ready(proc, what)
    return [proc for _, proc in procs]


def list_namespaces(pattern: re.Pattern[str] | None = None) -> list[str]:
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []
    return [n for n in names if pattern is None or pattern.match(n)]


def _netns_inodes(names: Iterable[str]) -> set[tuple[int, int]]:
    inodes = set()
    for name in names:
        try:
            st = os.stat(os.path.join(NETNS_DIR, name))
        except FileNotFoundError:
            continue
        inodes.add((st.st_dev, st.st_ino))
    return inodes


def _pids_in(inodes: set[tuple[int, int]]) -> list[int]:
    pids = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            pids.append(int(entry))
    return pids


def kill_namespace_processes(names: Iterable[str], grace: float = 0.0) -> None:
    """SIGTERM (if `grace`) then SIGKILL every process in the namespaces (`ip netns del` with a
    process inside removes only the name)."""
    inodes = _netns_inodes(names)
    if not inodes:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        if sig == signal.SIGTERM and not grace:
            continue
        pids = _pids_in(inodes)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}/ns/net") and alive(p)]
            if pids:
                time.sleep(0.01)


def alive(pid: int) -> bool:
    """`pid` exists and is no zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def delete_namespaces(names: Iterable[str], grace: float = 2.0) -> None:
    """Remove the namespaces (and with them every interface inside); missing ones are ignored.

    Processes still inside get SIGTERM and `grace` seconds to finish (a server flushing its log,
    a test peer writing its report), then SIGKILL.
    """
    present = [n for n in names if os.path.exists(os.path.join(NETNS_DIR, n))]
    if not present:
        return
    kill_namespace_processes(present, grace)
    subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input="".join(f"netns del {n}\n" for n in present),
        capture_output=True,
        text=True,
        check=False,
    )
    left = [n for n in present if os.path.exists(os.path.join(NETNS_DIR, n))]
    if left:
        raise LabError(f"could not remove network namespaces: {', '.join(left)}")
