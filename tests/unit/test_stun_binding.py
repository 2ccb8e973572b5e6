"""BindingHandler rules: RFC 8489 §6.3, RFC 5780 §6.1/§7, RFC 3489, abuse bounds."""

from __future__ import annotations

import os

import pytest

from natkit.addr import Address, Transport
from natkit.stun import (
    AttrType,
    AttrValue,
    BindingHandler,
    ChangeRequest,
    ErrorCode,
    Message,
    MessageClass,
    Method,
    Transmit,
    parse_message,
    response_port_allowed,
)

PIP, AIP, PP, AP = "203.0.113.10", "203.0.113.11", 3478, 3479
PRIMARY, ALTERNATE = Address(PIP, PP), Address(AIP, AP)
CLIENT = Address("198.51.100.7", 40000)
SOCKETS = [Address(ip, port) for ip in (PIP, AIP) for port in (PP, AP)]


def rfc5780() -> BindingHandler:
    return BindingHandler(primary=PRIMARY, alternate=ALTERNATE)


def request(*attrs: tuple[int, AttrValue], fp: bool = False, legacy: bool = False) -> bytes:
    tid = os.urandom(16 if legacy else 12)
    return Message(Method.BINDING, MessageClass.REQUEST, tid, list(attrs)).encode(fingerprint=fp)


def answer(
    handler: BindingHandler, data: bytes, local: Address = PRIMARY, **kw: object
) -> tuple[Transmit, Message]:
    out = handler.handle(data, kw.pop("source", CLIENT), local, **kw)  # type: ignore[arg-type]
    assert out is not None
    return out, parse_message(out.data)


def test_plain_request_without_alternate() -> None:
    data = request()
    out, msg = answer(BindingHandler(), data)
    assert (out.destination, out.source) == (CLIENT, PRIMARY)
    assert msg.message_class == MessageClass.SUCCESS
    assert msg.transaction_id == data[8:20]
    assert [t for t, _ in msg.attributes] == [AttrType.XOR_MAPPED_ADDRESS, AttrType.SOFTWARE]
    assert msg.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT
    assert msg.get(AttrType.SOFTWARE) == "natkit"


def test_empty_software_is_omitted() -> None:
    _, msg = answer(BindingHandler(software=""), request())
    assert AttrType.SOFTWARE not in msg


@pytest.mark.parametrize("local", SOCKETS)
def test_response_origin_and_other_address_are_the_diagonal(local: Address) -> None:
    out, msg = answer(rfc5780(), request(), local)
    assert out.source == local
    assert msg.get(AttrType.RESPONSE_ORIGIN) == local
    other = Address(AIP if local.host == PIP else PIP, AP if local.port == PP else PP)
    assert msg.get(AttrType.OTHER_ADDRESS) == other


@pytest.mark.parametrize("local", SOCKETS)
@pytest.mark.parametrize("change_ip", [False, True])
@pytest.mark.parametrize("change_port", [False, True])
def test_change_request_routing(local: Address, change_ip: bool, change_port: bool) -> None:
    """RFC 5780 §6.1 Table 1 over all four sockets."""
    data = request((AttrType.CHANGE_REQUEST, ChangeRequest(change_ip, change_port)))
    out, msg = answer(rfc5780(), data, local)
    ip = (AIP if local.host == PIP else PIP) if change_ip else local.host
    port = (AP if local.port == PP else PP) if change_port else local.port
    assert out.source == Address(ip, port)
    assert out.destination == CLIENT
    assert msg.get(AttrType.RESPONSE_ORIGIN) == out.source
    assert msg.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT


def test_change_request_without_alternate_is_420() -> None:
    out, msg = answer(BindingHandler(), request((AttrType.CHANGE_REQUEST, ChangeRequest())))
    assert msg.message_class == MessageClass.ERROR
    assert msg.get(AttrType.ERROR_CODE) == ErrorCode(420, "Unknown Attribute")
    assert msg.get(AttrType.UNKNOWN_ATTRIBUTES) == (AttrType.CHANGE_REQUEST,)
    assert out.source == PRIMARY


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_change_request_over_streams(transport: Transport) -> None:
    flagged = request((AttrType.CHANGE_REQUEST, ChangeRequest(True, False)))
    _, msg = answer(rfc5780(), flagged, transport=transport)
    assert msg.get(AttrType.ERROR_CODE) == ErrorCode(420, "Unknown Attribute")
    out, msg = answer(rfc5780(), request((AttrType.CHANGE_REQUEST, ChangeRequest())),
                      transport=transport)  # fmt: skip
    assert msg.message_class == MessageClass.SUCCESS and out.source == PRIMARY


def test_unknown_comprehension_required_is_420_optional_ignored() -> None:
    data = request((0x7F01, b"x"), (0xC001, b"y"), (0x7F01, b"z"), (0x0002, CLIENT))
    _, msg = answer(BindingHandler(), data)
    assert msg.get(AttrType.ERROR_CODE) == ErrorCode(420, "Unknown Attribute")
    assert msg.get(AttrType.UNKNOWN_ATTRIBUTES) == (0x7F01, AttrType.RESPONSE_ADDRESS)
    _, ok = answer(BindingHandler(), request((0xC001, b"y")))
    assert ok.message_class == MessageClass.SUCCESS


def test_response_port_policy() -> None:
    assert response_port_allowed(40000, 40000) and response_port_allowed(53, 53)
    assert response_port_allowed(50000, 40000)
    assert not response_port_allowed(53, 40000)
    assert not response_port_allowed(0, 40000)
    assert not response_port_allowed(1900, 40000)  # SSDP
    assert not response_port_allowed(11211, 40000)  # memcached


def test_response_port_honoured_to_source_ip_only() -> None:
    out, msg = answer(rfc5780(), request((AttrType.RESPONSE_PORT, 50000)))
    assert out.destination == Address(CLIENT.host, 50000)
    assert msg.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT


@pytest.mark.parametrize("port", [53, 123, 1900, 0])
def test_response_port_refused_is_400_to_source(port: int) -> None:
    out, msg = answer(rfc5780(), request((AttrType.RESPONSE_PORT, port)))
    assert out.destination == CLIENT
    assert msg.get(AttrType.ERROR_CODE) == ErrorCode(400, "RESPONSE-PORT refused")


def test_response_port_with_padding_or_over_tcp_is_400() -> None:
    both = request((AttrType.RESPONSE_PORT, 50000), (AttrType.PADDING, bytes(8)))
    assert answer(rfc5780(), both)[1].get(AttrType.ERROR_CODE) == ErrorCode(400, "Bad Request")
    tcp = answer(rfc5780(), request((AttrType.RESPONSE_PORT, 50000)), transport=Transport.TCP)
    assert tcp[1].get(AttrType.ERROR_CODE) == ErrorCode(400, "Bad Request")


@pytest.mark.parametrize("size", [0, 4, 100, 1000])
def test_padding_never_exceeds_request_padding(size: int) -> None:
    data = request((AttrType.PADDING, os.urandom(size)))
    out, msg = answer(rfc5780(), data)
    assert msg.get(AttrType.PADDING) == bytes(size)
    assert len(out.data) <= len(data) + 48


def test_fingerprint_iff_request_had_one() -> None:
    _, msg = answer(BindingHandler(), request(fp=True))
    assert msg.attributes[-1][0] == AttrType.FINGERPRINT
    _, msg = answer(BindingHandler(), request())
    assert AttrType.FINGERPRINT not in msg
    bad = bytearray(request(fp=True))
    bad[-1] ^= 1
    assert BindingHandler().handle(bytes(bad), CLIENT, PRIMARY) is None
    slow = bytearray(request((AttrType.PRIORITY, 5), fp=True))
    slow[-1] ^= 1
    assert BindingHandler().handle(bytes(slow), CLIENT, PRIMARY) is None


def test_legacy_request_gets_rfc3489_answer() -> None:
    data = request(legacy=True)
    out, msg = answer(rfc5780(), data)
    assert msg.legacy and out.data[4:20] == data[4:20]
    assert [t for t, _ in msg.attributes] == [
        AttrType.MAPPED_ADDRESS, AttrType.SOURCE_ADDRESS, AttrType.CHANGED_ADDRESS
    ]  # fmt: skip
    assert msg.get(AttrType.MAPPED_ADDRESS) == CLIENT
    assert msg.get(AttrType.SOURCE_ADDRESS) == PRIMARY
    assert msg.get(AttrType.CHANGED_ADDRESS) == ALTERNATE
    changed = request((AttrType.CHANGE_REQUEST, ChangeRequest(True, True)), legacy=True)
    out, msg = answer(rfc5780(), changed)
    assert out.source == ALTERNATE and msg.get(AttrType.SOURCE_ADDRESS) == ALTERNATE


def test_legacy_without_alternate_has_no_changed_address() -> None:
    _, msg = answer(BindingHandler(), request(legacy=True))
    assert [t for t, _ in msg.attributes] == [AttrType.MAPPED_ADDRESS, AttrType.SOURCE_ADDRESS]


@pytest.mark.parametrize("cls", [MessageClass.INDICATION, MessageClass.SUCCESS, MessageClass.ERROR])
def test_no_answer_to_indications_and_responses(cls: MessageClass) -> None:
    data = Message(Method.BINDING, cls, os.urandom(12)).encode()
    assert rfc5780().handle(data, CLIENT, PRIMARY) is None


def test_no_answer_to_other_methods_port_zero_or_garbage() -> None:
    allocate = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12)).encode()
    assert rfc5780().handle(allocate, CLIENT, PRIMARY) is None
    assert rfc5780().handle(request(), Address(CLIENT.host, 0), PRIMARY) is None
    assert rfc5780().handle(b"\x00\x01\x00\x04" + bytes(16), CLIENT, PRIMARY) is None
    assert rfc5780().handle(b"", CLIENT, PRIMARY) is None


def test_method_dispatch_is_extensible() -> None:
    handler = rfc5780()
    handler.methods[Method.ALLOCATE] = lambda req: Transmit(b"ok", req.source, req.local)
    allocate = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12)).encode()
    assert handler.handle(allocate, CLIENT, PRIMARY) == Transmit(b"ok", CLIENT, PRIMARY)


@pytest.mark.parametrize("fp", [False, True])
@pytest.mark.parametrize("source", [CLIENT, Address("2001:db8::7", 5000)])
def test_fast_path_equals_slow_path(fp: bool, source: Address) -> None:
    handler = rfc5780()
    data = request(fp=fp)
    fast = handler.handle(data, source, PRIMARY)
    slow = handler._slow(data, source, PRIMARY, Transport.UDP)
    assert fast == slow and fast is not None


def test_ipv4_mapped_source_reported_as_ipv4() -> None:
    mapped = Address("::ffff:198.51.100.7", 40000)
    for data in (request(), request((AttrType.PRIORITY, 1))):
        out, msg = answer(BindingHandler(), data, source=mapped)
        assert msg.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT
        assert out.destination == mapped


def test_amplification_bounds() -> None:
    """The numbers stated in natkit/stun/binding.py's docstring."""
    v6 = Address("2001:db8::7", 5000)
    v6_server = BindingHandler(primary=Address("2001:db8::10", PP),
                               alternate=Address("2001:db8::11", AP))  # fmt: skip
    cases = [
        (BindingHandler(), request(), CLIENT, PRIMARY, 44),
        (rfc5780(), request(), CLIENT, PRIMARY, 68),
        (BindingHandler(primary=PRIMARY, alternate=ALTERNATE, software=""), request(), CLIENT,
         PRIMARY, 56),
        (v6_server, request(), v6, Address("2001:db8::10", PP), 104),
        (rfc5780(), request(legacy=True), CLIENT, PRIMARY, 56),
        (rfc5780(), request((0x7F01, b"")), CLIENT, PRIMARY, 68),
    ]  # fmt: skip
    for handler, data, source, local, size in cases:
        out = handler.handle(data, source, local)
        assert out is not None and len(out.data) == size, (len(data), out)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        BindingHandler(alternate=ALTERNATE)
    with pytest.raises(ValueError):
        BindingHandler(primary=PRIMARY, alternate=Address(AIP, PP))
    with pytest.raises(ValueError):
        BindingHandler(software="x" * 65)
