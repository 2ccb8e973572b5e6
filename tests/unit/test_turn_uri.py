"""turn:/turns: URI parsing per RFC 7065 §3."""

from __future__ import annotations

import pytest

from natkit.turn.uri import TurnURI


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "transport"),
    [
        ("turn:example.org", "turn", "example.org", 3478, "udp"),
        ("turn:example.org:3479", "turn", "example.org", 3479, "udp"),
        ("turn:example.org?transport=tcp", "turn", "example.org", 3478, "tcp"),
        ("TURN:example.org:80?transport=TCP", "turn", "example.org", 80, "tcp"),
        ("turns:example.org", "turns", "example.org", 5349, "tcp"),
        ("turns:example.org:443?transport=tcp", "turns", "example.org", 443, "tcp"),
        ("turn:192.0.2.1:3478?transport=udp", "turn", "192.0.2.1", 3478, "udp"),
        ("turn:[2001:db8::1]", "turn", "2001:db8::1", 3478, "udp"),
        ("turn:[::1]:3479?transport=tcp", "turn", "::1", 3479, "tcp"),
    ],
)
def test_parse(text: str, scheme: str, host: str, port: int, transport: str) -> None:
    uri = TurnURI.parse(text)
    assert (uri.scheme, uri.host, uri.port, uri.transport) == (scheme, host, port, transport)
    assert uri.secure == (scheme == "turns")
    assert TurnURI.parse(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    [
        "stun:example.org",
        "http://example.org",
        "turn://example.org:3478",
        "turn:",
        "turn:example.org:99999",
        "turn:example.org:0",
        "turn:example.org?transport=sctp",
        "turn:example.org?foo=bar",
        "turns:example.org?transport=udp",  # DTLS
        "turn:2001:db8::1",  # IPv6 without brackets
        "turn:user@example.org",
        "turn:example.org/path",
        "turn:exa mple.org",
        "example.org",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        TurnURI.parse(text)


def test_str_and_with_transport() -> None:
    assert str(TurnURI.parse("turn:h:3478?transport=udp")) == "turn:h:3478"
    assert str(TurnURI.parse("turn:[::1]?transport=tcp")) == "turn:[::1]:3478?transport=tcp"
    assert TurnURI.parse("turns:h").with_transport() == "turns:h:5349?transport=tcp"
