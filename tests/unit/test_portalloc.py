"""Port allocation keys, their nftables text, and diagnose's allocation classifier. Pure."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from natkit.cli import cli
from natkit.diag.allocation import PortSample, classify_allocation
from natkit.errors import LabError
from natkit.lab.from_report import topology_from_report
from natkit.lab.plan import build_plan
from natkit.lab.portalloc import BLOCK_BASE, SEQ_BASE, sequence
from natkit.lab.presets import load_topology
from natkit.lab.topology import Topology

EIM, APDM = "endpoint-independent", "address-and-port-dependent"


def _nat(**keys: object) -> Topology:
    return Topology.from_dict(
        {"nats": {"nat": keys}, "hosts": {"a": {"behind": "nat"}, "b": {"behind": "nat"}}},
        source="t.yaml",
    )


def _rules(**keys: object) -> str:
    return build_plan(_nat(**keys), "nk0000").nft["nk0000-nat"]


def test_keys_parse_with_defaults() -> None:
    nat = _nat().nats[0]
    assert (nat.port_allocation, nat.port_stride, nat.port_block) == ("preserve", 1, None)
    assert nat.timeout_outbound == nat.timeout_established == 120
    nat = _nat(port_allocation="sequential", port_stride=3, udp_timeout_outbound=5).nats[0]
    assert (nat.port_allocation, nat.port_stride, nat.timeout_outbound) == ("sequential", 3, 5)
    assert nat.timeout_established == 120


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"port_allocation": "linear"}, 'nats.nat.port_allocation: expected one of "preserve"'),
        ({"port_stride": 2}, 'nats.nat.port_stride: only with "port_allocation: sequential"'),
        ({"port_allocation": "sequential", "port_stride": 0}, "expected whole ports 1-1000"),
        ({"port_block": 0}, "nats.nat.port_block: expected whole ports 1-4096, got 0"),
        ({"port_block": True}, "nats.nat.port_block: expected whole ports 1-4096, got true"),
        ({"port_allocation": "sequential", "port_block": 8}, "cannot be combined with"),
        ({"port_allocation": "random", "port_preservation": "off"}, "replaces port_preservation"),
        ({"udp_timeout_outbound": "2s"}, "nats.nat.udp_timeout_outbound: expected whole seconds"),
        ({"udp_timeout_established": 0}, "nats.nat.udp_timeout_established: expected whole"),
    ],
)
def test_bad_keys_are_one_line_errors(keys: dict[str, object], message: str) -> None:
    with pytest.raises(LabError) as info:
        _nat(**keys)
    assert message in str(info.value) and str(info.value).startswith("t.yaml")
    assert "\n" not in str(info.value)


def test_sequential_is_a_numgen_map_of_stride_ports() -> None:
    text = _rules(type="symmetric", port_allocation="sequential", port_stride=4)
    assert f"numgen inc mod 1024 map {{ 0 : {SEQ_BASE}, 1 : {SEQ_BASE + 4}, " in text
    assert "@alloc" not in text  # symmetric: every flow gets the next port
    nat = _nat(port_allocation="sequential", port_stride=1000).nats[0]
    assert sequence(nat)[-1] <= 65535 and len(sequence(nat)) == 36
    cone = _rules(type="port-restricted-cone", port_allocation="sequential")
    assert "snat ip to 203.0.113.100 : ip saddr . th sport map @alloc" in cone
    assert "update @alloc" in cone and "ct reply proto-dst" in cone


def test_port_block_per_subscriber_and_flow_limit() -> None:
    text = _rules(type="symmetric", port_block=8)
    assert f"ip saddr 10.0.1.10 meta l4proto {{ tcp, udp }} snat ip to 203.0.113.100 : " \
           f"{BLOCK_BASE}-{BLOCK_BASE + 7} random" in text  # fmt: skip
    assert f"ip saddr 10.0.1.11 meta l4proto {{ tcp, udp }} snat ip to 203.0.113.100 : " \
           f"{BLOCK_BASE + 8}-{BLOCK_BASE + 15} random" in text  # fmt: skip
    assert "add @subscribers { ip saddr ct count over 8 } drop" in text
    many = Topology.from_dict(
        {"nats": {"nat": {"port_block": 4096}},
         "hosts": {f"h{i}": {"behind": "nat"} for i in range(14)}},
    )  # fmt: skip
    with pytest.raises(LabError, match=r"nats\.nat\.port_block: 14 subscribers x 4096 ports"):
        build_plan(many, "nk0000")


def test_per_state_timeouts_reach_both_clocks() -> None:
    topo = _nat(type="full-cone", udp_timeout_outbound=3, udp_timeout_established=40)
    plan = build_plan(topo, "nk0000")
    late = plan.late_sysctls["nk0000-nat"]
    assert late["net/netfilter/nf_conntrack_udp_timeout"] == "3"
    assert late["net/netfilter/nf_conntrack_udp_timeout_stream"] == "40"
    text = plan.nft["nk0000-nat"]
    assert "ct status & seen-reply == 0 update @mappings { udp sport timeout 3s" in text
    assert "ct status seen-reply update @mappings { udp sport timeout 40s" in text
    assert "update @mappings { udp sport timeout" not in _rules(type="full-cone")


def test_a_port_block_frees_closed_tcp_ports_after_ten_seconds() -> None:
    # TIME_WAIT of the block's few TCP ports (Linux: 120 s) would throttle back-to-back sessions.
    key = "net/netfilter/nf_conntrack_tcp_timeout_time_wait"
    blocked = build_plan(_nat(type="symmetric", port_block=8), "nk0000").late_sysctls
    assert blocked["nk0000-nat"][key] == "10"
    assert key not in build_plan(_nat(type="symmetric"), "nk0000").late_sysctls["nk0000-nat"]


def test_presets_load() -> None:
    assert load_topology("sequential").nats[0].port_stride == 2
    assert load_topology("random-ports").nats[0].port_allocation == "random"
    assert load_topology("cgnat-port-block").nat("carrier").port_block == 8
    for name in ("matrix-ports", "matrix-same-type"):
        assert load_topology(name).hosts


def _samples(pairs: list[tuple[int, int | None]]) -> list[PortSample]:
    return [PortSample(a, b) for a, b in pairs]


def test_classify_sequential_preserving_random() -> None:
    seq = classify_allocation(_samples([(5, 100), (9, 102), (7, 104), (3, 106)]), APDM)
    assert (seq.pattern, seq.stride, seq.next_port, seq.prediction_helps) == (
        "sequential", 2, 108, True)  # fmt: skip
    # another flow took a port in between: still stride 2
    gap = classify_allocation(_samples([(5, 100), (9, 102), (7, 106), (3, 108)]), APDM)
    assert (gap.pattern, gap.stride) == ("sequential", 2)
    same = classify_allocation(_samples([(5, 5), (9, 9), (7, 7)]), EIM)
    assert (same.pattern, same.predictable, same.prediction_helps) == ("preserving", True, False)
    rnd = classify_allocation(_samples([(5, 40000), (9, 1200), (7, 33000), (3, 61000)]), APDM)
    assert (rnd.pattern, rnd.stride, rnd.predictable, rnd.prediction_helps) == (
        "random", None, False, False)  # fmt: skip
    assert classify_allocation(_samples([(5, 100), (9, 102), (7, 104)]), None).prediction_helps \
        is None  # fmt: skip


def test_classify_refusals() -> None:
    few = classify_allocation(_samples([(5, 100), (9, None), (7, None)]), APDM)
    assert (few.pattern, few.refused, few.exhausted) == (None, 2, True)
    assert "2 of 3 new mappings were refused" in few.explanation
    lost = classify_allocation(_samples([(5, 100), (9, None), (7, 104), (3, 106)]), APDM)
    assert (lost.pattern, lost.refused, lost.exhausted) == ("sequential", 1, False)


def test_report_with_a_sequential_allocator_rebuilds_it() -> None:
    report = {
        "version": 2, "udp": {"reachable": True}, "behind_nat": True, "nat_type": "symmetric",
        "mapping": APDM, "filtering": APDM,
        "port_allocation": {"pattern": "sequential", "stride": 3},
    }  # fmt: skip
    nat = topology_from_report(report).nats[0]
    assert (nat.port_allocation, nat.port_stride) == ("sequential", 3)


def test_lab_matrix_takes_a_topology() -> None:
    result = CliRunner().invoke(cli, ["lab", "matrix", "--help"])
    assert result.exit_code == 0 and "--topology" in result.output
    assert "matrix-ports" in result.output
