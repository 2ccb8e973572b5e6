"""Peer policy of coturn as natkit runs it, including CVE-2026-27624 on coturn < 4.9.

The server listens and relays on 127.0.0.1 and ::1 with natkit's *default* policy. An IPv6
allocation (REQUESTED-ADDRESS-FAMILY) asks for a permission to ``::ffff:127.0.0.1``: coturn
4.6.1 grants it unless the rendered config closes the hole; the control test runs the same
request against the config minus natkit's closing line, proving the test would catch a
regression.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from natkit.config import Config, loads
from natkit.turn import coturn
from tests.integration.conftest import has_ipv6_loopback
from tests.integration.coturn_harness import check, free_port, relay_range, running_coturn

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.integration, pytest.mark.coturn]


if not has_ipv6_loopback():
    pytestmark.append(pytest.mark.skip(reason="no IPv6 loopback (::1) here"))

DEFAULT_POLICY = """
version: 1
stun:
  listen: ["udp://127.0.0.1:{port}", "udp://[::1]:{port}", "tcp://127.0.0.1:{port}"]
turn:
  enabled: true
  engine: coturn
  auth: {{users: {{alice: wonderland}}}}
  relay: {{ports: "{low}-{high}"}}
"""
CLOSING = "denied-peer-ip=::ffff:0.0.0.0-::ffff:255.255.255.255"


def config() -> Config:
    low, high = relay_range()
    port = free_port()
    return loads(DEFAULT_POLICY.format(port=port, low=low, high=high), "policy.yaml")


@pytest.fixture(scope="module")
def version() -> coturn.Version:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn's turnserver is not installed (apt-get install coturn)")
    return coturn.detect_version()


def _serve(text: str, cfg: Config, tmp_path: Path) -> Iterator[str]:
    # relay-ip per family: coturn relays IPv6 allocations from ::1.
    text += "relay-ip=127.0.0.1\nrelay-ip=::1\n"
    port = cfg.stun.listen[0].port
    with running_coturn(text, "127.0.0.1", port, tmp_path):
        yield f"turn:[::1]:{port}"


@pytest.fixture
def secured(version: coturn.Version, tmp_path: Path) -> Iterator[str]:
    cfg = config()
    yield from _serve(coturn.render(cfg, version, runtime_dir=str(tmp_path)), cfg, tmp_path)


def probe(url: str, peer: str, family: int) -> int | None:
    report = check(
        url, username="alice", password="wonderland", peer=peer, family=family, until="permission"
    )
    assert report.steps[1].name == "allocate" and report.steps[1].ok, report
    step = report.failed_step
    return None if step is None else step.error_code


@pytest.mark.parametrize(
    ("peer", "family"),
    [
        ("127.0.0.1", 4),
        ("10.1.2.3", 4),
        ("::1", 6),
        ("::ffff:127.0.0.1", 6),  # CVE-2026-27624
        ("::ffff:10.1.2.3", 6),
        ("fe80::1", 6),
    ],
)
def test_default_policy_refuses(secured: str, peer: str, family: int) -> None:
    assert probe(secured, peer, family) == 403


def test_public_peers_still_permitted(secured: str) -> None:
    assert probe(secured, "8.8.8.8", 4) is None
    assert probe(secured, "2606:4700::1", 6) is None


def test_control_without_closing_line(version: coturn.Version, tmp_path: Path) -> None:
    if version >= (4, 9, 0):
        pytest.skip(f"coturn {version} canonicalises IPv4-mapped peers itself")
    cfg = config()
    text = coturn.render(cfg, version, runtime_dir=str(tmp_path))
    assert CLOSING in text
    for url in _serve(text.replace(CLOSING, ""), cfg, tmp_path):
        # The hole natkit closes is real on this coturn: without the line, access is granted.
        assert probe(url, "::ffff:127.0.0.1", 6) is None
