"""natkit.diag.classify: RFC 5780 results → mapping, filtering, classic type (pure tables)."""

from __future__ import annotations

import pytest

from natkit.addr import Address
from natkit.diag.classify import Binding, FamilyProbe, classify, nat_type

EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
LOCAL = Address("10.0.1.2", 40000)
P, A = Address("203.0.113.10", 3478), Address("203.0.113.11", 3479)
ALT_IP, ALT_PORT = Address(A.host, P.port), Address(P.host, A.port)


def ok(
    target: Address, mapped: Address, origin: Address | None = None, other: Address | None = A
) -> Binding:
    return Binding(target, "ok", mapped=mapped, other=other, origin=origin or target)


def silent(target: Address = P) -> Binding:
    return Binding(target, "timeout", sends=5)


def probe(
    m1: int | None = 40000,
    m2: int | None = 40000,
    m3: int | None = 40000,
    eif: bool | None = False,
    adf: bool | None = False,
    hairpin: bool | None = False,
    public: str = "203.0.113.100",
    other: Address | None = A,
) -> FamilyProbe:
    """A FamilyProbe: mapped ports for tests I-III (None: silent), filtering answers."""

    def mapped(port: int) -> Address:
        return Address(public, port)

    first = ok(P, mapped(m1), other=other) if m1 is not None else silent()
    if m1 is None or other is None:
        return FamilyProbe(4, LOCAL, (first,), hairpin=hairpin)

    def change(answered: bool | None, origin: Address) -> Binding:
        if answered is None:
            return Binding(P, "error", error="420 Unknown Attribute")
        return ok(P, mapped(50000), origin=origin) if answered else silent()

    return FamilyProbe(
        4,
        LOCAL,
        (first,),
        rfc5780_index=0,
        alt_ip=ok(ALT_IP, mapped(m2)) if m2 is not None else silent(ALT_IP),
        alt_ip_port=ok(A, mapped(m3)) if m3 is not None else silent(A),
        filter_primary=ok(P, mapped(50000)),
        change_ip_port=change(eif, A),
        change_port=change(adf or eif, ALT_PORT),
        hairpin=hairpin,
    )


@pytest.mark.parametrize(
    ("p", "mapping", "filtering", "kind", "classic"),
    [
        (probe(eif=True), EIM, EIM, "full-cone", "Full Cone"),
        (probe(adf=True), EIM, ADM, "restricted-cone", "Restricted Cone"),
        (probe(), EIM, APDM, "port-restricted-cone", "Port Restricted Cone"),
        (probe(m2=41000, m3=41000), ADM, APDM, "symmetric", "Symmetric NAT"),
        (probe(m2=41000, m3=42000), APDM, APDM, "symmetric", "Symmetric NAT"),
        (probe(m2=41000, m3=42000, eif=True), APDM, EIM, "symmetric", "Symmetric NAT"),
        (probe(m1=None), None, None, "udp-blocked", "UDP Blocked"),
        # no NAT: mapped == local
        (probe(public=LOCAL.host, eif=True), EIM, EIM, "open", "Open Internet"),
        (probe(public=LOCAL.host), EIM, APDM, "port-restricted-cone", "Symmetric UDP Firewall"),
        (
            probe(public=LOCAL.host, adf=True),
            EIM,
            ADM,
            "restricted-cone",
            "Restricted UDP Firewall",
        ),
    ],
)
def test_classification_table(
    p: FamilyProbe, mapping: str | None, filtering: str | None, kind: str, classic: str
) -> None:
    c = classify(p)
    assert (c.mapping, c.filtering, c.nat_type, c.classic_type) == (
        mapping,
        filtering,
        kind,
        classic,
    )


def test_no_other_address_is_unknown_not_guessed() -> None:
    c = classify(probe(other=None))
    assert (c.mapping, c.filtering, c.nat_type) == (None, None, "unknown")
    assert c.udp and c.public_address == Address("203.0.113.100", 40000)
    assert any("OTHER-ADDRESS" in n for n in c.notes)


def test_change_request_refused_is_unknown_filtering() -> None:
    c = classify(probe(eif=None))
    assert (c.mapping, c.filtering, c.nat_type) == (EIM, None, "unknown")
    assert any("420" in n for n in c.notes)


def test_server_ignoring_change_request_is_not_a_full_cone() -> None:
    """An answer from the primary address to a change-ip+port request proves nothing."""
    p = probe()
    fake = ok(P, Address("203.0.113.100", 50000), origin=P)
    from dataclasses import replace

    c = classify(replace(p, change_ip_port=fake, change_port=fake))
    assert c.filtering is None and c.nat_type == "unknown"
    assert any("ignores CHANGE-REQUEST" in n for n in c.notes)


def test_silent_alternate_leaves_mapping_unknown() -> None:
    c = classify(probe(m2=None, m3=None))
    assert c.mapping is None and c.nat_type == "unknown"


def test_several_servers_on_different_ips_reveal_a_symmetric_nat() -> None:
    s2 = Address("198.51.100.7", 3478)
    servers = (
        ok(P, Address("203.0.113.100", 40000), other=None),
        ok(s2, Address("203.0.113.100", 40001), other=None),
    )
    c = classify(FamilyProbe(4, LOCAL, servers))
    assert c.mapping is None and c.mapping_consistent is False and c.nat_type == "symmetric"


@pytest.mark.parametrize(("m1", "preserved"), [(40000, True), (61000, False)])
def test_port_preservation(m1: int, preserved: bool) -> None:
    assert classify(probe(m1=m1, m2=m1, m3=m1)).port_preservation is preserved


def test_hairpinning_only_reported_behind_a_nat() -> None:
    assert classify(probe(hairpin=True)).hairpinning is True
    assert classify(probe(hairpin=False)).hairpinning is False
    assert classify(probe(public=LOCAL.host, hairpin=True)).hairpinning is None


def test_nat_type_never_claims_open_without_filtering() -> None:
    assert nat_type(True, False, EIM, None) == "unknown"
    assert nat_type(False, None, None, None) == "udp-blocked"
