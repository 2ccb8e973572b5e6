"""Relay address choice of the builtin engine (natkit.turn.engine.relay_settings)."""

from __future__ import annotations

import ipaddress

import pytest

from natkit.config import ConfigError, loads
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


def test_wildcard_listeners_use_this_hosts_own_global_address() -> None:
    own = engine.host_relay_ips()
    if not own:  # a host with loopback only: the next test's error is the answer
        with pytest.raises(ConfigError):
            settings('["udp://0.0.0.0:3478"]')
        return
    ips = settings('["udp://0.0.0.0:3478"]')
    assert ips == own
    for text in ips.values():
        ip = ipaddress.ip_address(text)
        assert not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


def test_wildcard_without_any_global_address_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "host_relay_ips", dict)
    with pytest.raises(ConfigError, match=r"t\.yaml: turn\.relay\.address: .* needs a relay IP"):
        settings('["udp://0.0.0.0:3478"]')
