"""`natkit lab up --from-report`: the topology a diagnose/check report describes (pure), and the
CLI's one-line errors for files that are not such a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from natkit.cli import cli
from natkit.errors import TopologyError
from natkit.lab.from_report import load_report, topology_from_report

EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"


def _report(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"version": 1, "udp": {"reachable": True}, "behind_nat": True}
    base |= {"hairpinning": False, "port_preservation": True, "cgnat": False}
    return base | fields


@pytest.mark.parametrize(
    ("fields", "mapping", "filtering", "hairpin"),
    [
        ({"nat_type": "full-cone", "mapping": EIM, "filtering": EIM}, EIM, EIM, False),
        ({"nat_type": "restricted-cone", "mapping": EIM, "filtering": ADM}, EIM, ADM, False),
        ({"nat_type": "symmetric", "mapping": APDM, "filtering": APDM}, APDM, APDM, False),
        (
            {"nat_type": "port-restricted-cone", "mapping": EIM, "filtering": APDM,
             "hairpinning": True},
            EIM, APDM, True,
        ),
    ],
)  # fmt: skip
def test_one_nat_with_the_reported_behaviours(
    fields: dict[str, Any], mapping: str, filtering: str, hairpin: bool
) -> None:
    topo = topology_from_report(_report(**fields))
    (nat,) = topo.nats
    assert (nat.mapping, nat.filtering, nat.hairpinning) == (mapping, filtering, hairpin)
    assert [h.behind for h in topo.hosts] == [nat.name] and topo.hosts[0].name == "peer"


def test_open_udp_blocked_cgnat_and_port_preservation() -> None:
    open_ = topology_from_report(_report(nat_type="open", behind_nat=False, mapping=EIM))
    assert not open_.nats and open_.hosts[0].behind == "internet"
    blocked = topology_from_report(_report(nat_type="udp-blocked", udp={"reachable": False}))
    assert blocked.nats[0].firewall.udp is False and blocked.nats[0].firewall.tcp_ports == (80, 443)
    cgnat = topology_from_report(
        _report(nat_type="symmetric", mapping=APDM, filtering=APDM, cgnat=True)
    )
    carrier = cgnat.nat("carrier")
    assert (carrier.mapping, cgnat.nat("home").upstream) == (APDM, "carrier")
    off = topology_from_report(
        _report(nat_type="full-cone", mapping=EIM, filtering=EIM, port_preservation=False)
    )
    assert off.nats[0].port_preservation == "off"


def test_a_browser_report_works_too() -> None:
    report = _report(source="browser", nat_type="restricted-cone", mapping=EIM, filtering=ADM,
                     hairpinning=None, cgnat=None)  # fmt: skip
    assert topology_from_report(report).nats[0].filtering == ADM


def test_unknown_behaviour_is_an_error_naming_the_field() -> None:
    with pytest.raises(TopologyError, match="filtering: the report does not say"):
        topology_from_report(_report(nat_type="unknown", mapping=EIM, filtering=None))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read report"),
        ("{nope", "not a JSON report"),
        ('{"version": 2}', "not a natkit diagnose/check report"),
        (json.dumps(_report(nat_type="unknown", mapping=None, filtering=None)), "mapping:"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(cli, ["lab", "up", "--from-report", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_cli_wants_exactly_one_source(tmp_path: Path) -> None:
    for args, said in (
        (["lab", "up"], "missing argument 'TOPOLOGY'"),
        (["lab", "up", "open", "--from-report", str(tmp_path / "r")], "not both"),
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and said in result.output


def test_load_report_reads_what_diagnose_writes(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_report(nat_type="symmetric")))
    assert load_report(path)["nat_type"] == "symmetric"
