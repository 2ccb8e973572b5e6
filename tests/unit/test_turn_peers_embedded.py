"""One policy for both engines: embedded IPv4 forms and the host's own addresses.

The builtin judges an IPv6 address by the IPv4 address it embeds (`embedded_ipv4`); coturn only
compares IPv6 ranges. `CoturnModel` reads the rendered ``allowed-peer-ip``/``denied-peer-ip``
lines the way coturn 4.6.1 does (allowed first, then denied; IPv4 ranges ordered, IPv6 ranges
byte by byte, which tests/integration/test_coturn_security.py checks against the real coturn),
so the two decisions can be compared on many addresses here and on the bypass list for real
there.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natkit.config.model import DEFAULT_DENIED_PEERS
from natkit.turn.engine import HostAddressRefresh
from natkit.turn.peers import PeerPolicy, coturn_lines

# Every form the issue found coturn relaying to, and the SIIT form (issue 11 items 5 and 13).
BYPASSES = (
    "::127.0.0.1", "::10.0.0.1", "64:ff9b::10.0.0.1", "64:ff9b::169.254.169.254",
    "2002:7f00:1::", "2002:a00:1::1", "2001:0:7f00:1:0:0:0:1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo: server 65.54.227.120, client 127.0.0.1
    "::ffff:0:127.0.0.1", "::ffff:0:10.0.0.1",
)  # fmt: skip
HOST = ("127.0.0.1", "::1", "192.0.2.2", "fd00::2", "fe80::1")


class CoturnModel:
    """coturn 4.6.1's peer check over natkit's rendered lines (its loopback check aside)."""

    def __init__(self, lines: list[str]) -> None:
        self.allowed = [self._range(ln) for ln in lines if ln.startswith("allowed-peer-ip=")]
        self.denied = [self._range(ln) for ln in lines if ln.startswith("denied-peer-ip=")]

    @staticmethod
    def _range(line: str) -> tuple[bytes, bytes]:
        text = line.split("=", 1)[1]
        low, _, high = text.partition("-")
        return (ipaddress.ip_address(low).packed, ipaddress.ip_address(high or low).packed)

    @staticmethod
    def _inside(ip: bytes, rng: tuple[bytes, bytes]) -> bool:
        low, high = rng
        if len(low) != len(ip):
            return False
        if len(ip) == 4:
            return low <= ip <= high
        return all(lo <= b <= hi for b, lo, hi in zip(ip, low, high, strict=True))

    def is_allowed(self, ip: str) -> bool:
        packed = ipaddress.ip_address(ip).packed
        if any(self._inside(packed, r) for r in self.allowed):
            return True
        return not any(self._inside(packed, r) for r in self.denied)


def both(policy: PeerPolicy) -> tuple[PeerPolicy, CoturnModel]:
    return policy, CoturnModel(coturn_lines(policy))


@pytest.mark.parametrize("ip", BYPASSES)
def test_every_bypass_is_refused_by_both_engines(ip: str) -> None:
    builtin, cot = both(PeerPolicy(DEFAULT_DENIED_PEERS, (), (), HOST))
    assert not builtin.is_allowed(ip)
    assert not cot.is_allowed(ip)


def test_the_model_catches_the_old_rendering() -> None:
    # Control: without the embedded lines (the rendering before issue 11), coturn relayed them.
    lines = coturn_lines(PeerPolicy(DEFAULT_DENIED_PEERS))
    old = lines[: lines.index(next(ln for ln in lines if ln.startswith("#")))]
    assert [ip for ip in BYPASSES if not CoturnModel(old).is_allowed(ip)] == [
        "::ffff:0:127.0.0.1",
        "::ffff:0:10.0.0.1",
    ]


PUBLIC_EMBEDDED = (
    "::8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo: server 65.54.227.120, client 8.8.8.8
)  # fmt: skip


@pytest.mark.parametrize("ip", PUBLIC_EMBEDDED)
def test_public_embedded_forms_stay_relayable_on_both(ip: str) -> None:
    builtin, cot = both(PeerPolicy(DEFAULT_DENIED_PEERS, (), (), HOST))
    assert builtin.is_allowed(ip) and cot.is_allowed(ip)


# Addresses in every embedding prefix around the interesting IPv4 ranges.
_V4 = st.one_of(
    st.ip_addresses(v=4),
    st.sampled_from(
        ["10.0.0.0/8", "127.0.0.0/8", "192.0.2.0/24", "169.254.0.0/16", "8.8.8.0/24"]
    ).flatmap(lambda n: st.ip_addresses(network=n)),
)
_MIDDLE = st.integers(0, 2**64 - 1)


@st.composite
def embedded(draw: st.DrawFn) -> str:
    v4 = int(draw(_V4))
    form = draw(st.sampled_from(["compat", "nat64", "siit", "6to4", "teredo-s", "teredo-c"]))
    rest = draw(_MIDDLE)
    value = {
        "compat": v4,
        "nat64": int(ipaddress.IPv6Address("64:ff9b::")) | v4,
        "siit": int(ipaddress.IPv6Address("::ffff:0:0:0")) | v4,
        "6to4": 0x2002 << 112 | v4 << 80 | rest,
        "teredo-s": 0x20010000 << 96 | v4 << 64 | (rest & 0xFFFFFFFF_FFFFFFFF),
        "teredo-c": 0x20010000 << 96 | (rest << 32 & 2**96 - 1) | (v4 ^ 0xFFFFFFFF),
    }[form]
    ip = ipaddress.IPv6Address(value)
    return str(ip)


_POLICIES = {
    "default": PeerPolicy(DEFAULT_DENIED_PEERS, (), (), HOST),
    "lab": PeerPolicy(
        DEFAULT_DENIED_PEERS, ("10.0.0.0/8", "192.0.2.0/24", "127.0.0.1/32"), ("127.0.0.1",), HOST
    ),
    "custom": PeerPolicy(["10.0.0.0/8", "127.0.0.0/8"], ["10.1.0.0/16"], (), ("192.0.2.2",)),
}
POLICIES = {name: both(policy) for name, policy in _POLICIES.items()}


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=300, deadline=None)
@given(ip=embedded())
def test_coturn_rendering_decides_as_the_builtin(name: str, ip: str) -> None:
    builtin, cot = POLICIES[name]
    if ipaddress.ip_address(ip) in (ipaddress.ip_address("::"), ipaddress.ip_address("::1")):
        return  # IPv6's own unspecified and loopback: coturn refuses them itself
    assert builtin.is_allowed(ip) == cot.is_allowed(ip), ip


def test_default_rendering_stays_short() -> None:
    lines = coturn_lines(PeerPolicy(DEFAULT_DENIED_PEERS, (), (), HOST))
    assert len(lines) < 160


# -- the host's own addresses (issue 11 item 6) ---------------------------------------------


def test_an_allow_range_does_not_open_the_host_inside_it() -> None:
    policy = PeerPolicy(DEFAULT_DENIED_PEERS, ("192.0.2.0/24",), (), HOST)
    assert policy.is_allowed("192.0.2.3")  # the LAN the operator opened
    assert not policy.is_allowed("192.0.2.2")  # this host, inside it
    assert not policy.is_allowed("::ffff:192.0.2.2")
    assert not policy.is_allowed("2002:c000:202::1")  # and its embedded forms
    assert not policy.allows_explicitly("192.0.2.2")  # relay-to-relay stays port-checked
    _, cot = both(policy)
    assert cot.is_allowed("192.0.2.3") and not cot.is_allowed("192.0.2.2")


def test_an_allow_entry_naming_the_address_opens_it() -> None:
    policy = PeerPolicy(DEFAULT_DENIED_PEERS, ("127.0.0.1/32",), ("127.0.0.1",), HOST)
    assert policy.is_allowed("127.0.0.1") and policy.allows_explicitly("127.0.0.1")
    assert not policy.is_allowed("127.0.0.2")
    assert CoturnModel(coturn_lines(policy)).is_allowed("127.0.0.1")


def test_host_addresses_are_replaced_whole() -> None:
    policy = PeerPolicy([], (), (), ("203.0.113.5",))
    assert not policy.is_allowed("203.0.113.5")
    policy.replace_host_addresses(["198.51.100.7"])
    assert policy.is_allowed("203.0.113.5") and not policy.is_allowed("198.51.100.7")


def test_configured_own_addresses_survive_a_refresh() -> None:
    policy = PeerPolicy([], (), ("9.9.9.9",), ())
    policy.replace_host_addresses(["198.51.100.7"])
    assert not policy.is_allowed("9.9.9.9")


def test_refresh_runs_every_interval_and_swaps_only_changes() -> None:
    policy = PeerPolicy([], (), (), ())
    found = [("203.0.113.5",)]
    refresh = HostAddressRefresh(policy, interval=30.0, enumerate_=lambda: found[0], now=100.0)
    assert not refresh(120.0) and policy.is_allowed("203.0.113.5")  # not due yet
    assert refresh(130.0) and not policy.is_allowed("203.0.113.5")
    assert not refresh(140.0)
    found[0] = ("198.51.100.7",)
    assert not refresh(159.0)
    assert refresh(160.0) and policy.is_allowed("203.0.113.5")
    assert not policy.is_allowed("198.51.100.7")


def test_refresh_keeps_the_last_set_when_listing_fails() -> None:
    policy = PeerPolicy([], (), (), ("203.0.113.5",))

    def broken() -> tuple[str, ...]:
        raise OSError("netlink gone")

    refresh = HostAddressRefresh(policy, interval=1.0, enumerate_=broken)
    assert not refresh(5.0)
    assert not policy.is_allowed("203.0.113.5")
