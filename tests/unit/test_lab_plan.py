"""The build plan and nft text (pure, no root): addressing per DESIGN.md, names, NAT recipes."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from natkit.cli import cli
from natkit.lab import Topology, load_topology, preset_names
from natkit.lab.nft import port_blocks
from natkit.lab.plan import build_plan


@pytest.mark.parametrize("preset", preset_names())
def test_names_carry_prefix_and_fit(preset: str) -> None:
    plan = build_plan(load_topology(preset), "nk1a2b")
    assert all(ns.startswith("nk1a2b-") for ns in plan.namespaces)
    lines = plan.link_batch + [line for ls in plan.ns_batch.values() for line in ls]
    ifaces = {m for line in lines for m in re.findall(r"\bnk1a2b-[\w-]+", line)} - set(
        plan.namespaces
    )
    assert ifaces and all(len(i) <= 15 for i in ifaces)
    for line in plan.link_batch:  # every veth end is created inside a lab namespace
        if "veth" in line:
            assert line.count(" netns nk1a2b-") == 2


def test_addressing() -> None:
    plan = build_plan(load_topology("pair-cgnat"), "nk0000")
    n = plan.nodes
    assert [str(a) for a in n["server"].addresses] == ["203.0.113.10", "203.0.113.11"]
    assert [str(a) for a in n["server"].addresses6] == ["2001:db8::10", "2001:db8::11"]
    assert str(n["carrier"].addresses[0]) == "203.0.113.100"
    assert str(n["nat-b"].addresses[0]) == "203.0.113.101"
    assert str(n["carrier"].lan) == "100.64.1.0/24"
    assert str(n["home"].addresses[0]) == "100.64.1.2"
    assert str(n["home"].lan) == "10.0.2.0/24"
    assert str(n["alice"].addresses[0]) == "10.0.2.10"
    assert str(n["alice"].gateway) == "10.0.2.1"
    assert str(build_plan(load_topology("open"), "nk0000").nodes["peer"].addresses[0]) == (
        "203.0.113.50"
    )


def test_sysctls_set_explicitly() -> None:
    plan = build_plan(load_topology("symmetric"), "nk0000")
    for ns, values in plan.sysctls.items():
        assert values["net/ipv4/conf/all/rp_filter"] == "0"
        assert values["net/ipv4/ip_forward"] == ("1" if ns == "nk0000-nat" else "0")
    late = plan.late_sysctls["nk0000-nat"]
    assert late["net/netfilter/nf_conntrack_udp_timeout"] == "120"
    assert late["net/netfilter/nf_conntrack_udp_timeout_stream"] == "120"


def _rules(**nat: object) -> str:
    topo = Topology.from_dict(
        {"nats": {"nat": nat}, "hosts": {"a": {"behind": "nat"}, "b": {"behind": "nat"}}}
    )
    return build_plan(topo, "nk0000").nft["nk0000-nat"]


def test_nft_recipes() -> None:
    full = _rules(type="full-cone", udp_timeout=30)
    assert "dnat ip to udp dport map @mappings" in full and "timeout 30s" in full
    assert 'iifname "nk0000-wan" drop' in full  # the conntrack trap, in forward and input
    assert full.count('iifname "nk0000-wan" drop') == 2
    assert "@permits" in _rules(type="restricted-cone")
    prc = _rules(type="port-restricted-cone")
    assert "@mappings" not in prc and "snat ip to 203.0.113.100" in prc
    assert "masquerade fully-random" in _rules(type="symmetric")
    assert "jhash ip saddr . th sport . ip daddr" in _rules(mapping="address-dependent")
    assert "th sport and 0x1fff or 0x2000" in _rules(port_preservation="off")
    assert "ct status dnat snat ip to" in _rules(hairpinning=True)
    blocked = _rules(firewall={"udp": False, "tcp_ports": [80, 443]})
    assert "meta l4proto udp drop" in blocked and "tcp dport != { 80, 443 } drop" in blocked
    lossy = Topology.from_dict({"nats": {"nat": {"link": {"loss": 2.5}}}})
    assert "numgen random mod 10000 < 250 drop" in build_plan(lossy, "nk0000").nft["nk0000-nat"]


def test_port_blocks() -> None:
    assert port_blocks(1, preserve=True) == [(32768, 32768)]
    assert port_blocks(2, preserve=True) == [(32768, 16384), (49152, 16384)]
    assert port_blocks(2, preserve=False) == [(8192, 8192), (16384, 8192)]
    blocks = port_blocks(50, preserve=False)
    assert all(base % size == 0 and base + size <= 32768 for base, size in blocks)


def test_delay_runs_through_a_forwarder_namespace_not_netem() -> None:
    topo = Topology.from_dict(
        {
            "nats": {"nat": {"link": {"delay": "20ms", "loss": 3, "rate": "1mbit"}}},
            "hosts": {"peer": {"behind": "nat"}, "plain": {"behind": "nat", "link": {"loss": 2}}},
        }
    )
    plan = build_plan(topo, "nk0000")
    assert "nk0000-nat_link" in plan.namespaces
    (fwd,) = plan.forwarders
    assert (fwd.node, fwd.netns, fwd.node_side, fwd.parent_side) == (
        "nat",
        "nk0000-nat_link",
        "nk0000-dn",
        "nk0000-up",
    )
    assert (fwd.model.delay, fwd.model.loss) == (0.02, 0.03)
    assert (
        "link add nk0000-wan netns nk0000-nat type veth peer name nk0000-dn netns nk0000-nat_link"
        in plan.link_batch
    )
    assert not any("netem" in line for lines in plan.tc_batch.values() for line in lines)
    assert any("tbf rate 1mbit" in line for line in plan.tc_batch["nk0000-nat"])
    # The forwarder drops on a delayed link; nft's numgen loss stays for plain links only.
    assert "numgen" not in plan.nft["nk0000-nat"]
    assert "numgen random mod 10000 < 200" in plan.nft["nk0000-plain"]
    assert plan.sysctls["nk0000-nat_link"]["net/ipv6/conf/all/disable_ipv6"] == "1"


def test_cli_without_root_says_what_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    import natkit.lab.netlink as netlink

    monkeypatch.setattr(netlink.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netlink, "_effective_caps", lambda: 0)
    result = CliRunner().invoke(cli, ["lab", "up", "symmetric"])
    assert result.exit_code == 2
    assert "needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN)" in result.output


def test_cli_presets_and_help() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["lab", "presets"])
    assert out.exit_code == 0 and "symmetric" in out.output
    for sub in ("presets", "up", "status", "exec", "down", "gc"):
        result = runner.invoke(cli, ["lab", sub, "--help"])
        assert result.exit_code == 0 and "Example" in result.output
