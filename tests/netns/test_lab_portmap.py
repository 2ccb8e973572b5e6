"""Port-mapping protocols in lab routers (miniupnpd, nftables back end), with real packets (root).

Per preset, what the gateway answers is what the topology switched on; a mapping made through
each protocol makes the inside port reachable from a host on the lab internet although the NAT
is symmetric (and nothing reaches it before the mapping or after its deletion); diagnose
reports the protocols and, with --map-port, a mapping it tested and deleted, also when
interrupted; Lab.down() kills the daemon and removes its files.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from natkit.addr import Address
from natkit.diag.portmap import Mapper, PortMappingProbe, detect
from natkit.lab import Lab, Topology
from natkit.lab.registry import files_dir
from natkit.portmap import natpmp, pcp

from .stunserver import PRIMARY, natkit_stun

pytestmark = pytest.mark.netns
MakeLab = Callable[..., Lab]
GATEWAY = "10.0.1.1"
PCP_ONLY = Topology.from_dict(
    {
        "name": "pcp-only",
        "nats": {"nat": {"type": "symmetric", "port_mapping": {"pcp": True}}},
        "hosts": {"peer": {"behind": "nat"}},
    }
)


def _detect(lab: Lab) -> PortMappingProbe:
    return lab.call("peer", asyncio.run, detect())


@pytest.mark.parametrize(
    ("topology", "offered"),
    [
        ("upnp-symmetric", (True, True, True)),
        ("natpmp-port-restricted-cone", (False, True, False)),
        (PCP_ONLY, (False, False, True)),
        ("symmetric", (False, False, False)),
    ],
    ids=["upnp-symmetric", "natpmp-port-restricted-cone", "pcp-only", "symmetric"],
)
def test_the_gateway_answers_what_the_topology_offers(
    nat_lab: MakeLab, topology: str | Topology, offered: tuple[bool, bool, bool]
) -> None:
    lab = nat_lab(topology)
    probe = _detect(lab)
    assert probe.gateway == GATEWAY and probe.local == "10.0.1.10"
    assert (probe.upnp, probe.natpmp, probe.pcp) == offered
    if probe.natpmp:
        assert probe.external_address == lab.address("nat")
    if probe.upnp:
        assert probe.upnp_server and "MiniUPnPd" in probe.upnp_server


def _reaches(lab: Lab, peer_sock: socket.socket, external: Address) -> bool:
    """Does a datagram from a lab internet host (the server node) reach `peer_sock`?"""
    sender = lab.socket("server")
    sender.bind((PRIMARY, 0))
    peer_sock.settimeout(0.3)
    try:
        for _ in range(2):
            sender.sendto(b"unsolicited", (external.host, external.port))
            try:
                data, source = peer_sock.recvfrom(64)
            except TimeoutError:
                continue
            return data == b"unsolicited" and source[0] == PRIMARY
        return False
    finally:
        sender.close()


@pytest.mark.parametrize("protocol", ["pcp", "natpmp", "upnp"])
def test_a_mapping_makes_a_symmetric_nats_inside_port_reachable(
    nat_lab: MakeLab, protocol: str
) -> None:
    lab = nat_lab("upnp-symmetric")
    probe = _detect(lab)
    inside = lab.socket("peer")
    inside.bind(("0.0.0.0", 0))
    port = inside.getsockname()[1]
    wan = Address(lab.address("nat"), port)
    assert not _reaches(lab, inside, wan), "a symmetric NAT must not admit it unmapped"
    mapper = Mapper(probe, protocol, port)  # type: ignore[arg-type]
    external, lifetime = lab.call("peer", mapper.request, 120, 2.0)
    assert external == wan and lifetime > 0
    rules = lab.exec("nat", ["nft", "list", "chain", "inet", "natkit", "upnp_prerouting"]).stdout
    assert f"dport {port} dnat ip to 10.0.1.10:{port}" in rules
    assert _reaches(lab, inside, wan)
    lab.call("peer", mapper.request, 0, 2.0)
    rules = lab.exec("nat", ["nft", "list", "chain", "inet", "natkit", "upnp_prerouting"]).stdout
    assert "dnat" not in rules
    time.sleep(0.05)
    assert not _reaches(lab, inside, wan), "deleted, the port must be closed again"


def test_a_protocol_switched_off_is_not_answered_even_when_asked_directly(
    nat_lab: MakeLab,
) -> None:
    lab = nat_lab("natpmp-port-restricted-cone")
    sock = lab.socket("peer")
    sock.settimeout(0.5)
    sock.bind(("0.0.0.0", 0))
    sock.sendto(natpmp.external_address_request(), (GATEWAY, natpmp.PORT))
    assert natpmp.parse_external_address(sock.recv(64)).ok
    # Same socket afterwards: conntrack calls it established, the version filter still holds.
    sock.sendto(pcp.announce_request(ipaddress.IPv4Address("10.0.1.10")), (GATEWAY, 5351))
    with pytest.raises(TimeoutError):
        sock.recv(64)


def _diagnose(lab: Lab, *args: str, timeout: float = 30) -> dict[str, object]:
    done = lab.exec(
        "peer",
        [sys.executable, "-m", "natkit", "diagnose", "--stun", f"{PRIMARY}:3478", "--json",
         "--no-ice", *args],
        timeout=timeout,
    )  # fmt: skip
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_diagnose_reports_protocols_and_a_tested_mapping(nat_lab: MakeLab, tmp_path: Path) -> None:
    lab = nat_lab("upnp-symmetric")
    with natkit_stun(lab, tmp_path):
        plain = _diagnose(lab)
        mapped = _diagnose(lab, "--map-port")
    assert plain["nat_type"] == mapped["nat_type"] == "symmetric"
    pm = plain["port_mapping"]
    assert isinstance(pm, dict)
    assert (pm["gateway"], pm["upnp"], pm["natpmp"], pm["pcp"]) == (GATEWAY, True, True, True)
    assert pm["external_address"] == lab.address("nat") and pm["mapped"] is None
    verdict = plain["verdict"]
    assert isinstance(verdict, dict) and len(verdict["port_mapping_peer_types"]) == 5
    m = mapped["port_mapping"]["mapped"]  # type: ignore[index]
    assert m["protocol"] == "pcp" and m["reachable"] is True and m["deleted"] is True
    assert m["external_address"].startswith(lab.address("nat") + ":")
    rules = lab.exec("nat", ["nft", "list", "chain", "inet", "natkit", "upnp_prerouting"]).stdout
    assert "dnat" not in rules, "diagnose --map-port left a mapping behind"


def test_diagnose_without_port_mapping(nat_lab: MakeLab, tmp_path: Path) -> None:
    lab = nat_lab("symmetric")
    with natkit_stun(lab, tmp_path):
        report = _diagnose(lab, "--map-port")
    pm = report["port_mapping"]
    assert isinstance(pm, dict) and (pm["upnp"], pm["natpmp"], pm["pcp"]) == (False,) * 3
    assert pm["mapped"] is None
    assert report["verdict"]["port_mapping_peer_types"] == []  # type: ignore[index]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_map_port_deletes_its_mapping_when_interrupted(nat_lab: MakeLab, signum: int) -> None:
    # No STUN server runs: the reachability test waits its full 2 s with the mapping in place.
    lab = nat_lab("upnp-symmetric")
    argv = [sys.executable, "-m", "natkit", "diagnose", "--stun", f"{PRIMARY}:3478", "--no-ice",
            "--map-port", "--json"]  # fmt: skip
    proc = lab.spawn("peer", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    chain = ["nft", "list", "chain", "inet", "natkit", "upnp_prerouting"]
    while "dnat" not in lab.exec("nat", chain).stdout:
        assert time.monotonic() < deadline and proc.poll() is None, "no mapping appeared"
        time.sleep(0.05)
    proc.send_signal(signum)
    assert proc.wait(10) != 0
    assert "dnat" not in lab.exec("nat", chain).stdout, "the interrupted run left its mapping"


def test_lab_down_kills_miniupnpd_and_removes_its_files(nat_lab: MakeLab) -> None:
    lab = nat_lab("upnp-symmetric")
    files = files_dir(lab.state)
    pid = int((files / "miniupnpd-nat.pid").read_text())
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"miniupnpd")
    lab.down()
    assert not files.exists()
    assert (
        not os.path.exists(f"/proc/{pid}")
        or b"miniupnpd" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
