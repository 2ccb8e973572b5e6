"""Port mapping in the lab without root: the topology key, the router ruleset, miniupnpd's
config, the missing-binary error, and the verdict/matrix rules for a mapped peer."""

from __future__ import annotations

import pytest

from natkit.diag.verdict import PEER_TYPES, decide, with_port_mapping
from natkit.errors import DependencyError, TopologyError
from natkit.lab.plan import build_plan
from natkit.lab.portmap import check_dependencies, miniupnpd_config
from natkit.lab.presets import load_topology
from natkit.lab.topology import PortMapping, Topology
from natkit.p2p.matrix import predict_direct


def _topo(port_mapping: object) -> Topology:
    return Topology.from_dict(
        {"nats": {"nat": {"type": "symmetric", "port_mapping": port_mapping}},
         "hosts": {"peer": {"behind": "nat"}}}
    )  # fmt: skip


def test_port_mapping_key() -> None:
    assert _topo({"upnp": True, "pcp": True}).nat("nat").port_mapping == PortMapping(
        True, False, True
    )
    assert _topo(True).nat("nat").port_mapping == PortMapping(True, True, True)
    assert not _topo(False).nat("nat").port_mapping.enabled
    assert not Topology.from_dict({"nats": {"nat": {}}}).nat("nat").port_mapping.enabled
    pm = load_topology("upnp-symmetric").nat("nat").port_mapping
    assert (pm.upnp, pm.natpmp, pm.pcp) == (True, True, True)
    pm = load_topology("natpmp-port-restricted-cone").nat("nat").port_mapping
    assert (pm.upnp, pm.natpmp, pm.pcp) == (False, True, False)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"upnpp": True}, 'nats.nat.port_mapping.upnpp: unknown key; did you mean "upnp"?'),
        ({"pcp": "yes"}, 'nats.nat.port_mapping.pcp: expected true or false, got "yes"'),
        ("all", "nats.nat.port_mapping: expected true, false or a mapping of upnp/natpmp/pcp"),
    ],
)
def test_port_mapping_errors_are_one_line(value: object, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        _topo(value)
    assert message in str(info.value) and "\n" not in str(info.value)


def _rules(pm: object) -> str:
    return build_plan(_topo(pm), "nk0000").nft["nk0000-nat"]


def test_router_rules_give_miniupnpd_its_chains_first() -> None:
    text = _rules(True)
    for chain in ("upnp_prerouting", "upnp_forward", "upnp_postrouting"):
        assert f"  chain {chain} {{\n  }}" in text
    dstnat = text.split("chain dstnat {")[1]
    assert dstnat.split("\n")[2].strip() == "jump upnp_prerouting"  # before the NAT's own DNAT
    forward = text.split("chain forward {")[1]
    assert forward.index("jump upnp_forward") < forward.index('iifname "nk0000-wan" drop')
    assert "5351" not in text  # both NAT-PMP and PCP on: nothing filtered
    assert "upnp_" not in _rules(False)


def test_the_protocol_that_is_off_is_dropped_by_version() -> None:
    natpmp_only = _rules({"natpmp": True})
    assert 'iifname "nk0000-lan" udp dport 5351 @th,64,8 2 drop' in natpmp_only  # PCP is v2
    pcp_only = _rules({"pcp": True})
    assert 'iifname "nk0000-lan" udp dport 5351 @th,64,8 0 drop' in pcp_only  # NAT-PMP is v0
    # before "established": a retry from the same socket must not slip through
    inp = pcp_only.split("chain input {")[1]
    assert inp.index("5351") < inp.index("ct state established")


def test_miniupnpd_config() -> None:
    topo = _topo({"natpmp": True})
    plan = build_plan(topo, "nk0000")
    conf = miniupnpd_config(topo.nat("nat"), plan.nodes["nat"], "nk0000-lan", 3478)
    lines = conf.splitlines()
    assert "ext_ifname=nk0000-wan" in lines and "listening_ip=nk0000-lan" in lines
    assert "enable_upnp=no" in lines and "enable_natpmp=yes" in lines
    assert "ext_perform_stun=yes" in lines and "ext_stun_host=127.0.0.1" in lines
    assert "upnp_table_name=natkit" in lines and "upnp_nat_chain=upnp_prerouting" in lines
    assert lines[-2:] == [
        "allow 1024-65535 10.0.1.0/24 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
    ]
    pcp_only = _topo({"pcp": True})
    conf = miniupnpd_config(pcp_only.nat("nat"), plan.nodes["nat"], "nk0000-lan", 3478)
    assert "enable_natpmp=yes" in conf.splitlines()  # one switch for port 5351


def test_missing_miniupnpd_is_a_one_line_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    check_dependencies(_topo(False))  # nobody needs it
    with pytest.raises(DependencyError) as info:
        check_dependencies(_topo(True))
    assert "nats.nat.port_mapping needs miniupnpd" in str(info.value)
    assert "apt-get install miniupnpd-nftables" in str(info.value)


def test_a_mapped_peer_is_predicted_reachable() -> None:
    assert predict_direct("symmetric", "port-restricted-cone") is False
    assert predict_direct("symmetric", "port-restricted-cone", a_mapped=True) is True
    assert predict_direct("symmetric", "symmetric", b_mapped=True) is True
    assert predict_direct("symmetric", "udp-blocked", a_mapped=True) is False
    assert predict_direct("unknown", "symmetric", b_mapped=True) is None


def test_verdict_with_port_mapping() -> None:
    base = decide("symmetric", udp=True)
    assert base.port_mapping_peer_types == ()
    offered = with_port_mapping(base, ["pcp", "upnp"], None, udp=True)
    assert offered.port_mapping_peer_types == PEER_TYPES
    assert "offers PCP/UPnP-IGD" in offered.actions[-1]
    assert offered.compatible_peer_types == base.compatible_peer_types  # the NAT is unchanged
    assert with_port_mapping(base, ["pcp"], False, udp=True) == base  # shown unreachable
    assert with_port_mapping(base, [], None, udp=True) == base
