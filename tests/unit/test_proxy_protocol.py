"""PROXY protocol v2 (haproxy doc/proxy-protocol.txt §2.2), sans-IO: the parser, who must send a
header, and the effective client. Headers are built byte by byte here (not only with
`encode_header`), so a parser and encoder sharing one mistake cannot pass; the CRC32C is
checked against google-crc32c (aiortc's dependency), code natkit did not write."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natkit.addr import Address
from natkit.config.model import StunConfig
from natkit.net.proxy_protocol import (
    MAX_HEADER_SIZE,
    SIGNATURE,
    Command,
    Family,
    ProxyHeader,
    ProxyRefused,
    TlvType,
    client_address,
    crc32c,
    encode_header,
    header_required,
    parse_header,
)

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")
STUN = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + bytes(12)  # a Binding request
LB = Address("10.0.0.5", 40000)
# version 2 | PROXY, TCP over IPv4, 12 address bytes: 192.0.2.7:4242 -> 10.0.0.1:3478
TCP4 = bytes.fromhex("2111000cc00002070a000001") + struct.pack("!HH", 4242, 3478)


def test_signature_is_the_spec_s() -> None:
    assert SIGNATURE == SIG == b"\r\n\r\n\x00\r\nQUIT\n"


def test_tcp4_header_from_the_spec_layout() -> None:
    header = parse_header(SIG + TCP4 + STUN)
    assert header == ProxyHeader(
        Command.PROXY,
        Family.TCP4,
        Address("192.0.2.7", 4242),
        Address("10.0.0.1", 3478),
        28,
    )
    assert (SIG + TCP4 + STUN)[header.length :] == STUN


def test_haproxy_capture() -> None:
    # haproxy send-proxy-v2, as captured on the wire (172.19.0.1:42578 -> 172.19.0.3:80).
    wire = bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050")
    header = parse_header(wire + b"GET /")
    assert header is not None
    assert (header.source, header.destination) == (
        Address("172.19.0.1", 42578),
        Address("172.19.0.3", 80),
    )


def test_tcp6_header() -> None:
    src, dst = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes(15) + b"\x01"
    wire = SIG + bytes.fromhex("21210024") + src + dst + struct.pack("!HH", 5000, 3478)
    header = parse_header(wire)
    assert header is not None and header.family is Family.TCP6
    assert header.source == Address("2001:db8::1", 5000)
    assert header.destination == Address("::1", 3478)


def test_udp_and_unix_families_parse_but_announce_no_tcp_client() -> None:
    udp = parse_header(SIG + b"\x21\x12" + TCP4[2:])
    assert udp is not None and udp.family is Family.UDP4
    unix = parse_header(SIG + b"\x21\x31\x00\xd8" + bytes(216))
    assert unix is not None and unix.family is Family.UNIX_STREAM and unix.source is None
    for header in (udp, unix):
        with pytest.raises(ProxyRefused, match="not a TCP client"):
            client_address(header, LB)


def test_local_means_the_real_connection_address() -> None:
    # §2.2: LOCAL's block (even a non-empty one, any family) is discarded.
    for wire in (SIG + b"\x20\x00\x00\x00", SIG + b"\x20\x11" + TCP4[2:]):
        header = parse_header(wire + STUN)
        assert header is not None and header.command is Command.LOCAL
        assert header.source is None and header.length == len(wire)
        assert client_address(header, LB) == LB


def test_proxy_unspec_is_refused_not_charged_to_the_balancer() -> None:
    header = parse_header(SIG + b"\x21\x00\x00\x00")
    assert header is not None and header.family is Family.UNSPEC
    with pytest.raises(ProxyRefused, match="UNSPEC"):
        client_address(header, LB)


def test_ipv4_mapped_source_is_the_ipv4_address() -> None:
    mapped = bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 9])
    wire = SIG + bytes.fromhex("21210024") + mapped + bytes(16) + struct.pack("!HH", 7, 3478)
    header = parse_header(wire)
    assert header is not None
    assert client_address(header, LB) == Address("198.51.100.9", 7)


@pytest.mark.parametrize("cut", range(len(SIG) + len(TCP4)))
def test_every_truncation_asks_for_more(cut: int) -> None:
    assert parse_header((SIG + TCP4)[:cut]) is None


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (STUN, "no PROXY protocol v2 header"),
        (b"\r\n\r\n\x00\r\nQUIX\n", "no PROXY protocol v2 header"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 3478\r\n", "v1 \\(text\\).*send-proxy-v2"),
        (SIG + b"\x11\x11" + TCP4[2:], "version 1, expected 2"),
        (SIG + b"\x22\x11" + TCP4[2:], "command 0x2"),
        (SIG + b"\x21\x41" + TCP4[2:], "family/protocol 0x41"),
        (SIG + b"\x21\x13" + TCP4[2:], "family/protocol 0x13"),
        (SIG + b"\x21\x11\x00\x0b" + TCP4[4:15], "shorter than the TCP4 address block"),
        (SIG + b"\x21\x21" + TCP4[2:], "shorter than the TCP6 address block"),
        (SIG + b"\x21\x11\x04\x00", "of 1040 bytes exceeds the 1024-byte limit"),
        (SIG + b"\x21\x11\x00\x0e" + TCP4[4:] + b"\x04\x00", "ends inside a TLV header"),
        (SIG + b"\x21\x11\x00\x10" + TCP4[4:] + b"\x04\x00\x02\x00", "overruns the header"),
    ],
)
def test_refusals_say_why_in_one_line(wire: bytes, reason: str) -> None:
    with pytest.raises(ProxyRefused, match=reason) as info:
        parse_header(wire)
    assert "\n" not in str(info.value)


def test_refusal_comes_as_soon_as_the_bytes_rule_a_header_out() -> None:
    with pytest.raises(ProxyRefused) as info:
        parse_header(STUN[:1])  # a client that sent STUN is told at once
    assert info.value.kind == "proxy_missing"
    with pytest.raises(ProxyRefused, match="exceeds"):
        parse_header(SIG + b"\x21\x11\xff\xff")  # before 64 KiB were buffered
    assert parse_header(b"PROX") is None  # could still be v1: its refusal names v1


def test_header_size_limit_is_inclusive() -> None:
    pad = MAX_HEADER_SIZE - 16 - 12 - 3
    at_limit = encode_header(Address("192.0.2.7", 1), LB, tlvs=[(TlvType.NOOP, bytes(pad))])
    assert len(at_limit) == MAX_HEADER_SIZE and parse_header(at_limit) is not None
    over = encode_header(Address("192.0.2.7", 1), LB, tlvs=[(TlvType.NOOP, bytes(pad + 1))])
    with pytest.raises(ProxyRefused, match="limit"):
        parse_header(over)


def test_crc32c_matches_the_reference_implementation() -> None:
    google_crc32c = pytest.importorskip("google_crc32c")
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = random.Random(7)
    for size in (0, 1, 3, 64, 1000):
        data = rng.randbytes(size)
        assert crc32c(data) == google_crc32c.value(data)


def _with_crc(body: bytes) -> bytes:
    """SIG + TCP4 address block + `body` TLVs + a CRC32C TLV, checksummed by hand (§2.2.3)."""
    length = 12 + len(body) + 7
    head = SIG + b"\x21\x11" + length.to_bytes(2) + TCP4[4:] + body + b"\x03\x00\x04"
    return head + crc32c(head + bytes(4)).to_bytes(4)


def test_crc32c_tlv_is_verified() -> None:
    good = _with_crc(b"\x02\x00\x0bexample.org")
    header = parse_header(good)
    assert header is not None
    assert header.tlvs == ((TlvType.AUTHORITY, b"example.org"), (TlvType.CRC32C, good[-4:]))
    assert encode_header(header.source, header.destination, checksum=True) == _with_crc(b"")
    for i in (17, 33, len(good) - 1):  # in the address, in a TLV, in the checksum
        bad = bytearray(good)
        bad[i] ^= 0x01
        with pytest.raises(ProxyRefused):
            parse_header(bytes(bad))


def test_crc32c_tlv_must_be_four_bytes_and_once() -> None:
    with pytest.raises(ProxyRefused, match="CRC32C TLV must appear once"):
        parse_header(SIG + b"\x21\x11\x00\x11" + TCP4[4:] + b"\x03\x00\x02\x00\x00")
    twice = _with_crc(b"\x03\x00\x04" + bytes(4))
    with pytest.raises(ProxyRefused, match="CRC32C"):
        parse_header(twice)


def test_other_tlvs_are_skipped_and_bounded() -> None:
    custom = encode_header(LB, LB, tlvs=[(0xEA, b"vpce-0123"), (TlvType.NOOP, b"")])
    header = parse_header(custom + STUN)
    assert header is not None and header.tlvs == ((0xEA, b"vpce-0123"), (TlvType.NOOP, b""))
    with pytest.raises(ProxyRefused, match="AUTHORITY TLV of 256 bytes"):
        parse_header(encode_header(LB, LB, tlvs=[(TlvType.AUTHORITY, bytes(256))]))
    with pytest.raises(ProxyRefused, match="UNIQUE_ID TLV of 129 bytes"):
        parse_header(encode_header(LB, LB, tlvs=[(TlvType.UNIQUE_ID, bytes(129))]))


def test_encode_refuses_what_cannot_be_a_header() -> None:
    with pytest.raises(ValueError, match="both"):
        encode_header(LB, None)
    with pytest.raises(ValueError, match="one address family"):
        encode_header(LB, Address("::1", 1))
    assert encode_header(None, None) == SIG + b"\x20\x00\x00\x00"


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_the_module_s_error(data: bytes) -> None:
    for wire in (data, SIG + data, SIG + b"\x21" + data, SIG + b"\x21\x11" + data):
        with contextlib.suppress(ProxyRefused):
            parse_header(wire)


@given(st.data())
def test_mutated_valid_headers_raise_only_the_module_s_error(data: st.DataObject) -> None:
    good = bytearray(_with_crc(b"\x01\x00\x02h2\x05\x00\x03abc"))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(good)))
    try:
        header = parse_header(bytes(good[:cut]))
    except ProxyRefused:
        return
    if header is not None:
        assert 16 <= header.length <= cut
        with contextlib.suppress(ProxyRefused):
            client_address(header, LB)


def _stun(trusted: tuple[str, ...], proxy: bool = True) -> StunConfig:
    return StunConfig(proxy_protocol=proxy, proxy_trusted=trusted)


def test_header_required_only_from_trusted_sources() -> None:
    stun = _stun(("10.0.0.0/24", "2001:db8::7"))
    assert header_required(LB, stun)
    assert header_required(Address("::ffff:10.0.0.9", 1), stun)  # a dual-stack listener's view
    assert header_required(Address("2001:db8::7", 1), stun)
    assert not header_required(Address("10.0.1.5", 1), stun)
    assert not header_required(Address("2001:db8::8", 1), stun)
    assert not header_required(LB, _stun(("10.0.0.0/24",), proxy=False))
