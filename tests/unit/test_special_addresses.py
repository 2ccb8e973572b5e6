"""The default peer deny list against the IANA special-purpose address registries (issue 11,
item 13): every address of every entry that is not globally reachable is refused by the default
`PeerPolicy`, real public addresses are not. Addresses are values here: nothing is sent."""

from __future__ import annotations

import csv
import ipaddress
import random
from pathlib import Path

import pytest

import natkit
from natkit.config import Config
from natkit.special_addresses import (
    BEYOND_REGISTRY,
    DEFAULT_DENIED_PEERS,
    EMBEDDED_IPV4,
    Entry,
    default_denied_peers,
    registry,
)
from natkit.turn.peers import PeerPolicy

DATA = Path(natkit.__file__).parent / "data"
COLUMNS = ["Address Block", "Name", "RFC", "Source", "Destination", "Forwardable",
           "Globally Reachable", "Reserved-by-Protocol"]  # fmt: skip
EMBEDDED = [ipaddress.ip_network(n) for n in EMBEDDED_IPV4]
POLICY = PeerPolicy(Config().turn.peers.deny)


def _samples(net: ipaddress.IPv4Network | ipaddress.IPv6Network, n: int = 32) -> list[str]:
    """First, last and `n` pseudo-random addresses of `net`, minus the embedded-IPv4 prefixes
    (those are judged by the IPv4 address inside: tested below)."""
    rng = random.Random(str(net))
    first, size = int(net.network_address), net.num_addresses
    ints = {first, first + size - 1, *(first + rng.randrange(size) for _ in range(n))}
    addrs = [ipaddress.ip_address(i) if net.version == 4 else ipaddress.IPv6Address(i)
             for i in sorted(ints)]  # fmt: skip
    return [str(a) for a in addrs if not any(a in e for e in EMBEDDED if e.version == a.version)]


@pytest.mark.parametrize("version", [4, 6])
def test_registry_files_have_ianas_columns_and_valid_blocks(version: int) -> None:
    path = DATA / f"iana-ipv{version}-special-registry.csv"
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert len(rows) == len(registry(version)) >= 20
    for row in rows:
        net = ipaddress.ip_network(row["Address Block"])  # strict: a network address
        assert net.version == version
        for key in COLUMNS[3:]:
            assert row[key] in ("True", "False", "N/A"), row


@pytest.mark.parametrize(
    ("block", "reachable"),
    [("192.88.99.0/24", None), ("100.64.0.0/10", False), ("255.255.255.255/32", False),
     ("192.0.0.10/32", True), ("::ffff:0:0/96", False), ("100::/64", False),
     ("2001::/23", False), ("2001::/32", None), ("2001:2::/48", False), ("2001:10::/28", None),
     ("2001:20::/28", True), ("2001:30::/28", True), ("2002::/16", None), ("3fff::/20", False),
     ("5f00::/16", False), ("64:ff9b::/96", True)],
)  # fmt: skip
def test_registry_entries_as_iana_lists_them(block: str, reachable: bool | None) -> None:
    net = ipaddress.ip_network(block)
    entries = {e.network: e for e in registry(net.version)}
    assert entries[net].globally_reachable is reachable


@pytest.mark.parametrize(
    "entry",
    [e for v in (4, 6) for e in registry(v) if e.globally_reachable is not True],
    ids=lambda e: f"{e.network} {e.name}",
)
def test_every_entry_not_globally_reachable_is_denied(entry: Entry) -> None:
    samples = _samples(entry.network)
    allowed = [ip for ip in samples if POLICY.is_allowed(ip)]
    assert not allowed, (entry.name, allowed)


@pytest.mark.parametrize(
    "ip",
    # The gaps of issue 11 item 13, and what natkit denies beyond the registry.
    ["::ffff:0:127.0.0.1", "::ffff:0:8.8.8.8", "fec0::1", "feff::1", "100::1", "3fff::1",
     "3fff:fff:ffff::1", "2001:2::1", "2001:10::1", "2001:20::1", "2001:30::1", "5f00::1",
     "192.88.99.1", "192.88.99.2", "224.0.0.251", "ff02::fb", "192.0.0.10", "2001:1::2"],
)  # fmt: skip
def test_the_gaps_are_closed(ip: str) -> None:
    assert not POLICY.is_allowed(ip)


@pytest.mark.parametrize(
    "ip",
    ["8.8.8.8", "1.1.1.1", "9.9.9.9", "192.88.98.255", "192.88.100.1", "2001:4860:4860::8888",
     "2606:4700:4700::1111", "2001:200::1", "2620:4f:8000::1", "192.175.48.1",
     "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "::8.8.8.8",
     "2001:0:4136:e378:8000:63bf:f7f7:f7f7"],  # Teredo: server 65.54.227.120, client 8.8.8.8
)  # fmt: skip
def test_public_addresses_stay_allowed(ip: str) -> None:
    assert POLICY.is_allowed(ip)


@pytest.mark.parametrize(
    "ip",
    ["::ffff:10.1.2.3", "::10.1.2.3", "2002:a01:203::1", "64:ff9b::a01:203",
     "2001:0:4136:e378:8000:63bf:f5fe:fdfc",  # Teredo client 10.1.2.3
     "2001:0:a01:203::1",  # Teredo server 10.1.2.3
     "::ffff:0:10.1.2.3"],  # SIIT, judged by its IPv4 even when the /96 is not denied
)  # fmt: skip
def test_embedded_ipv4_is_judged_with_a_custom_deny_list(ip: str) -> None:
    policy = PeerPolicy(["10.0.0.0/8"])
    assert not policy.is_allowed(ip)
    assert PeerPolicy(["10.0.0.0/8"], ["10.0.0.0/8"]).is_allowed(ip)  # a hole opens all forms


def test_the_derivation_is_the_config_default_and_adds_only_what_it_says() -> None:
    assert default_denied_peers() == DEFAULT_DENIED_PEERS == Config().turn.peers.deny
    denied = [ipaddress.ip_network(n) for n in DEFAULT_DENIED_PEERS]
    registry_blocks = [e.network for v in (4, 6) for e in registry(v)
                       if e.globally_reachable is not True]  # fmt: skip
    for net in denied:
        inside = any(net.version == r.version and net.subnet_of(r) for r in registry_blocks)  # type: ignore[arg-type]
        assert inside or str(net) in BEYOND_REGISTRY, net
