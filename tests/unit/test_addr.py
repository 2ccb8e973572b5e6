"""natkit.addr: host:port splitting, listen URIs, addresses."""

from __future__ import annotations

import pytest

from natkit.addr import Address, ListenURI, Transport, format_hostport, parse_hostport


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.10:3478", ("203.0.113.10", 3478)),
        ("  203.0.113.10:3478 ", ("203.0.113.10", 3478)),
        ("[2001:db8::1]:5349", ("2001:db8::1", 5349)),
        ("[::]:0", ("::", 0)),
        ("stun.example.org:65535", ("stun.example.org", 65535)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.10", ("203.0.113.10", 3478)),
        ("[2001:db8::1]", ("2001:db8::1", 3478)),
        ("2001:db8::1", ("2001:db8::1", 3478)),  # bare IPv6 literal: no port
        ("example.org", ("example.org", 3478)),
        ("example.org:80", ("example.org", 80)),
    ],
)
def test_parse_hostport_default_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, default_port=3478) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty address"),
        ("   ", "empty address"),
        ("203.0.113.10", "missing port in '203.0.113.10'"),
        ("[2001:db8::1", "unclosed '\\[' in"),
        ("[2001:db8::1]x", "unexpected 'x' after"),
        ("[]:3478", "missing host"),
        (":3478", "missing host"),
        ("h:65536", "port '65536' in 'h:65536' is not a number from 0 to 65535"),
        ("h:-1", "port '-1'"),
        ("h:+1", "port '\\+1'"),
        ("h:http", "port 'http'"),
        ("h: 1", "port ' 1'"),
        ("h:\u0663", "port"),  # ARABIC-INDIC DIGIT THREE: str.isdigit() is True, int() reads 3
    ],
)
def test_parse_hostport_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hostport(text)


def test_format_hostport_brackets_ipv6_only() -> None:
    assert format_hostport("203.0.113.10", 3478) == "203.0.113.10:3478"
    assert format_hostport("2001:db8::1", 3478) == "[2001:db8::1]:3478"
    assert format_hostport("example.org", 1) == "example.org:1"


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("udp://0.0.0.0:3478", ListenURI(Transport.UDP, "0.0.0.0", 3478), "udp://0.0.0.0:3478"),
        ("tcp://[::]:3478", ListenURI(Transport.TCP, "::", 3478), "tcp://[::]:3478"),
        ("tls://127.0.0.1:443", ListenURI(Transport.TLS, "127.0.0.1", 443), "tls://127.0.0.1:443"),
        ("UDP://[::1]:1", ListenURI(Transport.UDP, "::1", 1), "udp://[::1]:1"),
        ("udp://0.0.0.0", ListenURI(Transport.UDP, "0.0.0.0", 3478), "udp://0.0.0.0:3478"),
        ("tcp://[::1]", ListenURI(Transport.TCP, "::1", 3478), "tcp://[::1]:3478"),
        # RFC 7065 §3: 5349 is the default port of STUN/TURN over TLS.
        ("tls://0.0.0.0", ListenURI(Transport.TLS, "0.0.0.0", 5349), "tls://0.0.0.0:5349"),
        ("udp://127.0.0.1:0", ListenURI(Transport.UDP, "127.0.0.1", 0), "udp://127.0.0.1:0"),
    ],
)
def test_listen_uri_parse(text: str, expected: ListenURI, canonical: str) -> None:
    uri = ListenURI.parse(text)
    assert uri == expected
    assert str(uri) == canonical
    assert ListenURI.parse(str(uri)) == uri


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0.0.0:3478", "is not a listen URI"),
        ("", "is not a listen URI"),
        ("http://0.0.0.0:80", "unknown transport 'http'"),
        ("dtls://0.0.0.0:80", "unknown transport 'dtls'"),
        (
            "udp://localhost:3478",
            "'localhost' in 'udp://localhost:3478' is not an IP address literal",
        ),
        ("udp://::1:3478", "brackets"),
        ("udp://[::1:3478", "unclosed"),
        ("udp://[::1]:99999", "port '99999'"),
        ("udp://0.0.0.0:3478/path", "port '3478/path'"),
        ("udp://:3478", "missing host"),
        ("udp://300.0.0.1:3478", "not an IP address literal"),
    ],
)
def test_listen_uri_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ListenURI.parse(text)


def test_listen_uri_family_and_address() -> None:
    v4, v6 = ListenURI.parse("udp://0.0.0.0:3478"), ListenURI.parse("tcp://[::]:3479")
    assert (v4.family, v6.family) == (4, 6)
    assert v4.address == Address("0.0.0.0", 3478)
    assert v6.address == ("::", 3479)


def test_address() -> None:
    v4, v6 = Address("203.0.113.10", 3478), Address("2001:db8::1", 5349)
    assert (v4.family, v6.family) == (4, 6)
    assert str(v4) == "203.0.113.10:3478"
    assert str(v6) == "[2001:db8::1]:5349"
    assert v4 == ("203.0.113.10", 3478)  # a plain tuple to sockets
    assert v4.ip.version == 4


def test_transport_values() -> None:
    assert [t.value for t in Transport] == ["udp", "tcp", "tls"]
    assert Transport("tls") is Transport.TLS
