"""natkit.testing's free_port and its public surface (the serve harness: tests/integration)."""

from __future__ import annotations

import socket

import pytest

from natkit import testing


def test_public_surface_is_explicit() -> None:
    assert sorted(testing.__all__) == sorted(set(testing.__all__))
    for name in testing.__all__:
        assert hasattr(testing, name), name
    # Every public function and class defined here is exported (imports are not).
    own = {
        n
        for n, v in vars(testing).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == "natkit.testing"
    }
    assert "serve" in own and own <= set(testing.__all__), own


@pytest.mark.parametrize("kind", ["udp", "tcp", "udp+tcp"])
def test_free_port_is_bindable_for_its_kind(kind: testing.PortKind) -> None:
    port = testing.free_port(kind)
    assert port not in testing.RELAY_PORTS
    types = {"udp": [socket.SOCK_DGRAM], "tcp": [socket.SOCK_STREAM]}
    for sock_type in types.get(kind, [socket.SOCK_DGRAM, socket.SOCK_STREAM]):
        with socket.socket(socket.AF_INET, sock_type) as s:
            s.bind(("127.0.0.1", port))


def test_free_port_avoids_the_given_ranges() -> None:
    # Every port but the kernel's ephemeral range's low half is avoided: the answer must be there.
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    mid = (low + high) // 2
    for _ in range(5):
        port = testing.free_port("udp", avoid=(range(mid, 65536),))
        assert low <= port < mid


def test_free_port_gives_up_when_everything_is_avoided() -> None:
    with pytest.raises(RuntimeError, match="no free udp port"):
        testing.free_port("udp", avoid=(range(1, 65536),))


def test_expected_lines_counts_listeners_signal_and_metrics() -> None:
    config = {
        "stun": {"listen": ["udp://127.0.0.1:1", "tcp://127.0.0.1:1"]},
        "signal": {"enabled": True},
        "metrics": {"listen": "127.0.0.1:2"},
    }
    assert testing.expected_lines(config) == 4
    assert testing.expected_lines({"stun": {"listen": ["udp://127.0.0.1:1"]}}) == 1
