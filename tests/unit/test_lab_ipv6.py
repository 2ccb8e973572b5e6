"""IPv6 topology keys, plan and the NAT64 codec (pure, no root)."""

from __future__ import annotations

import ipaddress

import pytest

from natkit.addr import Address
from natkit.diag.ipv6 import ipv4_less, ipv6_direct, translation
from natkit.diag.nat64 import aaaa_query, parse_aaaa, prefixes, synthesize
from natkit.diag.verdict import decide
from natkit.errors import TopologyError
from natkit.lab.plan import build_plan
from natkit.lab.topology import Topology


def _topo(**nat: object) -> Topology:
    return Topology.from_dict({"nats": {"nat": nat}, "hosts": {"peer": {"behind": "nat"}}})


@pytest.mark.parametrize(
    ("nat", "message"),
    [
        ({"ipv6": "nat46"}, 'nats.nat.ipv6: expected one of "none", "open", "firewall"'),
        ({"ipv6": "firewal"}, 'did you mean "firewall"?'),
        ({"nat64": True}, "nats.nat.nat64: needs IPv6 on the LAN"),
        ({"ipv6_only": "yes"}, "nats.nat.ipv6_only: expected true or false"),
    ],
)
def test_bad_ipv6_keys_are_one_line_errors(nat: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError) as err:
        _topo(**nat)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_ipv6_needs_a_nat_on_the_internet() -> None:
    raw = {"nats": {"isp": {}, "home": {"upstream": "isp", "ipv6": "firewall"}}}
    with pytest.raises(TopologyError, match=r"nats\.home\.ipv6: IPv6 needs a NAT attached"):
        Topology.from_dict(raw)


def test_plan_lays_out_each_mode() -> None:
    plan = build_plan(_topo(ipv6="firewall"), "nk0000")
    assert plan.nodes["peer"].addresses6 == [ipaddress.IPv6Address("2001:db8:1::10")]
    assert "route add 2001:db8:1::/48 via 2001:db8::100" in plan.ns_batch["nk0000-server"]
    assert "meta nfproto ipv6 drop" in plan.nft["nk0000-nat"]
    assert plan.sysctls["nk0000-nat"]["net/ipv6/conf/all/forwarding"] == "1"
    npt = build_plan(_topo(ipv6="nptv6"), "nk0000")
    assert "SNPT --src-pfx fd00:0:1::/48 --dst-pfx 2001:db8:1::/48" in npt.ip6tables["nk0000-nat"]
    nat66 = build_plan(_topo(ipv6="nat66"), "nk0000")
    assert "ip6 saddr fd00:0:1::/64 masquerade" in nat66.nft["nk0000-nat"]
    assert not any("2001:db8:1::/48" in line for line in nat66.ns_batch["nk0000-server"])
    only = build_plan(_topo(ipv6="firewall", ipv6_only=True, nat64=True), "nk0000")
    assert only.nodes["peer"].addresses == [] and only.nodes["peer"].dns == "2001:db8:1::1"
    assert [d.name for d in only.daemons] == ["tayga", "unbound"]
    assert "do-not-query-address: ::/0" in only.daemons[1].files["unbound.conf"]
    # Without ipv6 nothing changes: no IPv6 table, no daemons.
    plain = build_plan(_topo(), "nk0000")
    assert "natkit6" not in plain.nft["nk0000-nat"] and not plain.daemons


def test_aaaa_codec_and_rfc7050_prefixes() -> None:
    query = aaaa_query("ipv4only.arpa", 7)
    assert query[12:] == b"\x08ipv4only\x04arpa\x00\x00\x1c\x00\x01"
    answer = bytearray(query)
    answer[2:4] = b"\x81\x80"  # response, recursion available
    answer[6:8] = b"\x00\x01"
    rdata = ipaddress.IPv6Address("64:ff9b::c000:aa").packed
    answer += b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x3c\x00\x10" + rdata
    assert parse_aaaa(bytes(answer), 7) == [ipaddress.IPv6Address("64:ff9b::c000:aa")]
    with pytest.raises(ValueError):
        parse_aaaa(bytes(answer), 8)
    found = [ipaddress.IPv6Address("64:ff9b::c000:aa"), ipaddress.IPv6Address("64:ff9b::c000:ab")]
    assert prefixes(found) == [ipaddress.IPv6Network("64:ff9b::/96")]
    # RFC 6052 §2.2 /64: the IPv4 address skips the u octet (bits 64-71).
    assert prefixes([ipaddress.IPv6Address("2001:db8:1:2:c0:0:aa00:0")]) == [
        ipaddress.IPv6Network("2001:db8:1:2::/64")
    ]
    assert prefixes([ipaddress.IPv6Address("2001:db8::1")]) == []
    for net in ("64:ff9b::/96", "2001:db8:1:2::/64", "2001:db8::/32", "2001:db8:1::/48"):
        prefix = ipaddress.IPv6Network(net)
        synth = synthesize(prefix, ipaddress.IPv4Address("192.0.0.171"))
        assert prefixes([synth]) == [prefix], net


def test_ipv6_translation_and_verdict() -> None:
    local = Address("fd00:0:1::10", 5000)
    assert translation(Address("2001:db8:1::10", 5000), Address("2001:db8:1::10", 5000)) == "none"
    assert translation(local, Address("2001:db8:1:f00::10", 5000)) == "prefix"
    assert translation(local, Address("2001:db8::100", 5000)) == "address"
    assert ipv6_direct(True, "none") is True and ipv6_direct(True, "prefix") is False
    assert ipv6_direct(None, None) is None
    assert ipv4_less(["127.0.0.1/8", "2001:db8:1::10/64"])
    assert not ipv4_less(["10.0.1.10/24"])
    v = decide("symmetric", udp=True, ipv6_direct=True)
    assert v.ipv6_direct is True and v.outcome == "no-path"
    assert "Over IPv6, though" in v.explanation
    assert decide("symmetric", udp=True).ipv6_direct is None


def test_a_missing_daemon_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from natkit.errors import DependencyError
    from natkit.lab.daemons import check_binaries

    only = build_plan(_topo(ipv6="nptv6", ipv6_only=True, nat64=True), "nk0000")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DependencyError) as err:
        check_binaries(only.daemons, bool(only.ip6tables))
    assert str(err.value) == (
        "this topology needs `tayga`: install the Debian tayga package (apt-get install tayga)"
    )
    check_binaries([], False)  # nothing needed, nothing checked


def test_matrix_prediction_with_ipv6() -> None:
    from natkit.p2p.ipv6 import PeerView, predict, view

    fw = PeerView("symmetric", True, True)
    npt = PeerView("port-restricted-cone", True, False)
    only = PeerView("port-restricted-cone", False, True)
    classic = PeerView("symmetric", True, None)
    assert predict(fw, fw) is True  # IPv6 carries what IPv4 cannot
    assert predict(fw, npt) is False  # translated IPv6 offers no candidate
    assert predict(only, fw) is True and predict(only, npt) is False  # no IPv4 to fall back on
    assert predict(classic, classic) is False and predict(classic, None) is None
    assert predict(PeerView("full-cone", True, None), classic) is True  # the IPv4 table as before
    report = {"nat_type": "symmetric", "udp": {"ipv4": True}, "verdict": {"ipv6_direct": True}}
    assert view(report) == fw and view(None) is None


def test_the_peer_view_reads_exhaustion_and_port_mapping() -> None:
    from natkit.p2p.ipv6 import PeerView, predict, view

    report = {
        "nat_type": "symmetric",
        "udp": {"ipv4": True},
        "verdict": {"ipv6_direct": None},
        "port_allocation": {"exhausted": False},
        "port_mapping": {"upnp": True, "natpmp": False, "pcp": None},
    }
    mapped = view(report)
    assert mapped == PeerView("symmetric", True, None, exhausted=False, mapped=True)
    plain = view({**report, "port_mapping": None})
    full = view({**report, "nat_type": "port-restricted-cone", "port_mapping": None})
    assert predict(mapped, full) is True and predict(plain, full) is False
    out = view({**report, "port_allocation": {"exhausted": True}, "port_mapping": None})
    assert out is not None and out.exhausted
    assert predict(out, view({**report, "nat_type": "open", "port_mapping": None})) is False
