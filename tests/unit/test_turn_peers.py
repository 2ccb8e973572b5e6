"""The TURN peer policy and its coturn rendering (ranges, never CIDR)."""

from __future__ import annotations

import ipaddress

import pytest

from natkit.config.model import DEFAULT_DENIED_PEERS
from natkit.turn.peers import PeerPolicy, coturn_blocks, coturn_lines, network_range

OWN = ("9.9.9.9", "2620:fe::9")  # public addresses: denied only as own


@pytest.fixture
def policy() -> PeerPolicy:
    return PeerPolicy(DEFAULT_DENIED_PEERS, (), OWN)


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.9.9.9",
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "100.64.0.1",
        "169.254.1.1",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "fd00::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # CVE-2026-27624
        "::ffff:10.1.2.3",
        "::127.0.0.1",  # IPv4-compatible
        "2002:7f00:1::1",  # 6to4 embedding 127.0.0.1
        "2002:a01:203::1",  # 6to4 embedding 10.1.2.3
        "64:ff9b::7f00:1",  # NAT64 to 127.0.0.1
        "9.9.9.9",  # own address
        "::ffff:9.9.9.9",
        "2620:fe::9",
    ],
)
def test_denied_by_default(policy: PeerPolicy, ip: str) -> None:
    assert not policy.is_allowed(ip)


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "2606:4700::1", "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_public_allowed(policy: PeerPolicy, ip: str) -> None:
    assert policy.is_allowed(ip)


def test_allow_opens_holes() -> None:
    policy = PeerPolicy(DEFAULT_DENIED_PEERS, ("127.0.0.1/32", "10.0.0.0/8"), ("127.0.0.1",))
    assert policy.is_allowed("127.0.0.1")  # over deny and over the own address
    assert policy.is_allowed("::ffff:127.0.0.1")  # mapped = the IPv4 address
    assert policy.is_allowed("10.200.0.1")
    assert not policy.is_allowed("127.0.0.2")
    assert not policy.is_allowed("::1")


def test_bad_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"turn\.peers\.deny"):
        PeerPolicy(["10.0.0.0/33"])


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("10.0.0.0/8", "10.0.0.0-10.255.255.255"),
        ("192.168.0.0/16", "192.168.0.0-192.168.255.255"),
        ("127.0.0.1/32", "127.0.0.1"),
        ("fe80::/10", "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ("::1/128", "::1"),
        ("::ffff:0:0/96", "::ffff:0.0.0.0-::ffff:255.255.255.255"),
        ("2001:db8::/32", "2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
    ],
)
def test_network_range(cidr: str, expected: str) -> None:
    assert network_range(ipaddress.ip_network(cidr)) == expected


def test_zero_bounds_never_rendered() -> None:
    # coturn reads a bound of :: / 0.0.0.0 as "no bound": "::" alone would deny every peer.
    assert coturn_blocks(ipaddress.ip_network("::/128")) == []
    assert coturn_blocks(ipaddress.ip_network("0.0.0.0/32")) == []
    blocks = coturn_blocks(ipaddress.ip_network("::/126"))
    assert [str(b) for b in blocks] == ["::1/128", "::2/127"]
    assert all(
        not b.network_address.is_unspecified for b in coturn_blocks(ipaddress.ip_network("::/0"))
    )


def test_coturn_lines_never_cidr(policy: PeerPolicy) -> None:
    lines = coturn_lines(PeerPolicy(DEFAULT_DENIED_PEERS, ("127.0.0.1/32",), OWN))
    assert lines
    assert all("/" not in line for line in lines if not line.startswith("#"))
    assert lines[0] == "allowed-peer-ip=127.0.0.1"
    assert "allowed-peer-ip=::ffff:127.0.0.1" in lines
    assert "denied-peer-ip=10.0.0.0-10.255.255.255" in lines
    assert "denied-peer-ip=9.9.9.9" in lines
    assert "denied-peer-ip=::" not in lines
