"""Each lab NAT behaves as it claims, observed with real packets (needs root).

The probe is natkit.lab.probe's Reflector in node `server` on 203.0.113.10/.11 ports 3478/3479:
it echoes the source address it saw, and answers from another of its endpoints on request (the
filtering probe).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from natkit.lab import Lab, Topology
from natkit.lab.probe import Reflector, probe

pytestmark = pytest.mark.netns

S1 = ("203.0.113.10", 3478)
S2 = ("203.0.113.10", 3479)  # same address, other port
S3 = ("203.0.113.11", 3478)  # other address, same port
S4 = ("203.0.113.11", 3479)  # other address and port
ENDPOINTS = [S1, S2, S3, S4]
MakeLab = Callable[..., Lab]


def _sock(lab: Lab, node: str) -> socket.socket:
    sock = lab.socket(node)
    sock.bind(("0.0.0.0", 0))
    return sock


def _mapping(lab: Lab, node: str) -> tuple[int, list[tuple[str, int] | None]]:
    sock = _sock(lab, node)
    return sock.getsockname()[1], [probe(sock, d) for d in (S1, S2, S3)]


def _filtering(lab: Lab, node: str) -> list[bool]:
    """Did an answer from S2, S3, S4 get through after the node sent only to S1?"""
    return [
        probe(_sock(lab, node), S1, reply_from=ep, timeout=0.3, tries=1) is not None
        for ep in (S2, S3, S4)
    ]


# preset → (external address, same external port for every destination, port preserved,
#           filtering: answers from S2 / S3 / S4 pass)
EXPECTED = {
    "open": ("203.0.113.50", True, True, [True, True, True]),
    "full-cone": ("203.0.113.100", True, True, [True, True, True]),
    "restricted-cone": ("203.0.113.100", True, True, [True, False, False]),
    "port-restricted-cone": ("203.0.113.100", True, True, [False, False, False]),
    "symmetric": ("203.0.113.100", False, False, [False, False, False]),
    "cgnat": ("203.0.113.100", False, False, [False, False, False]),
}


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_mapping_and_filtering(nat_lab: MakeLab, preset: str) -> None:
    address, eim, preserved, filtering = EXPECTED[preset]
    lab = nat_lab(preset)
    with Reflector(lab, "server", ENDPOINTS):
        local_port, seen = _mapping(lab, "peer")
        assert all(s is not None and s[0] == address for s in seen), seen
        ports = {s[1] for s in seen if s}
        assert (len(ports) == 1) is eim, seen
        assert (ports == {local_port}) is preserved, (local_port, seen)
        assert _filtering(lab, "peer") == filtering


@pytest.mark.parametrize("preset", ["full-cone", "restricted-cone", "port-restricted-cone"])
def test_unsolicited_inbound_does_not_disturb_mapping(nat_lab: MakeLab, preset: str) -> None:
    """RFC 3489 test order: a filtered answer from S4 first, then a request to S4 itself; a cone
    NAT must keep the mapping (the conntrack trap would hand out a new port)."""
    lab = nat_lab(preset)
    with Reflector(lab, "server", ENDPOINTS):
        for _ in range(3):
            sock = _sock(lab, "peer")
            first = probe(sock, S1, reply_from=S4, timeout=0.3, tries=1)  # full cone only
            if first is None:
                first = probe(sock, S1)
            assert first is not None
            server = lab.socket("server")
            server.bind(("203.0.113.11", 0))
            server.sendto(b"unsolicited", first)  # straight at the mapping, from a new port
            assert probe(sock, S4) == first
            assert probe(sock, S3) == first


def test_udp_blocked_allows_only_tcp_80_443(nat_lab: MakeLab) -> None:
    lab = nat_lab("udp-blocked")
    with Reflector(lab, "server", ENDPOINTS):
        assert probe(_sock(lab, "peer"), S1) is None
    listeners = []
    for port in (80, 8080):
        srv = lab.socket("server", socket.AF_INET, socket.SOCK_STREAM)
        srv.bind(("203.0.113.10", port))
        srv.listen()
        listeners.append(srv)
    assert _tcp_connects(lab, "peer", ("203.0.113.10", 80))
    assert not _tcp_connects(lab, "peer", ("203.0.113.10", 8080))


def _tcp_connects(lab: Lab, node: str, dest: tuple[str, int], timeout: float = 0.5) -> bool:
    sock = lab.socket(node, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(dest)
        return True
    except OSError:
        return False
    finally:
        sock.close()


@pytest.mark.parametrize(("preset", "hairpins"), [("hairpin", True), ("no-hairpin", False)])
def test_hairpinning(nat_lab: MakeLab, preset: str, hairpins: bool) -> None:
    lab = nat_lab(preset)
    with Reflector(lab, "server", ENDPOINTS):
        peer, peer2 = _sock(lab, "peer"), _sock(lab, "peer2")
        ext2 = probe(peer2, S1)
        ext1 = probe(peer, S1)
        assert ext1 and ext2
        peer2.settimeout(0.5)
        peer.sendto(b"hairpin", ext2)  # to peer2's public mapping, from inside
        try:
            data, source = peer2.recvfrom(100)
        except TimeoutError:
            data, source = b"", ("", 0)
    assert (data == b"hairpin") is hairpins
    if hairpins:  # RFC 4787 REQ-9: the source seen is peer's external address
        assert source[0] == "203.0.113.100"


def _one_nat(**nat: object) -> Topology:
    return Topology.from_dict(
        {
            "nats": {"nat": {"type": "full-cone", **nat}},
            "hosts": {"peer": {"behind": "nat"}, "peer2": {"behind": "nat"}},
        },
        default_name="test",
    )


@pytest.mark.parametrize("mode", ["off", "blocks"])
def test_port_preservation_modes(nat_lab: MakeLab, mode: str) -> None:
    lab = nat_lab(_one_nat(port_preservation=mode))
    with Reflector(lab, "server", ENDPOINTS):
        results = {}
        for node in ("peer", "peer2"):
            local, seen = _mapping(lab, node)
            ports = {s[1] for s in seen if s}
            assert len(ports) == 1 and None not in seen, seen  # still endpoint-independent
            results[node] = (local, ports.pop())
    (l1, e1), (l2, e2) = results["peer"], results["peer2"]
    if mode == "off":
        assert e1 != l1 and e2 != l2
        assert e1 < 32768 and e2 < 32768
    else:  # two hosts: 32768-49151 and 49152-65535; an inside port in its block is kept
        assert 32768 <= e1 < 49152 <= e2
        assert (e1 == l1) is (32768 <= l1 < 49152)


def test_address_dependent_mapping(nat_lab: MakeLab) -> None:
    lab = nat_lab(_one_nat(mapping="address-dependent"))
    differs = []
    with Reflector(lab, "server", ENDPOINTS):
        for _ in range(2):  # ports come from a hash: two sockets make a collision negligible
            _, (s1, s2, s3) = _mapping(lab, "peer")
            assert s1 is not None and s1 == s2  # same remote address, other port: same mapping
            differs.append(s3 != s1)
    assert any(differs)


def test_mapping_timeout(nat_lab: MakeLab) -> None:
    lab = nat_lab(_one_nat(udp_timeout=2))
    with Reflector(lab, "server", ENDPOINTS):
        sock = _sock(lab, "peer")
        mapped = probe(sock, S1)
        assert mapped is not None
        server = lab.socket("server")
        server.bind(("203.0.113.11", 4000))
        sock.settimeout(0.5)
        server.sendto(b"within", mapped)
        assert sock.recvfrom(100)[0] == b"within"
        time.sleep(3.2)  # both clocks (nft map timeout, conntrack) are 2 s
        server.sendto(b"expired", mapped)
        with pytest.raises(TimeoutError):
            sock.recvfrom(100)


def _rtt(sock: socket.socket, dest: tuple[str, int]) -> float | None:
    start = time.monotonic()
    if probe(sock, dest, timeout=2.0) is None:
        return None
    return time.monotonic() - start


def test_loss_impairment_and_delay_without_netem(nat_lab: MakeLab) -> None:
    lossy = Topology.from_dict({"hosts": {"peer": {"link": {"loss": 100, "rate": "1mbit"}}}})
    lab = nat_lab(lossy)
    with Reflector(lab, "server", ENDPOINTS):
        assert probe(_sock(lab, "peer"), S1) is None
    # Delay runs through the lab's user-space link forwarder (this kernel has no netem).
    lab = nat_lab(Topology.from_dict({"hosts": {"peer": {"link": {"delay": "20ms"}}}}))
    with Reflector(lab, "server", ENDPOINTS):
        sock = _sock(lab, "peer")
        rtts = [_rtt(sock, S1) for _ in range(3)]
    # A veth round trip takes well under 1 ms; 20 ms each way on the peer's link is the floor.
    assert all(r is not None and 0.040 <= r < 0.060 for r in rtts), rtts
