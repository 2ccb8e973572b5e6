"""The lab topology model: YAML, aliases, validation errors (pure, no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from natkit.errors import LabError
from natkit.lab import NAT_TYPES, Topology, load_topology, preset_names


def test_presets_load_and_name_their_nodes() -> None:
    names = preset_names()
    for required in (
        "open",
        "full-cone",
        "restricted-cone",
        "port-restricted-cone",
        "symmetric",
        "cgnat",
        "udp-blocked",
        "hairpin",
        "no-hairpin",
        "matrix",
        "pair-full-cone",
        "pair-symmetric",
        "pair-cgnat",
    ):
        assert required in names
    for name in names:
        topo = load_topology(name)
        assert topo.name == name and topo.description
        nodes = topo.node_names()
        assert "server" in nodes
        if name.startswith("pair-"):
            assert {"alice", "bob"} <= set(nodes)
        elif name != "matrix":
            assert "peer" in nodes


def test_aliases() -> None:
    for alias, (mapping, filtering) in NAT_TYPES.items():
        nat = load_topology(alias).nat("nat")
        assert (nat.mapping, nat.filtering) == (mapping, filtering)
    cgnat = load_topology("cgnat")
    assert cgnat.nat("home").upstream == "carrier"
    assert load_topology("udp-blocked").nat("nat").firewall.udp is False


def test_defaults() -> None:
    topo = Topology.from_dict({"nats": {"n": {}}, "hosts": {"h": {"behind": "n"}}})
    assert [str(a) for a in topo.servers[0].addresses] == ["203.0.113.10", "203.0.113.11"]
    nat = topo.nat("n")
    assert nat.port_preservation == "on" and nat.hairpinning is False and nat.udp_timeout == 120


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"nats": {"n": {"type": "cone"}}}, "t.yaml: nats.n.type: unknown NAT type 'cone'"),
        ({"nats": {"n": {"mapping": "random"}}}, "t.yaml: nats.n.mapping: 'random' is not one"),
        ({"nats": {"n": {"hairpin": True}}}, "t.yaml: nats.n.hairpin: unknown key"),
        ({"hosts": {"h": {"behind": "nope"}}}, "t.yaml: hosts.h.behind: no NAT named 'nope'"),
        ({"nats": {"a": {"upstream": "b"}, "b": {"upstream": "a"}}}, "nested in a loop"),
        ({"hosts": {"h": {"link": {"loss": 101}}}}, "hosts.h.link.loss: expected a percentage"),
        ({"hosts": {"h": {"link": {"rate": "fast"}}}}, "hosts.h.link.rate: expected a tc rate"),
        ({"servers": {"s": {"addresses": ["10.0.0.1"]}}}, "is not a host address in"),
        ({"hosts": {"Bad_Name": {}}}, "hosts.Bad_Name: node names are"),
        ({"nats": {"n": {"udp_timeout": 0}}}, "nats.n.udp_timeout: expected whole seconds"),
        ({"version": 2}, "t.yaml: version: only version 1"),
    ],
)
def test_errors_name_file_and_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(LabError) as info:
        Topology.from_dict(doc, source="t.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nats: [1, 2\n")
    with pytest.raises(LabError, match=r"bad\.yaml: not valid YAML"):
        Topology.from_yaml(bad)
    with pytest.raises(LabError, match="no preset named 'nope'"):
        load_topology("nope")
    good = tmp_path / "mine.yaml"
    good.write_text("hosts: {peer: {}}\n")
    assert load_topology(str(good)).name == "mine"
