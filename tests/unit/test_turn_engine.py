"""Relay address choice of the builtin engine (natkit.turn.engine.relay_settings)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from natkit.config import ConfigError, loads
from natkit.hostaddr import Interface
from natkit.turn import engine

BASE = (
    "version: 1\nstun: {{listen: {listen}}}\nturn: {{enabled: true, auth: {{secret: s}}{extra}}}\n"
)


def settings(listen: str, extra: str = "") -> dict[int, str]:
    config = loads(BASE.format(listen=listen, extra=extra), "t.yaml")
    return engine.relay_settings(config).relay_ips


def test_concrete_listener_ip_is_the_relay_ip() -> None:
    assert settings('["udp://127.0.0.1:3478", "udp://[::1]:3478"]') == {4: "127.0.0.1", 6: "::1"}


def test_relay_address_wins_for_its_family() -> None:
    ips = settings('["udp://127.0.0.1:3478"]', ", relay: {address: 127.0.0.5}")
    assert ips == {4: "127.0.0.5"}


# A host with a tunnel, a second uplink and the default route on eth1: fixed, so the expected
# answer is known (the host running the tests may have any interfaces at all).
HOST = [
    Interface("lo", ("127.0.0.1/8", "::1/128"), tunnel=False, loopback=True, default_route=False),
    Interface("wg0", ("10.66.0.2/24",), tunnel=True, loopback=False, default_route=False),
    Interface("eth0", ("192.0.2.10/24",), tunnel=False, loopback=False, default_route=False),
    Interface(
        "eth1",
        ("169.254.3.3/16", "198.51.100.7/24", "2001:db8::7/64"),
        tunnel=False,
        loopback=False,
        default_route=True,
    ),
]


def test_wildcard_listeners_use_the_default_route_interface(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "interfaces", lambda: HOST)
    # eth1 holds the default route: its global addresses win; link-local and loopback never.
    assert engine.host_relay_ips() == {4: "198.51.100.7", 6: "2001:db8::7"}
    assert settings('["udp://0.0.0.0:3478"]') == {4: "198.51.100.7", 6: "2001:db8::7"}


def test_without_a_default_route_a_plain_interface_beats_a_tunnel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "interfaces", lambda: HOST[:3])
    assert engine.host_relay_ips() == {4: "192.0.2.10"}
    monkeypatch.setattr(engine, "interfaces", lambda: HOST[:2])
    assert engine.host_relay_ips() == {4: "10.66.0.2"}
    monkeypatch.setattr(engine, "interfaces", lambda: HOST[:1])
    assert engine.host_relay_ips() == {}


def test_the_builtin_engine_imports_neither_the_coturn_renderer_nor_diagnostics() -> None:
    # Serving must not depend on diagnostics or on the coturn engine (issue 12, item 5).
    code = (
        "import sys, natkit.turn.engine\n"
        "bad = [m for m in sys.modules if m.startswith(('natkit.turn.coturn', 'natkit.diag'))]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_wildcard_without_any_global_address_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "host_relay_ips", dict)
    with pytest.raises(ConfigError, match=r"t\.yaml: turn\.relay\.address: .* needs a relay IP"):
        settings('["udp://0.0.0.0:3478"]')
