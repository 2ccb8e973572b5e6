"""natkit check's ICE prober, sans-IO: what it answers, whom it probes, how many times."""

from __future__ import annotations

import secrets

from natkit.addr import Address
from natkit.check import ice, sdp
from natkit.check.report import build_report, page_results
from natkit.stun.constants import AttrType as A
from natkit.stun.constants import MessageClass, Method
from natkit.stun.message import Message, parse_message

SOCKETS = {
    "p1": Address("203.0.113.10", 40001),
    "p2": Address("203.0.113.10", 40002),
    "p3": Address("203.0.113.10", 40003),
    "a1": Address("203.0.113.11", 40004),
}
BROWSER = Address("203.0.113.100", 50000)
FORGED = Address("198.51.100.7", 9999)  # a third party named in the offer

OFFER = (
    "v=0\r\na=ice-ufrag:brow\r\na=ice-pwd:browserpasswordbrowserpw\r\na=mid:0\r\n"
    "a=candidate:1 1 udp 2113937151 10.0.1.2 50000 typ host\r\n"
    f"a=candidate:2 1 udp 1677729535 {FORGED.host} {FORGED.port} typ srflx raddr 0.0.0.0 rport 0"
    "\r\n"
)


def _session(kind: ice.Kind) -> tuple[ice.IceCore, ice.IceSession]:
    core = ice.IceCore(dict(SOCKETS))  # type: ignore[arg-type]
    offer = sdp.parse_offer(OFFER)
    session = ice.IceSession(kind, "srv1", "serverpasswordserverpw12", offer.ufrag, offer.pwd)
    assert core.add(session)
    return core, session


def _check(session: ice.IceSession, priority: int = 1862270975, pwd: str | None = None) -> bytes:
    msg = Message(Method.BINDING, MessageClass.REQUEST, secrets.token_bytes(12))
    msg.add(A.USERNAME, f"{session.local_ufrag}:{session.remote_ufrag}")
    msg.add(A.PRIORITY, priority)
    msg.add(A.ICE_CONTROLLING, 1)
    return msg.encode(integrity_key=(pwd or session.local_pwd).encode(), fingerprint=True)


def _answer(probe: ice.Transmit, session: ice.IceSession) -> bytes:
    req = parse_message(probe.data)
    assert req.check_integrity(session.remote_pwd.encode())  # keyed by the browser's pwd
    assert req.get(A.USERNAME) == f"{session.remote_ufrag}:{session.local_ufrag}"
    reply = Message(Method.BINDING, MessageClass.SUCCESS, req.transaction_id)
    reply.add(A.XOR_MAPPED_ADDRESS, probe.destination)
    return reply.encode(integrity_key=session.remote_pwd.encode(), fingerprint=True)


def test_offer_parsing_is_bounded() -> None:
    offer = sdp.parse_offer(OFFER)
    assert (offer.ufrag, offer.mid, len(offer.candidates)) == ("brow", "0", 2)
    bad_mid = OFFER.replace("a=mid:0", "a=mid:<script>")
    for bad in ("", "a=ice-ufrag:x\r\n", bad_mid, 5, "x" * 20000):
        try:
            sdp.parse_offer(bad)
        except sdp.SdpError:
            continue
        raise AssertionError(f"accepted {bad!r:.40}")


def test_the_answer_names_natkits_sockets_as_an_ice_lite_agent() -> None:
    text = sdp.answer(sdp.parse_offer(OFFER), "srv1", "p" * 24, [SOCKETS["p3"]])
    assert "a=ice-lite" in text and "a=ice-ufrag:srv1" in text
    assert f"{SOCKETS['p3'].host} {SOCKETS['p3'].port} typ host" in text


def test_probes_go_only_to_the_observed_opener_never_to_a_candidate() -> None:
    core, session = _session("filtering")
    out = core.handle("p3", _check(session), BROWSER, now=0.0)
    reply = parse_message(out[0].data)
    assert reply.message_class == MessageClass.SUCCESS and out[0].destination == BROWSER
    sent = out[1:]
    for t in range(1, 100):
        sent += core.tick(t * 0.05)
    assert len(sent) == ice.MAX_PROBES == 12
    assert {t.destination for t in sent} == {BROWSER}  # not FORGED, not the host candidate
    assert {t.role for t in sent} == {"p3", "p1", "a1"}
    assert session.probes_done and not core.tick(100.0)


def test_a_check_with_a_wrong_password_or_ufrag_opens_nothing() -> None:
    core, session = _session("filtering")
    assert core.handle("p3", _check(session, pwd="wrongpasswordwrongpass1"), FORGED, 0.0) == []
    other = ice.IceSession("filtering", "srv1", session.local_pwd, "nope", session.remote_pwd)
    assert core.handle("p3", _check(other), FORGED, 0.0) == []
    assert core.handle("p1", _check(session), FORGED, 0.0) == []  # a socket it never named
    assert session.opener is None and not core.tick(5.0) and core.dropped == 3


def _filtering_with(admitted: set[str]) -> str | None:
    core, session = _session("filtering")
    probes = core.handle("p3", _check(session), BROWSER, 0.0)[1:]
    for probe in probes:
        if probe.role in admitted:  # what the NAT lets in; the browser answers it
            core.handle(probe.role, _answer(probe, session), BROWSER, 0.1)
    return ice.filtering_of(session, alternate=True)


def test_filtering_classes() -> None:
    assert _filtering_with({"p3", "p1", "a1"}) == "endpoint-independent"
    assert _filtering_with({"p3", "p1"}) == "address-dependent"
    assert _filtering_with({"p3"}) == "address-and-port-dependent"
    assert _filtering_with(set()) is None


def test_an_answer_from_elsewhere_does_not_count() -> None:
    core, session = _session("filtering")
    probes = core.handle("p3", _check(session), BROWSER, 0.0)[1:]
    probe = next(p for p in probes if p.role == "a1")
    core.handle("a1", _answer(probe, session), FORGED, 0.1)
    assert session.answered == set()


def _mapping_with(seen: dict[str, Address]) -> str | None:
    core, session = _session("mapping")
    for role, source in seen.items():
        core.handle(role, _check(session), source, 0.0)  # type: ignore[arg-type]
    return ice.mapping_of(session, alternate=True)[0]


def test_mapping_classes() -> None:
    m = Address("203.0.113.100", 50000)
    other = Address("203.0.113.100", 50001)
    assert _mapping_with({"p1": m, "a1": m, "p2": m}) == "endpoint-independent"
    assert _mapping_with({"p1": m, "a1": other, "p2": m}) == "address-dependent"
    assert _mapping_with({"p1": m, "a1": other, "p2": other}) == "address-and-port-dependent"
    assert _mapping_with({"p1": m}) is None


def test_answers_to_the_browser_are_bounded() -> None:
    core, session = _session("mapping")
    answered = sum(bool(core.handle("p1", _check(session), BROWSER, 0.0)) for _ in range(100))
    assert answered == ice.MAX_ANSWERS


def test_report_uses_diagnose_words_and_keeps_page_input_bounded() -> None:
    core, session = _session("mapping")
    prio = (110 << 24) | (65535 << 8) | 255
    for role in ("p1", "a1", "p2"):
        core.handle(role, _check(session, priority=prio), BROWSER, 0.0)  # type: ignore[arg-type]
    good = {"transport": "udp", "url": "turn:x", "ok": True, "rtt_ms": 3}
    turn, cands, duration, hairpin = page_results(
        {"turn": [good] * 10 + [{"transport": "evil"}], "candidates": "nope", "duration_s": "x"}
    )
    assert len(turn) == 6 and cands == [] and duration == 0.0 and hairpin is None
    report = build_report("id1", session, None, None, turn, cands, 1.0, alternate=True)
    assert report["source"] == "browser" and report["mapping"] == "endpoint-independent"
    assert report["nat_type"] == "unknown" and report["verdict"]["relay_working"] is True


def test_ipv6_is_reported_only_when_natkit_offered_it() -> None:
    core, session = _session("mapping")
    core.sockets["v6"] = Address("2001:db8::10", 40005)
    core.handle("p1", _check(session, priority=1), BROWSER, 0.0)
    assert build_report("i", session, None, None, [], [], 1.0, alternate=True,
                        ipv6_offered=True)["udp"]["ipv6"] is False  # fmt: skip
    core.handle("v6", _check(session, priority=2), Address("2001:db8::50", 5000), 0.0)
    report = build_report("i", session, None, None, [], [], 1.0, alternate=True, ipv6_offered=True)
    assert report["udp"]["ipv6"] is True and "[2001:db8::50]:5000" in report["public_addresses"]
    assert (
        build_report("i", session, None, None, [], [], 1.0, alternate=True)["udp"]["ipv6"] is None
    )
