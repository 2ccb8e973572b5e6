"""The lab topology model: YAML, aliases, validation errors (pure, no root)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from natkit.cli import cli
from natkit.errors import LabError, TopologyError
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
        elif not name.startswith("matrix"):  # matrix presets name peers by type
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
        ({"nats": {"n": {"type": "cone"}}}, 't.yaml: nats.n.type: expected one of "full-cone", '),
        ({"nats": {"n": {"mapping": "random"}}}, 't.yaml: nats.n.mapping: expected one of "'),
        ({"nats": {"n": {"hairpin": True}}}, "t.yaml: nats.n.hairpin: unknown key"),
        ({"hosts": {"h": {"behind": "nope"}}}, 't.yaml: hosts.h.behind: no NAT named "nope"'),
        ({"nats": {"a": {"upstream": "b"}, "b": {"upstream": "a"}}}, "nested in a loop"),
        ({"hosts": {"h": {"link": {"loss": 101}}}}, "hosts.h.link.loss: expected a percentage"),
        ({"hosts": {"h": {"link": {"rate": "fast"}}}}, "hosts.h.link.rate: expected a tc rate"),
        ({"servers": {"s": {"addresses": ["10.0.0.1"]}}}, "is not a host address in"),
        ({"hosts": {"Bad_Name": {}}}, "hosts.Bad_Name: node names are"),
        ({"nats": {"n": {"udp_timeout": 0}}}, "nats.n.udp_timeout: expected whole seconds"),
        ({"version": 2}, "t.yaml: version: must be 1, got 2"),
        ({"servers": {"s": {}}}, 't.yaml: servers.s: missing required key "addresses"'),
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
    with pytest.raises(LabError, match=r"bad\.yaml:2: YAML syntax error: expected ',' or ']'"):
        Topology.from_yaml(bad)
    with pytest.raises(LabError, match="no preset named 'nope'"):
        load_topology("nope")
    good = tmp_path / "mine.yaml"
    good.write_text("hosts: {peer: {}}\n")
    assert load_topology(str(good)).name == "mine"


TOPOLOGY = """\
version: 1
servers:
  server: {{addresses: [203.0.113.10]}}
nats:
  home:
    type: port-restricted-cone
    mapping: {mapping}
    hairpinning: {hairpinning}
    udp_timeout: 60
hosts:
  peer: {{behind: {behind}}}
"""
GOOD = {"mapping": "endpoint-independent", "hairpinning": "false", "behind": "home"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (  # a bad value, with a did-you-mean
            {"mapping": "endpont-independent"},
            'my.yaml:7: nats.home.mapping: expected one of "endpoint-independent", '
            '"address-dependent", "address-and-port-dependent", got "endpont-independent" '
            '(did you mean "endpoint-independent"?)',
        ),
        (  # wrong type
            {"hairpinning": "'no'"},
            'my.yaml:8: nats.home.hairpinning: expected true or false, got "no"',
        ),
        (  # a reference to a node that does not exist
            {"behind": "hom"},
            'my.yaml:11: hosts.peer.behind: no NAT named "hom" (did you mean "home"?, '
            'or "internet")',
        ),
    ],
)
def test_yaml_errors_name_file_line_and_key(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    path = tmp_path / "my.yaml"
    path.write_text(TOPOLOGY.format(**(GOOD | change)))
    with pytest.raises(TopologyError) as info:
        Topology.from_yaml(path)
    assert str(info.value) == f"{tmp_path}/{message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (  # unknown key, did you mean
            "nats:\n  home:\n    type: symmetric\n    hairpining: true\n",
            'my.yaml:4: nats.home.hairpining: unknown key; did you mean "hairpinning"?',
        ),
        (  # unknown key, nothing close: the known ones
            "nats:\n  home: {colour: red}\n",
            "my.yaml:2: nats.home.colour: unknown key; known keys: type, mapping, filtering,",
        ),
        (  # an unknown NAT type, did you mean
            "nats:\n  home:\n    type: symetric\n",
            'my.yaml:3: nats.home.type: expected one of "full-cone", "restricted-cone", '
            '"port-restricted-cone", "symmetric", got "symetric" (did you mean "symmetric"?)',
        ),
        (  # a NAT type where a behaviour belongs
            "nats:\n  home:\n    mapping: symetric\n",
            'my.yaml:3: nats.home.mapping: expected one of "endpoint-independent", '
            '"address-dependent", "address-and-port-dependent", got "symetric" '
            '(did you mean "type: symmetric", which sets both mapping and filtering?)',
        ),
        (  # missing required key
            "servers:\n  s: {}\n",
            'my.yaml:2: servers.s: missing required key "addresses"',
        ),
        (  # wrong type: a list where a mapping belongs
            "hosts:\n  - peer\n",
            "my.yaml:1: hosts: expected a mapping, got a list",
        ),
        (  # list item blamed on its own line
            "servers:\n  s:\n    addresses:\n      - 203.0.113.10\n      - 10.0.0.1\n",
            "my.yaml:5: servers.s.addresses[1]: 10.0.0.1 is not a host address in",
        ),
        (  # YAML syntax error with its line
            "version: 1\nnats:\n  home: {type: symmetric\nhosts: {}\n",
            "my.yaml:4: YAML syntax error: expected ',' or '}', but got ':'",
        ),
        (  # duplicate key (PyYAML would keep the last silently)
            "nats:\n  home: {type: symmetric}\n  home: {type: full-cone}\n",
            "my.yaml:3: nats.home: duplicate key (first given on line 2)",
        ),
    ],
)
def test_yaml_errors_more(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as info:
        Topology.from_yaml(path)
    assert str(info.value).startswith(f"{tmp_path}/{message}")
    assert "\n" not in str(info.value)


def test_lab_up_with_a_bad_topology_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before any privilege is needed, so this runs without root too."""
    monkeypatch.chdir(tmp_path)
    Path("my.yaml").write_text("nats:\n  home:\n    type: symetric\n")
    result = CliRunner().invoke(cli, ["lab", "up", "my.yaml"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        'natkit: error: my.yaml:3: nats.home.type: expected one of "full-cone", '
        '"restricted-cone", "port-restricted-cone", "symmetric", got "symetric" '
        '(did you mean "symmetric"?)'
    ]
