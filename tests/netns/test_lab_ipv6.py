"""IPv6 in the lab, with real packets (needs root): the RFC 6092 firewall, NPTv6, NAT66 and an
IPv6-only LAN with NAT64 + DNS64; and diagnose on each (IPv6 behaviour, NAT64 prefix, verdict).

A UDP echo in node `server` answers with the source address it saw, from the port it was asked
on or (the unsolicited probe) from another port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from natkit.diag.nat64 import aaaa_query, parse_aaaa
from natkit.lab import Lab
from natkit.lab.ipv6 import NAT64_PREFIX
from natkit.lab.registry import state_dir

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SERVER6, ALT6 = "2001:db8::10", "2001:db8::11"
ECHO, OTHER = 7000, 7001


@contextmanager
def echo(lab: Lab, host: str) -> Iterator[socket.socket]:
    """Echo on host:ECHO; a datagram b"other HOST PORT" is answered from host:OTHER to HOST PORT
    instead (unsolicited for a filter that saw only host:ECHO)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    main, other = lab.socket("server", family), lab.socket("server", family)
    main.bind((host, ECHO))
    other.bind((host, OTHER))
    main.settimeout(0.2)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                data, peer = main.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            seen = json.dumps([peer[0], peer[1]]).encode()
            if data.startswith(b"other "):
                _, h, p = data.decode().split()
                other.sendto(seen, (h, int(p)))
            else:
                main.sendto(seen, peer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield main
    finally:
        stop.set()
        thread.join()


def ask(sock: socket.socket, dest: tuple[str, int], data: bytes = b"hi") -> Any:
    """Send `data`, return the decoded echo (None: nothing came back)."""
    sock.settimeout(0.5)
    for _ in range(3):
        sock.sendto(data, dest)
        try:
            return json.loads(sock.recvfrom(2048)[0])
        except TimeoutError:
            continue
    return None


def peer_socket(lab: Lab, family: socket.AddressFamily = socket.AF_INET6) -> socket.socket:
    sock = lab.socket("peer", family)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    return sock


def unsolicited_arrives(lab: Lab, sock: socket.socket, own: str) -> bool:
    """After a round trip to server:ECHO, does an answer from server:OTHER get in?"""
    assert ask(sock, (SERVER6, ECHO)) is not None
    port = sock.getsockname()[1]
    sock.sendto(f"other {own} {port}".encode(), (SERVER6, ECHO))
    sock.settimeout(0.4)
    try:
        sock.recvfrom(2048)
        return True
    except TimeoutError:
        return False


def test_rfc6092_firewall_admits_replies_and_drops_unsolicited(nat_lab: MakeLab) -> None:
    lab = nat_lab("ipv6-firewall")
    own = lab.address("peer", socket.AF_INET6)
    assert ipaddress.ip_address(own) in ipaddress.ip_network("2001:db8:1::/64")
    with echo(lab, SERVER6):
        sock = peer_socket(lab)
        seen = ask(sock, (SERVER6, ECHO))
        assert seen == [own, sock.getsockname()[1]], "no translation: the server sees the host"
        assert not unsolicited_arrives(lab, peer_socket(lab), own)
        # Inbound to an address and port nobody inside sent from: dropped too.
        victim = peer_socket(lab)
        victim.settimeout(0.4)
        lab.socket("server", socket.AF_INET6).sendto(b"x", (own, victim.getsockname()[1]))
        with pytest.raises(TimeoutError):
            victim.recvfrom(100)


def test_open_ipv6_is_routed_unfiltered(nat_lab: MakeLab) -> None:
    from natkit.lab import Topology

    topo = Topology.from_dict(
        {"nats": {"nat": {"ipv6": "open"}}, "hosts": {"peer": {"behind": "nat"}}},
        default_name="v6open",
    )
    lab = nat_lab(topo)
    own = lab.address("peer", socket.AF_INET6)
    with echo(lab, SERVER6):
        sock = peer_socket(lab)
        assert ask(sock, (SERVER6, ECHO)) == [own, sock.getsockname()[1]]
        assert unsolicited_arrives(lab, peer_socket(lab), own)


def test_nptv6_rewrites_the_prefix_and_nothing_else(nat_lab: MakeLab) -> None:
    lab = nat_lab("nptv6")
    own = ipaddress.IPv6Address(lab.address("peer", socket.AF_INET6))
    assert own in ipaddress.ip_network("fd00:0:1::/64")
    with echo(lab, SERVER6):
        sock = peer_socket(lab)
        host, port = ask(sock, (SERVER6, ECHO))
        seen = ipaddress.IPv6Address(host)
        assert seen in ipaddress.ip_network("2001:db8:1::/48"), "the inside /48 became the outside"
        assert int(seen) & (2**64 - 1) == int(own) & (2**64 - 1), "interface id unchanged"
        assert port == sock.getsockname()[1], "port unchanged"
        # RFC 6296 checksum neutrality: the one-complement sums of both addresses are equal.
        assert _sum16(seen.packed) == _sum16(own.packed)
        # Stateless: a second flow maps the same way, and unsolicited inbound is translated back.
        assert ask(peer_socket(lab), (ALT6, ECHO)) is None  # nothing listens there: no answer
        assert unsolicited_arrives(lab, peer_socket(lab), str(seen))


def _sum16(data: bytes) -> int:
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_nat66_masquerades_to_the_wan_address(nat_lab: MakeLab) -> None:
    lab = nat_lab("nat66")
    wan6 = lab.address("nat", socket.AF_INET6)
    with echo(lab, SERVER6):
        sock = peer_socket(lab)
        host, _ = ask(sock, (SERVER6, ECHO))
        assert host == wan6, "the LAN's ULA source is replaced by the router's address"
        assert not unsolicited_arrives(lab, peer_socket(lab), wan6)


def _resolve_aaaa(lab: Lab, name: str) -> list[ipaddress.IPv6Address]:
    dns = lab.state.nodes["peer"]["dns"]
    sock = peer_socket(lab)
    sock.settimeout(1.0)
    sock.sendto(aaaa_query(name, 0x1234), (dns, 53))
    return parse_aaaa(sock.recvfrom(1500)[0], 0x1234)


def test_nat64_reaches_the_ipv4_server_by_name_through_dns64(nat_lab: MakeLab) -> None:
    lab = nat_lab("ipv6-only-nat64")
    peer = lab.socket("peer", socket.AF_INET)
    with pytest.raises(OSError):  # IPv6-only: no IPv4 address, no IPv4 route
        peer.sendto(b"x", ("203.0.113.10", ECHO))
    (synth,) = _resolve_aaaa(lab, "server.lab")  # the lab zone has only an A record
    assert (
        synth in NAT64_PREFIX and synth.packed[12:] == ipaddress.IPv4Address("203.0.113.10").packed
    )
    with echo(lab, "203.0.113.10"):
        seen = ask(peer_socket(lab), (str(synth), ECHO))
    assert seen is not None and seen[0] == lab.address("nat"), "NAT64 then NAT44 to the WAN IP"


def test_lab_down_kills_the_nat64_and_dns64_daemons(nat_lab: MakeLab) -> None:
    lab = nat_lab("ipv6-only-nat64")
    netns = lab.netns("nat")
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    names = sorted(Path(f"/proc/{p}/comm").read_text().strip() for p in pids.split())
    assert names == ["tayga", "unbound"]
    run = state_dir() / f"{lab.prefix}.run"
    assert (run / "nat" / "unbound.conf").exists()
    lab.down()
    assert not any(os.path.exists(f"/proc/{p}") for p in pids.split())
    assert not run.exists()


# -- diagnose --------------------------------------------------------------------------------
def _serve(lab: Lab, tmp: Path, name: str, primary: str, alternate: str) -> subprocess.Popen[Any]:
    config = tmp / f"{name}.yaml"
    config.write_text(
        "version: 1\nstun:\n"
        f'  listen: ["udp://{primary}:3478"]\n  alternate: "{alternate}:3479"\n  workers: 1\n'
        "metrics: {listen: null}\n"
    )
    argv = [sys.executable, "-m", "natkit", "serve", "-c", str(config)]
    return lab.spawn("server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(lab: Lab, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = lab.socket("server", family)
    sock.settimeout(0.1)
    request = bytes.fromhex("000100002112a442") + b"x" * 12
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sock.sendto(request, (host, 3478))
        try:
            sock.recvfrom(1500)
            return
        except (TimeoutError, ConnectionRefusedError):
            continue
    raise AssertionError(f"natkit serve on {host} did not come up")


def diagnose(lab: Lab, tmp: Path, *args: str) -> dict[str, Any]:
    procs = [
        _serve(lab, tmp, "v4", "203.0.113.10", "203.0.113.11"),
        _serve(lab, tmp, "v6", f"[{SERVER6}]", f"[{ALT6}]"),
    ]
    try:
        _wait(lab, "203.0.113.10")
        _wait(lab, SERVER6)
        argv = [sys.executable, "-m", "natkit", "diagnose", "--json", "--no-ice"]
        argv += ["--stun", "203.0.113.10:3478", "--stun", f"[{SERVER6}]:3478", *args]
        done = lab.exec("peer", argv, timeout=30)
        assert done.stdout, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


# preset → (IPv4 nat_type, IPv6 nat_type, ipv6_translation, verdict.ipv6_direct)
EXPECTED = {
    "ipv6-firewall": ("symmetric", "port-restricted-cone", "none", True),
    "nptv6": ("port-restricted-cone", "full-cone", "prefix", False),
    "nat66": ("port-restricted-cone", "port-restricted-cone", "address", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_diagnose_measures_ipv6(nat_lab: MakeLab, tmp_path: Path, preset: str) -> None:
    v4, v6, kind, direct6 = EXPECTED[preset]
    report = diagnose(nat_lab(preset), tmp_path)
    assert report["udp"]["ipv4"] is True and report["udp"]["ipv6"] is True
    assert report["nat_type"] == v4
    assert report["families"]["ipv6"]["nat_type"] == v6
    assert report["ipv6_translation"] == kind
    assert report["verdict"]["ipv6_direct"] is direct6
    assert report["nat64"] is None, "a host with IPv4 does not look for NAT64 unasked"
    if preset == "ipv6-firewall":  # IPv4 needs TURN for most calls, IPv6 goes direct
        assert report["verdict"]["outcome"] != "direct"
        assert "Over IPv6, though" in report["verdict"]["explanation"]


@pytest.mark.slow
def test_diagnose_reports_the_nat64_prefix(nat_lab: MakeLab, tmp_path: Path) -> None:
    lab = nat_lab("ipv6-only-nat64")
    report = diagnose(lab, tmp_path, "--dns64", lab.state.nodes["peer"]["dns"])
    assert report["nat64"]["detected"] is True
    assert report["nat64"]["prefixes"] == [str(NAT64_PREFIX)]
    via = report["nat64"]["ipv4"]  # a Binding to 203.0.113.10 at its synthesized address
    assert via["reachable"] is True and via["server"] == "[2001:db8:ff64::cb00:710a]:3478"
    assert via["mapped_address"].startswith(lab.address("nat") + ":"), "NAT64 then NAT44"
    assert report["udp"]["ipv4"] is False and report["udp"]["ipv6"] is True
    assert report["nat_type"] == "port-restricted-cone"  # the IPv6 firewall, the main family
    assert report["verdict"]["ipv6_direct"] is True
    assert "NAT64" in report["verdict"]["explanation"]


def test_dns64_answers_only_from_the_lab_zone(nat_lab: MakeLab) -> None:
    """RFC 7050 discovery finds the prefix; a name outside the lab zones gets no answer (unbound
    has no upstream and may query no address, so nothing leaves the lab)."""
    from natkit.diag.nat64 import discover

    lab = nat_lab("ipv6-only-nat64")
    dns = lab.state.nodes["peer"]["dns"]
    found = lab.call("peer", lambda: asyncio.run(discover(dns, 1.5)))
    assert found.prefixes == (NAT64_PREFIX,) and found.error is None
    assert set(found.synthesized) == {"2001:db8:ff64::c000:aa", "2001:db8:ff64::c000:ab"}
    with pytest.raises((TimeoutError, ValueError)):  # SERVFAIL or silence: never an answer
        _resolve_aaaa(lab, "example.org")


def _daemons_of(prefix: str) -> list[str]:
    pids = subprocess.run(
        ["ip", "netns", "pids", f"{prefix}-nat"], capture_output=True, text=True
    ).stdout.split()
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


@pytest.mark.parametrize("how", ["lab-down", "sigterm"])
def test_daemons_go_with_a_lab_removed_from_outside(how: str) -> None:
    """`natkit lab up` then `natkit lab down` from another process, and SIGTERM to a process
    owning the lab: NAT64/DNS64 daemons and their files are gone either way."""
    from natkit.lab.registry import load_state

    cli = [sys.executable, "-m", "natkit", "lab"]
    name = f"h16a-{how}-{os.getpid()}"
    if how == "lab-down":
        subprocess.run([*cli, "up", "ipv6-only-nat64", "--name", name], check=True, timeout=60)
        prefix = load_state(name).prefix
        assert len(_daemons_of(prefix)) == 2
        subprocess.run([*cli, "down", name], check=True, timeout=60)
    else:
        code = (
            "import sys, time; from natkit.lab import Lab\n"
            f"lab = Lab.up('ipv6-only-nat64', {name!r}); print(lab.prefix, flush=True)\n"
            "time.sleep(60)\n"
        )
        owner = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert owner.stdout is not None
        prefix = owner.stdout.readline().strip()
        assert len(_daemons_of(prefix)) == 2
        owner.terminate()
        owner.wait(30)  # it unwinds like Ctrl-C (natkit.lab.signals) and removes the lab
    assert _daemons_of(prefix) == []
    assert not (state_dir() / f"{prefix}.run").exists()


def _readme_v6_commands() -> list[str]:
    """The README's `v6` lab commands, in order, without their comments."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = [
        line.split("  #")[0].rstrip()
        for line in text.splitlines()
        if line.startswith("sudo .venv/bin/natkit lab ") and " v6 " in f"{line} "
    ]
    assert len(found) == 4, found
    return found


@pytest.mark.slow
def test_the_readme_ipv6_lines_run_as_written(tmp_path: Path) -> None:
    """up, serve (configs/examples/lab-server-ipv6.yaml) `&`, diagnose, down: exactly the
    README's lines (tests/integration/test_readme_commands.py lists them as run here)."""
    from tests.readme_shell import readme_env

    root = Path(__file__).resolve().parents[2]
    up_cmd, serve_cmd, diagnose_cmd, down_cmd = _readme_v6_commands()
    assert serve_cmd.endswith(" &")
    env = readme_env(tmp_path)

    def shell(command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    up = shell(up_cmd)
    assert up.returncode == 0 and up.stdout.strip() == "v6", up.stderr
    out = tmp_path / "serve.out"
    with out.open("wb") as sink:  # the `&`: our child, its output in a file
        server = subprocess.Popen(
            ["bash", "-c", serve_cmd.removesuffix(" &")], cwd=root, env=env, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "listening udp://[2001:db8::10]:3478" not in out.read_text():
            assert server.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        done = shell(diagnose_cmd)
        report = json.loads(done.stdout)
        assert report["nat64"]["detected"] is True, report["nat64"]
        assert report["nat64"]["prefixes"] == [str(NAT64_PREFIX)]
        assert report["udp"]["ipv6"] is True and report["udp"]["ipv4"] is not True
        assert report["nat_type"] == "port-restricted-cone"  # the RFC 6092 firewall
        assert report["verdict"]["ipv6_direct"] is True
        down = shell(down_cmd)
        assert down.returncode == 0, down.stderr
        assert server.wait(10) is not None, "lab down stops the server it runs"
    finally:
        shell(down_cmd)
        if server.poll() is None:
            os.killpg(server.pid, 9)
            server.wait()
