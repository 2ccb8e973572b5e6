"""The Binding handler, sans-IO: a datagram and its 5-tuple in, what to send (and from where) out.

Theory of operation. `BindingHandler.handle(data, source, local, transport)` returns one
`Transmit` or None. The plain Binding request (20-byte header, optionally + FINGERPRINT) is 99% of
a public server's traffic, so it takes a fast path that never builds a `Message`; everything
else is parsed by `parse_message` and dispatched on the method through `self.methods` (the TURN
engine adds Allocate, Refresh, ... there). Requests only: indications, responses, malformed data,
unknown methods and anything from source port 0 get no answer.

RFC 5780 sockets. With `alternate` set the server listens on primary/alternate IP x primary/
alternate port; `local` (the concrete address of the receiving socket, never a wildcard) says
which one received the request. CHANGE-REQUEST picks the answering socket (`Transmit.source`) per
RFC 5780 §6.1 Table 1; OTHER-ADDRESS is always the diagonal (other IP, other port), which is also
RFC 3489's CHANGED-ADDRESS. Addresses in `Transmit.source` are `primary`/`alternate` with the IP
in canonical text form (`str(ipaddress.ip_address(host))`): key your sockets the same way.

Rules (RFC 8489 §6.3, RFC 5780 §7):
- success: XOR-MAPPED-ADDRESS, then RESPONSE-ORIGIN and OTHER-ADDRESS when `alternate` is set,
  SOFTWARE when non-empty, PADDING when asked, FINGERPRINT iff the request had one (a request
  whose FINGERPRINT does not match is not STUN: no answer). IPv4-mapped IPv6 sources
  (``::ffff:a.b.c.d`` on dual-stack sockets) are reported as IPv4.
- unknown comprehension-required attributes -> 420 with UNKNOWN-ATTRIBUTES. RESPONSE-ADDRESS
  (RFC 3489) counts as unknown: it would make the server a reflector.
- CHANGE-REQUEST without an alternate address (or on a socket that is not one of the four)
  -> 420 (RFC 5780 §7.2). Over TCP/TLS the answer must use the same connection, so a
  CHANGE-REQUEST with a flag set -> 420 as well (RFC 5780 §4: the tests are UDP only).
- PADDING together with RESPONSE-PORT -> 400 (RFC 5780 §7.2).
- RFC 3489 requests (no magic cookie) get RFC 3489 answers: MAPPED-ADDRESS, SOURCE-ADDRESS,
  CHANGED-ADDRESS, the 16-byte transaction id echoed, no SOFTWARE (classic clients such as
  pystun3 walk attributes without padding and break on a 6-byte value). CHANGED-ADDRESS is sent
  only when `alternate` is set: without one there is no true value, and a made-up one (our own
  address) makes pystun3 report a wrong NAT type instead of failing visibly.

RESPONSE-PORT policy (anti-reflection). The response may only go to the request's own source IP
(RESPONSE-PORT changes the port, never the address); the port must equal the source port, or be
>= 1024 and not one of `REFLECTION_PORTS` (SSDP, STUN/TURN, mDNS, WS-Discovery, CoAP,
memcached). Anything else, or RESPONSE-PORT over TCP/TLS, gets a 400 to the source itself.

Amplification bound (measured by tests/unit/test_stun_binding.py): the largest answer to the
smallest request, UDP payload bytes, SOFTWARE "natkit":
  IPv4, no alternate: 20 -> 44 bytes (2.2x); IPv4 with alternate: 20 -> 68 (3.4x; 2.8x with
  SOFTWARE empty); IPv6 with alternate: 20 -> 104 (5.2x); RFC 3489: 20 -> 56 (2.8x);
  a 420 for one empty unknown attribute: 24 -> 68 (2.8x).
PADDING is echoed at most at the request's own length, so it only lowers the ratio (coturn 4.6.1:
57x). SOFTWARE is capped at `MAX_SOFTWARE` bytes. Counting IPv4+UDP headers (28 bytes) the worst
IPv4 case is 96/48 = 2.0x.
"""

from __future__ import annotations

import binascii
import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from natkit.addr import Address, Transport
from natkit.net.routes import Limit, Link, Route, Transmit
from natkit.stun.attributes import KNOWN_TYPES, AttrValue, ChangeRequest, ErrorCode
from natkit.stun.constants import (
    ERROR_REASONS,
    FINGERPRINT_XOR,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    AttrType,
    MessageClass,
    Method,
    is_comprehension_required,
)
from natkit.stun.errors import StunDecodeError
from natkit.stun.message import Message, parse_message

__all__ = [
    "MAX_SOFTWARE",
    "REFLECTION_PORTS",
    "BindingHandler",
    "Request",
    "Transmit",
    "response_port_allowed",
]

MAX_SOFTWARE = 64  # bytes of UTF-8; keeps the amplification bound above
REFLECTION_PORTS = frozenset({1900, 3478, 3702, 5349, 5353, 5683, 11211})
# Comprehension-required types a Binding request may carry; RESPONSE-ADDRESS and PASSWORD
# (RFC 3489) are deliberately not understood.
BINDING_UNDERSTOOD = KNOWN_TYPES - {AttrType.RESPONSE_ADDRESS, AttrType.PASSWORD}

_PLAIN = b"\x00\x01\x00\x00" + MAGIC_COOKIE_BYTES  # Binding request, no attributes
_PLAIN_WITH_FP = b"\x00\x01\x00\x08" + MAGIC_COOKIE_BYTES
_FP_HEAD = b"\x80\x28\x00\x04"
_XMA4 = struct.Struct("!HHxBHI")  # XOR-MAPPED-ADDRESS TLV, IPv4
_XMA6 = struct.Struct("!HHxBH16s")
_FP = struct.Struct("!HHI")
_V4_MAPPED = bytes(10) + b"\xff\xff"


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request and its 5-tuple, as method handlers receive it."""

    message: Message
    source: Address
    local: Address
    transport: Transport


MethodHandler = Callable[[Request], "Transmit | None"]


def response_port_allowed(port: int, source_port: int) -> bool:
    """The RESPONSE-PORT policy (module docstring): own port, or unprivileged and not a
    well-known reflector's port."""
    return port == source_port or (port >= 1024 and port not in REFLECTION_PORTS)


def _canonical(host: str) -> str:
    """Text form of an IP for attributes: scope stripped, IPv4-mapped IPv6 shown as IPv4.

    Raises OSError for anything that is not an IP literal.
    """
    host = host.partition("%")[0]
    if ":" not in host:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, host))
    raw = socket.inet_pton(socket.AF_INET6, host)
    if raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return str(ipaddress.IPv6Address(raw))  # RFC 5952 text, as Python prints it


class BindingHandler:
    """Answers Binding requests (RFC 8489 §6.3, RFC 5780 §7, RFC 3489 §9)."""

    def __init__(
        self,
        *,
        primary: Address | None = None,
        alternate: Address | None = None,
        software: str = "natkit",
    ) -> None:
        sw = software.encode("utf-8")
        if len(sw) > MAX_SOFTWARE:
            raise ValueError(f"software must be at most {MAX_SOFTWARE} bytes of UTF-8")
        self._software = sw
        self._software_tlv = _tlv(AttrType.SOFTWARE, sw) if sw else b""
        self._ips: tuple[str, str] | None = None
        self._ports: tuple[int, int] = (0, 0)
        if alternate is not None:
            if primary is None:
                raise ValueError("an alternate address needs the primary address")
            try:
                ips = (_canonical(primary.host), _canonical(alternate.host))
            except OSError:
                raise ValueError("primary and alternate must be IP address literals") from None
            if ips[0] == ips[1] or primary.port == alternate.port:
                raise ValueError("alternate must differ from primary in both IP and port")
            if (":" in ips[0]) != (":" in ips[1]):
                raise ValueError("primary and alternate must be of the same IP family")
            self._ips, self._ports = ips, (primary.port, alternate.port)
        self._suffixes: dict[Address, bytes] = {}
        self.methods: dict[int, MethodHandler] = {Method.BINDING: self._binding}

    # -- entry point and fast path ---------------------------------------------------------

    def route(self) -> Route:
        """What the listeners need to know about Binding traffic: every message counts against
        the rate limit; plain IPv4 requests take the batched fast path."""
        return Route(
            self.handle,
            "binding handler",
            Limit.ALL,
            fast_v4=self.plain_response_v4,
            counted=True,
        )

    def handle(
        self,
        data: bytes,
        source: Address,
        local: Address,
        transport: Transport = Transport.UDP,
        link: Link | None = None,
    ) -> Transmit | None:
        """The answer to one datagram or frame (`link` unused: Binding answers go back at once)."""
        host, port = source
        if port == 0:
            return None
        size = len(data)
        if size == 20:
            if data[:8] == _PLAIN:
                return self._fast(data, host, port, source, local, False)
        elif size == 28 and data[:8] == _PLAIN_WITH_FP and data[20:24] == _FP_HEAD:
            if binascii.crc32(data[:20]) ^ FINGERPRINT_XOR != int.from_bytes(data[24:28], "big"):
                return None  # RFC 8489 §7.3: a bad FINGERPRINT means "not STUN"
            return self._fast(data, host, port, source, local, True)
        return self._slow(data, source, local, transport)

    def _fast(
        self, data: bytes, host: str, port: int, source: Address, local: Address, fp: bool
    ) -> Transmit | None:
        try:
            if ":" not in host:
                ip4 = int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
                xma = _XMA4.pack(0x0020, 8, 1, port ^ 0x2112, ip4 ^ MAGIC_COOKIE)
            else:
                xma = self._xma6(host, port, data[4:20])
        except (OSError, ValueError, struct.error):
            return None
        return Transmit(self._plain_response(data, xma, local, fp), source, local)

    def plain_response_v4(self, data: bytes, ip4: int, port: int, local: Address) -> bytes | None:
        """The answer to a plain Binding request from IPv4 `ip4`:`port`, or None when `data` is
        anything else (the caller then goes through `handle`). For batched I/O, which has the
        source as raw integers: no text address, no `Transmit`, same bytes as `handle`."""
        size = len(data)
        if size == 20:
            if data[:8] != _PLAIN or not port:
                return None
            fp = False
        elif size == 28 and data[:8] == _PLAIN_WITH_FP and data[20:24] == _FP_HEAD and port:
            if binascii.crc32(data[:20]) ^ FINGERPRINT_XOR != int.from_bytes(data[24:28], "big"):
                return None
            fp = True
        else:
            return None
        xma = _XMA4.pack(0x0020, 8, 1, port ^ 0x2112, ip4 ^ MAGIC_COOKIE)
        return self._plain_response(data, xma, local, fp)

    def _plain_response(self, data: bytes, xma: bytes, local: Address, fp: bool) -> bytes:
        suffix = self._suffixes.get(local)
        if suffix is None:
            suffix = self._suffix(local)
        length = len(xma) + len(suffix) + (8 if fp else 0)
        msg = b"\x01\x01" + length.to_bytes(2, "big") + data[4:20] + xma + suffix
        if fp:
            msg += _FP.pack(0x8028, 4, binascii.crc32(msg) ^ FINGERPRINT_XOR)
        return msg

    @staticmethod
    def _xma6(host: str, port: int, pad: bytes) -> bytes:
        raw = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        if raw[:12] == _V4_MAPPED:  # dual-stack socket, IPv4 client: report IPv4
            ip4 = int.from_bytes(raw[12:], "big")
            return _XMA4.pack(0x0020, 8, 1, port ^ 0x2112, ip4 ^ MAGIC_COOKIE)
        xored = (int.from_bytes(raw, "big") ^ int.from_bytes(pad, "big")).to_bytes(16, "big")
        return _XMA6.pack(0x0020, 20, 2, port ^ 0x2112, xored)

    def plain_suffix(self, local: Address) -> bytes:
        """What follows XOR-MAPPED-ADDRESS in the answer to a plain request received on `local`
        (the kernel fast path answers with the same bytes: `natkit.fastpath`)."""
        return self._suffix(local)

    def _suffix(self, local: Address) -> bytes:
        """RESPONSE-ORIGIN, OTHER-ADDRESS and SOFTWARE for a plain request received on `local`."""
        parts = []
        if self._ips is not None:
            where = self._where(local)
            origin = self._address(*where) if where else self._plain(local)
            parts.append(_address_tlv(AttrType.RESPONSE_ORIGIN, origin))
            if where:
                parts.append(_address_tlv(AttrType.OTHER_ADDRESS, self._address(*_flip(where))))
        suffix = b"".join(parts) + self._software_tlv
        if len(self._suffixes) < 64:  # locals are the server's own sockets: a handful
            self._suffixes[local] = suffix
        return suffix

    # -- RFC 5780 sockets ------------------------------------------------------------------

    def _where(self, local: Address) -> tuple[int, int] | None:
        """(ip index, port index) of `local` among the four sockets; None if not one of them."""
        if self._ips is None or local.port not in self._ports:
            return None
        try:
            host = _canonical(local.host)
        except OSError:
            return None
        if host in ("0.0.0.0", "::"):
            host = self._ips[0]  # a wildcard socket answers as the primary IP
        if host not in self._ips:
            return None
        return self._ips.index(host), self._ports.index(local.port)

    def _address(self, ip_index: int, port_index: int) -> Address:
        assert self._ips is not None
        return Address(self._ips[ip_index], self._ports[port_index])

    @staticmethod
    def _plain(address: Address) -> Address:
        try:
            return Address(_canonical(address.host), address.port)
        except OSError:
            return address

    # -- slow path -------------------------------------------------------------------------

    def _slow(
        self, data: bytes, source: Address, local: Address, transport: Transport
    ) -> Transmit | None:
        try:
            message = parse_message(data)
        except StunDecodeError:
            return None
        if message.message_class != MessageClass.REQUEST:
            return None  # never answer indications or responses (RFC 8489 §6.3)
        handler = self.methods.get(message.method)
        if handler is None:
            return None
        return handler(Request(message, source, local, transport))

    def _binding(self, req: Request) -> Transmit | None:
        msg, source, local = req.message, req.source, req.local
        try:
            peer = self._plain(source)
            _address_tlv(AttrType.MAPPED_ADDRESS, peer)
        except (OSError, ValueError, struct.error):
            return None
        unknown = tuple(
            dict.fromkeys(
                t
                for t, _ in msg.attributes
                if is_comprehension_required(t) and t not in BINDING_UNDERSTOOD
            )
        )
        if unknown:
            return self._error(req, 420, unknown=unknown)
        stream = req.transport is not Transport.UDP
        where = self._where(local)
        change = msg.get(AttrType.CHANGE_REQUEST)
        if isinstance(change, ChangeRequest):
            flagged = change.change_ip or change.change_port
            if where is None or (stream and flagged):
                return self._error(req, 420, unknown=(AttrType.CHANGE_REQUEST,))
            where = (where[0] ^ change.change_ip, where[1] ^ change.change_port)
        destination = source
        response_port = msg.get(AttrType.RESPONSE_PORT)
        padding = msg.get(AttrType.PADDING)
        if isinstance(response_port, int):
            if stream or padding is not None:
                return self._error(req, 400)
            if not response_port_allowed(response_port, source.port):
                return self._error(req, 400, reason="RESPONSE-PORT refused")
            destination = Address(source.host, response_port)
        origin = self._address(*where) if where else local
        attrs: list[tuple[int, AttrValue]]
        if msg.legacy:  # RFC 3489 §11.2.1
            attrs = [
                (AttrType.MAPPED_ADDRESS, peer),
                (AttrType.SOURCE_ADDRESS, self._plain(origin)),
            ]
            if where:
                attrs.append((AttrType.CHANGED_ADDRESS, self._address(*_flip(where))))
        else:
            attrs = [(AttrType.XOR_MAPPED_ADDRESS, peer)]
            if self._ips is not None:
                attrs.append((AttrType.RESPONSE_ORIGIN, self._plain(origin)))
                if where:
                    attrs.append((AttrType.OTHER_ADDRESS, self._address(*_flip(where))))
            if self._software:
                attrs.append((AttrType.SOFTWARE, self._software.decode()))
        if isinstance(padding, bytes):  # RFC 5780 §7.2, bounded by the request's own padding
            attrs.append((AttrType.PADDING, bytes(len(padding))))
        return self._reply(req, MessageClass.SUCCESS, attrs, destination, origin)

    def _error(
        self, req: Request, code: int, *, unknown: tuple[int, ...] = (), reason: str = ""
    ) -> Transmit | None:
        attrs: list[tuple[int, AttrValue]] = [
            (AttrType.ERROR_CODE, ErrorCode(code, reason or ERROR_REASONS[code]))
        ]
        if unknown:
            if req.message.legacy and len(unknown) % 2:  # RFC 3489 §11.2.9: repeat one
                unknown = (*unknown, unknown[-1])
            attrs.append((AttrType.UNKNOWN_ATTRIBUTES, unknown))
        if self._software and not req.message.legacy:
            attrs.append((AttrType.SOFTWARE, self._software.decode()))
        return self._reply(req, MessageClass.ERROR, attrs, req.source, req.local)

    @staticmethod
    def _reply(
        req: Request,
        cls: MessageClass,
        attrs: list[tuple[int, AttrValue]],
        destination: Address,
        origin: Address,
    ) -> Transmit:
        msg = req.message
        response = Message(msg.method, cls, msg.transaction_id, attrs)
        data = response.encode(fingerprint=AttrType.FINGERPRINT in msg)
        return Transmit(data, destination, origin)


def _flip(where: tuple[int, int]) -> tuple[int, int]:
    return where[0] ^ 1, where[1] ^ 1


def _tlv(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def _address_tlv(attr_type: int, address: Address) -> bytes:
    host = address.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.inet_pton(family, host)
    value = struct.pack("!xBH", 1 if family == socket.AF_INET else 2, address.port) + raw
    return _tlv(attr_type, value)
