"""Lab life cycle: every preset builds and goes away, labs coexist, the host namespace stays out of
reach, `gc` cleans up after SIGKILL, and the CLI passes exit statuses through (needs root)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from natkit.lab import Lab, preset_names
from natkit.lab.netlink import list_namespaces
from natkit.lab.probe import Reflector, probe
from natkit.lab.registry import PREFIX_PATTERN, load_all, state_dir
from tests.netns.children import reaped, slow_up

pytestmark = pytest.mark.netns
MakeLab = Callable[..., Lab]
S1 = ("203.0.113.10", 3478)


def new_leftovers(before: set[str]) -> list[str]:
    """Lab namespaces created since `before` that no other live process's lab owns (other test
    runs may share the machine)."""
    others = {s.prefix for s in load_all() if s.pid != os.getpid()}
    return [
        n for n in set(list_namespaces(PREFIX_PATTERN)) - before if n.split("-")[0] not in others
    ]


def _host_veths() -> list[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()


def _natkit(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natkit", "lab", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )  # type: ignore[call-overload]


def _reaches_s1(lab: Lab, host: str) -> bool:
    """An IPv6-only host reaches S1 through its LAN's NAT64 (natkit.lab.ipv6)."""
    if any(":" not in a for a in lab.addresses(host)):
        return probe(lab.socket(host), S1) is not None
    from natkit.lab.ipv6 import NAT64_PREFIX

    synth = ipaddress.IPv6Address(
        int(NAT64_PREFIX.network_address) | int(ipaddress.IPv4Address(S1[0]))
    )
    return probe(lab.socket(host, socket.AF_INET6), (str(synth), S1[1])) is not None


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_builds_and_leaves_nothing(preset: str) -> None:
    before = set(list_namespaces())
    with Lab.up(preset) as lab:
        assert all(lab.netns(n).startswith(lab.prefix + "-") for n in lab.nodes)
        assert not [v for v in _host_veths() if lab.prefix in v]  # never in the host namespace
        hosts = [n for n, i in lab.status()["nodes"].items() if i["kind"] == "host"]
        with Reflector(lab, "server", [S1]):
            reached = {h: _reaches_s1(lab, h) for h in hosts}
        blocked = {h for h in hosts if "udp-blocked" in h} | (
            set(hosts) if preset == "udp-blocked" else set()
        )
        assert reached == {h: h not in blocked for h in hosts}
    assert new_leftovers(before) == []
    assert not [v for v in _host_veths() if lab.prefix in v]


def test_two_labs_at_once(nat_lab: MakeLab) -> None:
    one, two = nat_lab("full-cone"), nat_lab("full-cone")
    assert one.prefix != two.prefix and one.name != two.name
    for lab in (one, two):  # same addresses, separate worlds
        with Reflector(lab, "server", [S1]):
            assert probe(lab.socket("peer"), S1) is not None


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    return [
        a["local"]
        for link in json.loads(out)
        for a in link.get("addr_info", [])
        if a["family"] == "inet"
    ]


def test_no_node_reaches_the_host_namespace(nat_lab: MakeLab) -> None:
    lab = nat_lab("cgnat")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # in the host namespace
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", listener.getsockname()[1]))
    udp.settimeout(0.2)
    port = listener.getsockname()[1]
    try:
        targets = [*_host_addresses(), "127.0.0.1"]
        assert targets
        for node in lab.nodes:
            for addr in targets:
                tcp = lab.socket(node, socket.AF_INET, socket.SOCK_STREAM)
                tcp.settimeout(0.2)
                with pytest.raises(OSError):
                    tcp.connect((addr, port))
                tcp.close()
                sender = lab.socket(node)
                with contextlib.suppress(OSError):
                    sender.sendto(b"escape", (addr, port))
        with pytest.raises(TimeoutError):
            udp.recvfrom(100)
    finally:
        listener.close()
        udp.close()


def test_sigkill_during_up_then_gc() -> None:
    name = f"killed-{os.getpid()}"
    with reaped(slow_up(name)) as child:
        state = json.loads((state_dir() / f"{name}.json").read_text())
        assert state["status"] == "building"
        assert all(ns in list_namespaces() for ns in state["namespaces"])
        child.send_signal(signal.SIGKILL)
        child.wait()
    done = _natkit("gc")
    assert done.returncode == 0, done.stderr
    assert not [n for n in list_namespaces() if n.startswith(state["prefix"])]
    assert not (state_dir() / f"{name}.json").exists()


def test_cli_up_status_exec_down() -> None:
    name = f"cli-{os.getpid()}"
    done = _natkit("up", "symmetric", "--name", name)
    assert done.returncode == 0, done.stderr
    try:
        assert done.stdout.strip() == name
        status = json.loads(_natkit("status", name, "--json").stdout)
        assert status["nodes"]["server"]["addresses"][:2] == ["203.0.113.10", "203.0.113.11"]
        code = "import sys; sys.exit(3)"
        assert _natkit("exec", name, "peer", "--", sys.executable, "-c", code).returncode == 3
        assert _natkit("gc").returncode == 0  # a CLI lab is persistent: gc keeps it
        assert status["nodes"]["peer"]["netns"] in list_namespaces()
    finally:
        down = _natkit("down", name)
    assert down.returncode == 0, down.stderr
    assert not [n for n in list_namespaces() if n.startswith(status["prefix"])]
    assert _natkit("status", name).returncode == 2


@pytest.mark.parametrize("lab", ["symmetric", "open"], indirect=True)
def test_plugin_lab_fixture_is_parametrizable(lab: Lab) -> None:
    assert lab.state.topology in ("symmetric", "open")
    assert lab.exec("peer", [sys.executable, "-c", "print('hi')"], check=True).stdout == "hi\n"


def test_unprivileged_up_is_one_clear_error() -> None:
    """Really without privileges (uid 0 with every capability dropped, as in a locked-down
    container; nobody would be the same): one line, exit 2."""
    argv = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    done = subprocess.run(
        [*argv, sys.executable, "-m", "natkit", "lab", "up", "open"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "natkit: error: natkit lab needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) to create "
        "network namespaces: run it with sudo"
    ]
