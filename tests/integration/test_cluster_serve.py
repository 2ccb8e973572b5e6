"""A fleet node with two workers on loopback (each worker a member of its own), and the CLI:
`natkit cluster status` as text and JSON, `revoke`, and its one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from natkit.cli import cli
from natkit.testing import free_port, serve, wait_until
from tests.integration.turn_client import TurnClient, code
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

HOST = "127.0.0.7"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer("127.0.0.1", free_port("tcp")) as server:
        yield server


def _config(redis: RedisServer, port: int) -> dict[str, object]:
    return {
        "version": 1,
        "stun": {"listen": [f"udp://{HOST}:{port}"], "workers": 2},
        "turn": {
            "enabled": True,
            "realm": "r",
            "auth": {"users": {"alice": "pw"}},
            "quota": {"per_user": 5},
        },
        "metrics": {"listen": None},
        "cluster": {"redis": redis.url, "node_id": "solo", "prefix": "h17serve"},
    }


def _status(path: Path, *extra: str) -> str:
    result = CliRunner().invoke(cli, ["cluster", "status", "-c", str(path), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_two_workers_share_the_fleet_quota_and_leave_cleanly(
    redis: RedisServer, tmp_path: Path
) -> None:
    port = free_port(host=HOST)
    config = _config(redis, port)
    path = tmp_path / "natkit.yaml"
    path.write_text(yaml.safe_dump(config))
    with serve(config):
        # Clients from 8 loopback hosts: steered over both workers (by source address).
        codes = [code(TurnClient(port, "alice", "pw", "r", source=f"127.0.1.{i}",
                                 server_host=HOST).allocate()) for i in range(8)]  # fmt: skip
        assert sorted(codes) == [0] * 5 + [486] * 3
        report = json.loads(_status(path, "--json"))
        (node,) = report["nodes"]
        assert node["node"] == "solo" and len(node["members"]) == 2
        assert node["quota_held"] == 5 and report["quota"]["users"] == {"alice": 5}
        # The load each member publishes with its heartbeat (every 0.5 s).
        assert wait_until(lambda: "solo: healthy, 5 allocation(s)" in _status(path), 2.0)
        result = CliRunner().invoke(cli, ["cluster", "revoke", "-c", str(path), "alice"])
        assert result.exit_code == 0 and result.output == "revoked alice\n"
        wait_until(lambda: json.loads(_status(path, "--json"))["quota"]["total"] == 0, 3.0)
        assert "revoked: alice" in _status(path)
    # A clean stop leaves the fleet at once: no member stays behind.
    assert json.loads(_status(path, "--json"))["nodes"] == []


def test_cluster_commands_fail_in_one_line(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("version: 1\n")
    result = CliRunner().invoke(cli, ["cluster", "status", "-c", str(plain)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "cluster.redis is not set" in result.output
    dead = tmp_path / "dead.yaml"
    dead.write_text(
        "version: 1\nturn: {enabled: true, auth: {users: {a: b}}}\n"
        f"cluster: {{redis: 'redis://:secret@127.0.0.1:{free_port('tcp')}'}}\n"
    )
    result = CliRunner().invoke(cli, ["cluster", "revoke", "-c", str(dead), "x"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "Redis at redis://127.0.0.1:" in result.output and "secret" not in result.output
