"""natkit.diag.evidence: "no server answered" vs "UDP is blocked", and CGNAT (pure tables)."""

from __future__ import annotations

from natkit.addr import Address
from natkit.diag.evidence import cgnat, udp_finding
from natkit.diag.path import Echo, Icmp, PathProbe
from natkit.diag.streams import StreamProbe

S = Address("203.0.113.10", 3478)
TLS443 = Address("203.0.113.10", 443)


def echo(kind: str | None = None, origin: str = S.host, ttl: int | None = None) -> Echo:
    if kind is None:
        return Echo(S, ttl)
    types = {"port-unreachable": (3, 3), "prohibited": (3, 13), "host-unreachable": (3, 1)}
    t, c = types.get(kind, (11, 0))
    return Echo(S, ttl, "icmp", Icmp(kind, origin, t, c))  # type: ignore[arg-type]


def test_an_answer_is_answered() -> None:
    assert udp_finding([Echo(S, None, "answered"), echo()], []).finding == "answered"


def test_port_unreachable_from_the_server_is_no_server() -> None:
    f = udp_finding([echo("port-unreachable")], [])
    assert (f.finding, f.nat_type) == ("no-server", "unknown")
    assert "no STUN server is running at 203.0.113.10:3478" in f.evidence
    assert "ICMP port unreachable" in f.evidence


def test_port_unreachable_beats_a_tcp_answer() -> None:
    """The ICMP came from the host: UDP gets there; it is the server that does not listen."""
    tcp = StreamProbe("tcp", S, connected=True, answered=True)
    assert udp_finding([echo("port-unreachable")], [tcp]).finding == "no-server"


def test_a_firewall_reject_is_blocked() -> None:
    for e in (echo("prohibited", "10.0.1.1"), echo("port-unreachable", "10.0.1.1")):
        f = udp_finding([e], [])
        assert (f.finding, f.nat_type) == ("blocked", "udp-blocked")
        assert "10.0.1.1 rejects UDP" in f.evidence


def test_tcp_reaching_a_stun_server_that_udp_cannot_is_blocked() -> None:
    tls = StreamProbe("tls", TLS443, connected=True, answered=True)
    f = udp_finding([echo()], [tls])
    assert f.finding == "blocked" and "TLS to 203.0.113.10:443 reaches a STUN server" in f.evidence


def test_tcp_refused_at_the_stun_address_is_no_server() -> None:
    refused = StreamProbe("tcp", S, refused=True)
    f = udp_finding([echo()], [refused])
    assert f.finding == "no-server" and "TCP connection refused" in f.evidence
    assert "no STUN server is running at 203.0.113.10:3478" in f.evidence


def test_host_unreachable_is_no_server() -> None:
    f = udp_finding([echo("host-unreachable", "203.0.113.100")], [])
    assert f.finding == "no-server" and "ICMP host-unreachable" in f.evidence


def test_silence_from_a_live_host_is_blocked() -> None:
    """The lab's udp-blocked preset: UDP and TCP 3478 dropped, TCP 443 refused by the host."""
    silent_tcp = StreamProbe("tcp", S, error="no answer to SYN within 1.5 s (filtered?)")
    refused443 = StreamProbe("tcp", TLS443, refused=True)
    f = udp_finding([echo()], [silent_tcp, refused443])
    assert f.finding == "blocked" and "answers TCP on port 443" in f.evidence


def test_silence_everywhere_is_no_answer() -> None:
    silent_tcp = StreamProbe("tcp", S, error="no answer to SYN within 1.5 s (filtered?)")
    f = udp_finding([echo()], [silent_tcp])
    assert (f.finding, f.nat_type) == ("no-answer", "unknown")
    assert "no UDP answer, no ICMP error, no TCP answer" in f.evidence


LOCAL = Address("10.0.2.10", 40000)
PUBLIC = Address("203.0.113.100", 40000)


def path(*hops: Echo) -> PathProbe:
    return PathProbe(4, (), hops)


def test_cgnat_from_a_shared_address_hop() -> None:
    hops = path(
        echo("time-exceeded", "10.0.2.1", 1),
        echo("time-exceeded", "100.64.1.1", 2),
        Echo(S, 3, "answered"),
    )
    c = cgnat(LOCAL, PUBLIC, hops)
    assert c.behind is True and "hop 2 answers from 100.64.1.1" in str(c.evidence)


def test_cgnat_from_the_own_address_and_from_the_mapped_address() -> None:
    assert cgnat(Address("100.64.7.9", 1), PUBLIC, None).behind is True
    inside = cgnat(LOCAL, Address("100.70.0.3", 1), None)
    assert inside.behind is True and "inside the carrier's network" in str(inside.evidence)


def test_no_cgnat_only_when_the_whole_path_answered() -> None:
    visible = path(echo("time-exceeded", "10.0.1.1", 1), Echo(S, 2, "answered"))
    assert cgnat(LOCAL, PUBLIC, visible).behind is False
    hidden = path(echo(None, ttl=1), Echo(S, 2, "answered"))
    assert cgnat(LOCAL, PUBLIC, hidden).behind is None
    assert cgnat(LOCAL, PUBLIC, path(echo(None, ttl=1), echo(None, ttl=2))).behind is None
    assert cgnat(LOCAL, PUBLIC, None).behind is None
