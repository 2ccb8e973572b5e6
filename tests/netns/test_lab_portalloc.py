"""Port allocators, CGNAT port blocks and per-state mapping timeouts, seen with real packets
(needs root). The probe is natkit.lab.probe's Reflector in node `server` (as test_lab_nat.py)."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable

import pytest

from natkit.lab import Lab, Topology
from natkit.lab.portalloc import BLOCK_BASE, SEQ_BASE
from natkit.lab.probe import Reflector, probe

pytestmark = pytest.mark.netns

S1 = ("203.0.113.10", 3478)
S2 = ("203.0.113.10", 3479)
S3 = ("203.0.113.11", 3478)
S4 = ("203.0.113.11", 3479)
ENDPOINTS = [S1, S2, S3, S4]
MakeLab = Callable[..., Lab]


def _topology(name: str, nats: dict[str, object], hosts: dict[str, object]) -> Topology:
    return Topology.from_dict({"nats": nats, "hosts": hosts}, default_name=name)


def _sock(lab: Lab, node: str) -> socket.socket:
    sock = lab.socket(node)
    sock.bind(("0.0.0.0", 0))
    return sock


def _port(sock: socket.socket, dest: tuple[str, int] = S1) -> int | None:
    seen = probe(sock, dest, timeout=0.3, tries=2)
    return None if seen is None else seen[1]


def test_sequential_symmetric_gives_each_new_destination_the_next_port(nat_lab: MakeLab) -> None:
    lab = nat_lab("sequential")  # symmetric, stride 2
    with Reflector(lab, "server", ENDPOINTS):
        sock = _sock(lab, "peer")
        ports = [_port(sock, d) for d in ENDPOINTS]
        ports += [_port(_sock(lab, "peer")) for _ in range(3)]
    assert ports == list(range(SEQ_BASE, SEQ_BASE + 14, 2)), ports


def test_sequential_cone_gives_each_new_socket_the_next_port(nat_lab: MakeLab) -> None:
    topo = _topology(
        "seq-cone",
        {"nat": {"type": "port-restricted-cone", "port_allocation": "sequential",
                 "port_stride": 5}},
        {"peer": {"behind": "nat"}},
    )  # fmt: skip
    lab = nat_lab(topo)
    with Reflector(lab, "server", ENDPOINTS):
        socks = [_sock(lab, "peer") for _ in range(4)]
        seen = [[_port(s, d) for d in ENDPOINTS] for s in socks]
    # endpoint-independent: one port per socket, whatever the destination; the next socket +5
    assert seen == [[SEQ_BASE + 5 * i] * 4 for i in range(4)], seen


def test_random_allocator_gives_unpredictable_endpoint_independent_ports(
    nat_lab: MakeLab,
) -> None:
    lab = nat_lab("random-ports")
    with Reflector(lab, "server", ENDPOINTS):
        socks = [_sock(lab, "peer") for _ in range(6)]
        seen = [[_port(s, d) for d in (S1, S4)] for s in socks]
        local = [s.getsockname()[1] for s in socks]
    ports = [a for a, b in seen]
    assert all(a == b for a, b in seen), seen  # still endpoint-independent
    assert all(p is not None and p != lp for p, lp in zip(ports, local, strict=True)), seen
    steps = {b - a for a, b in itertools.pairwise(ports)}  # type: ignore[operator]
    assert len(steps) == len(ports) - 1 and len(set(ports)) == len(ports), ports


def test_preserve_keeps_the_inside_port(nat_lab: MakeLab) -> None:
    topo = _topology(
        "preserve",
        {"nat": {"type": "symmetric", "port_allocation": "preserve"},
         "cone": {"type": "port-restricted-cone", "port_allocation": "preserve"}},
        {"peer": {"behind": "cone"}},
    )  # fmt: skip
    lab = nat_lab(topo)
    with Reflector(lab, "server", ENDPOINTS):
        socks = [_sock(lab, "peer") for _ in range(4)]
        assert [_port(s) for s in socks] == [s.getsockname()[1] for s in socks]


def test_port_block_of_8_refuses_the_9th_flow(nat_lab: MakeLab) -> None:
    """Per subscriber: alice's 9th concurrent UDP flow is dropped; bob (another subscriber of
    the same carrier) still gets mappings, from his own block; TCP is not limited."""
    topo = _topology(
        "block",
        {"carrier": {"type": "symmetric", "port_allocation": "random", "port_block": 8}},
        {"alice": {"behind": "carrier"}, "bob": {"behind": "carrier"}},
    )
    lab = nat_lab(topo)
    with Reflector(lab, "server", ENDPOINTS):
        alice = [_port(_sock(lab, "alice"), ENDPOINTS[i % 4]) for i in range(9)]
        bob = [_port(_sock(lab, "bob")) for _ in range(3)]
        listener = lab.socket("server", socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("203.0.113.10", 80))
        listener.listen()
        tcp = lab.socket("alice", socket.AF_INET, socket.SOCK_STREAM)
        tcp.settimeout(1.0)
        tcp.connect(("203.0.113.10", 80))
    assert None not in alice[:8] and alice[8] is None, alice
    assert all(BLOCK_BASE <= p < BLOCK_BASE + 8 for p in alice[:8]), alice  # type: ignore[operator]
    assert all(p is not None and BLOCK_BASE + 8 <= p < BLOCK_BASE + 16 for p in bob), bob


def test_cgnat_port_block_preset_refuses_the_9th_flow(nat_lab: MakeLab) -> None:
    """Towards four destinations: the kernel alone could reuse a block port per destination."""
    lab = nat_lab("cgnat-port-block")
    with Reflector(lab, "server", ENDPOINTS):
        ports = [_port(_sock(lab, "peer"), ENDPOINTS[i % 4]) for i in range(9)]
    assert None not in ports[:8] and ports[8] is None, ports


def _arm(lab: Lab, node: str, server: socket.socket, reply: bool) -> tuple[socket.socket, tuple]:
    """A peer socket that sent one datagram to `server` (answered if `reply`): its mapping."""
    sock = _sock(lab, node)
    sock.sendto(b"hello", server.getsockname())
    _, mapped = server.recvfrom(100)
    if reply:
        server.sendto(b"reply", mapped)
        sock.settimeout(1.0)
        assert sock.recv(100) == b"reply"
    return sock, mapped


def _reaches(server: socket.socket, sock: socket.socket, mapped: tuple) -> bool:
    server.sendto(b"inbound", mapped)
    sock.settimeout(0.3)
    try:
        return sock.recv(100) == b"inbound"
    except TimeoutError:
        return False


def test_per_state_timeouts(nat_lab: MakeLab) -> None:
    """Outbound-only mappings live 2 s, established ones (replies seen, > 2 s old) 6 s: in
    conntrack (port-restricted cone) and in the nft mapping map (full cone) alike."""
    timeouts = {"udp_timeout_outbound": 2, "udp_timeout_established": 6}
    topo = _topology(
        "timeouts",
        {"nat-a": {"type": "port-restricted-cone", **timeouts},
         "nat-b": {"type": "full-cone", **timeouts}},
        {"a": {"behind": "nat-a"}, "b": {"behind": "nat-b"}},
    )  # fmt: skip
    lab = nat_lab(topo)
    server = lab.socket("server")
    server.bind(("203.0.113.10", 4000))
    server.settimeout(1.0)
    start = time.monotonic()

    def at(t: float) -> None:
        time.sleep(max(0.0, start + t - time.monotonic()))

    flows = {}
    for node in ("a", "b"):
        flows[node] = {
            "outbound": _arm(lab, node, server, reply=False),
            "control": _arm(lab, node, server, reply=False),
            "established": _arm(lab, node, server, reply=True),
            "established-idle": _arm(lab, node, server, reply=True),
        }
    got: dict[tuple[str, str], bool] = {}

    def exchange_established() -> None:
        for f in flows.values():
            for kind in ("established", "established-idle"):
                sock, mapped = f[kind]
                sock.sendto(b"again", server.getsockname())
                server.recvfrom(100)
                server.sendto(b"reply", mapped)
                sock.settimeout(1.0)
                assert sock.recv(100) == b"reply"

    at(1.0)
    for node, f in flows.items():
        got[node, "control@1"] = _reaches(server, *f["control"])
    # Conntrack keeps the outbound timeout for a flow's first 2 s, replies or not: keep the
    # established flows alive through it; answered again after 2 s they are "stream" flows.
    at(1.3)
    exchange_established()
    at(2.6)
    exchange_established()
    at(4.0)
    for node, f in flows.items():
        got[node, "outbound@4"] = _reaches(server, *f["outbound"])
    at(6.0)
    for node, f in flows.items():
        got[node, "established@6"] = _reaches(server, *f["established"])
    at(9.8)
    for node, f in flows.items():
        got[node, "established-idle@9.8"] = _reaches(server, *f["established-idle"])
    expected = {
        (n, k): v
        for n in ("a", "b")
        for k, v in (("control@1", True), ("outbound@4", False), ("established@6", True),
                     ("established-idle@9.8", False))
    }  # fmt: skip
    assert got == expected
