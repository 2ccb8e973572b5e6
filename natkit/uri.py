"""STUN and TURN server URIs, pure parsing (RFC 7064, RFC 7065): the one parser for both.

The config loader, `natkit diagnose`, `natkit turn check` and the p2p test all parse server URIs
here, so a URI the config accepts is one every command accepts (and the other way round).

    stunURI   = "stun" ":" host [ ":" port ]              (RFC 7064 §3.1; stuns: is not probed)
    turnURI   = scheme ":" host [ ":" port ] [ "?transport=" transport ]
    scheme    = "turn" / "turns"
    transport = "udp" / "tcp" / transport-ext

TURN defaults (RFC 7065 §3): port 3478 for turn, 5349 for turns; transport udp for turn, tcp for
turns (``turns:…?transport=udp`` would be DTLS, which natkit's client does not speak). IPv6
literals go in brackets (RFC 3986 §3.2.2). There is no ``//``, user info or path. A bare
``HOST[:PORT]`` is accepted where a STUN server is wanted and means ``stun:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from natkit.addr import format_hostport, parse_hostport

__all__ = ["DEFAULT_PORTS", "STUN_PORT", "StunURI", "TurnURI"]

STUN_PORT = 3478

DEFAULT_PORTS = {"turn": 3478, "turns": 5349}

# RFC 3986 reg-name subset a DNS host can use, or an IPv6 literal in brackets.
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)$")


@dataclass(frozen=True, slots=True)
class StunURI:
    """A STUN server as given: ``stun:HOST[:PORT]`` or ``HOST[:PORT]`` (`text` keeps the input)."""

    text: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> StunURI:
        """Parse `text`; ValueError with a message fit for a user."""
        rest = text.strip()
        if rest.lower().startswith("stuns:"):
            raise ValueError(f"{text!r}: stuns: (STUN over TLS) is not probed; use stun:HOST:PORT")
        if rest.lower().startswith("stun:"):
            rest = rest[5:]
        if rest.startswith("//") or "/" in rest or "?" in rest:
            raise ValueError(f"{text!r} is not a STUN server (expected stun:HOST[:PORT])")
        host, port = parse_hostport(rest, default_port=STUN_PORT)
        if port == 0:
            raise ValueError(f"{text!r}: port 0 is not a server port")
        return cls(text, host, port)

    def __str__(self) -> str:
        return f"stun:{format_hostport(self.host, self.port)}"


@dataclass(frozen=True, slots=True)
class TurnURI:
    """A parsed TURN server URI."""

    scheme: Literal["turn", "turns"]
    host: str
    """Host name or IP literal, without brackets."""
    port: int
    transport: Literal["udp", "tcp"]

    @property
    def secure(self) -> bool:
        """TLS (turns:) — over TCP here."""
        return self.scheme == "turns"

    @classmethod
    def parse(cls, text: str) -> TurnURI:
        """Parse `text`; ValueError with a message fit for a user."""
        raw = text.strip()
        scheme_text, sep, rest = raw.partition(":")
        scheme = scheme_text.lower()
        if not sep or scheme not in DEFAULT_PORTS:
            raise ValueError(f"{text!r} is not a TURN URI (expected turn:HOST[:PORT] or turns:...)")
        if rest.startswith("//"):
            raise ValueError(f"{text!r}: TURN URIs have no '//' (RFC 7065): write {scheme}:HOST")
        hostport, qsep, query = rest.partition("?")
        transport = _transport(text, scheme, query if qsep else None)
        host, port = _hostport(text, hostport, DEFAULT_PORTS[scheme])
        return cls("turns" if scheme == "turns" else "turn", host, port, transport)

    def __str__(self) -> str:
        default = "tcp" if self.secure else "udp"
        query = "" if self.transport == default else f"?transport={self.transport}"
        return f"{self.scheme}:{format_hostport(self.host, self.port)}{query}"

    def with_transport(self) -> str:
        """The URI with ?transport= always spelt out (what iceServers lists usually carry)."""
        return f"{self.scheme}:{format_hostport(self.host, self.port)}?transport={self.transport}"


def _transport(text: str, scheme: str, query: str | None) -> Literal["udp", "tcp"]:
    if query is None:
        return "tcp" if scheme == "turns" else "udp"
    key, eq, value = query.partition("=")
    if key.lower() != "transport" or not eq or "&" in value:
        raise ValueError(f"{text!r}: the only query RFC 7065 defines is ?transport=udp|tcp")
    value = value.lower()
    if value == "tcp":
        return "tcp"
    if value == "udp":
        if scheme == "turns":
            raise ValueError(f"{text!r}: turns over udp (DTLS) is not supported; use transport=tcp")
        return "udp"
    raise ValueError(f"{text!r}: unknown transport {value!r} (expected udp or tcp)")


def _hostport(text: str, hostport: str, default_port: int) -> tuple[str, int]:
    if "@" in hostport or "/" in hostport:
        raise ValueError(f"{text!r}: a TURN URI has no user info or path (RFC 7065)")
    if hostport.count(":") > 1 and not hostport.startswith("["):
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. turn:[2001:db8::1]")
    try:
        host, port = parse_hostport(hostport, default_port=default_port)
    except ValueError as err:
        raise ValueError(f"{text!r}: {err}") from None
    host_text = f"[{host}]" if ":" in host else host
    if not _HOST_RE.match(host_text):
        raise ValueError(f"{text!r}: {host!r} is not a host name or IP address")
    if port == 0:
        raise ValueError(f"{text!r}: port 0 is not a server port")
    return host, port
