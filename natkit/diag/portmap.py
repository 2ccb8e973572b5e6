"""Which port-mapping protocols the gateway offers, and (asked for) a mapping that proves it.

Detection leaves nothing behind: PCP ANNOUNCE (RFC 6887 §14.1) and the NAT-PMP external-address
request (RFC 6886 §3.2, opcode 0) to the default route's gateway on UDP 5351, and an SSDP M-SEARCH
for an Internet Gateway Device sent out of the interface that faces the gateway (multicast TTL 2,
so it stays on the LAN). All three run at once within DETECT_TIMEOUT (250 ms, as Tailscale's
portmapper: the gateway is one hop away on the LAN, so a service that is there answers at once),
asking again every RETRY; a gateway outside the private ranges is not asked at all (it is no
home router).

`map_port` asks for a UDP mapping of a fresh socket, PCP first, then NAT-PMP, then UPnP, with a
short lifetime, and checks from the STUN server that the mapped port is reachable: a Binding
request sent from a *different* socket carries RESPONSE-PORT (RFC 5780 §7.5) = the mapped port,
so the server's answer arrives unsolicited at (public IP, mapped port) — on a symmetric NAT only
a real mapping lets it in. The mapping is deleted (lifetime 0) in a `finally`, so also on
Ctrl-C; the deletion is synchronous so a cancelled event loop cannot skip it, and a Ctrl-C that
lands while the request is out waits for its answer to delete what the gateway made
(`Mapper.make`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import os
import socket
import struct
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from natkit.addr import Address
from natkit.portmap import natpmp, pcp, upnp

__all__ = [
    "DETECT_TIMEOUT",
    "PROTOCOL_NAMES",
    "MappedPort",
    "Mapper",
    "PortMappingProbe",
    "default_gateway",
    "detect",
    "map_port",
]

DETECT_TIMEOUT = 0.25
RETRY = 0.08
# An external address in these ranges belongs to another NAT's inside (RFC 1918, RFC 6598).
# Not `is_private`: that also covers the documentation ranges the lab's internet uses.
_INSIDE = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
Protocol = Literal["pcp", "natpmp", "upnp"]
PROTOCOL_NAMES: dict[str, str] = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP-IGD"}


@dataclass
class MappedPort:
    """A mapping made by `map_port` (and removed again)."""

    protocol: Protocol
    internal: Address
    external: Address | None = None
    lifetime: int = 0
    reachable: bool | None = None
    """The STUN server's unsolicited answer reached the mapped port (None: not tested)."""
    evidence: str = ""
    deleted: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "internal_address": str(self.internal),
            "external_address": None if self.external is None else str(self.external),
            "lifetime_s": self.lifetime,
            "reachable": self.reachable,
            "evidence": self.evidence,
            "deleted": self.deleted,
            "error": self.error,
        }


@dataclass
class PortMappingProbe:
    """What the gateway answered."""

    gateway: str | None = None
    local: str | None = None
    """This host's address towards the gateway (PCP's client address)."""
    upnp: bool | None = None
    natpmp: bool | None = None
    pcp: bool | None = None
    external_address: str | None = None
    upnp_location: str | None = None
    upnp_server: str | None = None
    notes: list[str] = field(default_factory=list)
    mapped: MappedPort | None = None

    @property
    def offered(self) -> list[Protocol]:
        """The protocols that answered, in the order `map_port` prefers them."""
        return [p for p in ("pcp", "natpmp", "upnp") if getattr(self, p)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "upnp": self.upnp,
            "natpmp": self.natpmp,
            "pcp": self.pcp,
            "external_address": self.external_address,
            "upnp_location": self.upnp_location,
            "upnp_server": self.upnp_server,
            "notes": list(self.notes),
            "mapped": self.mapped.to_dict() if self.mapped else None,
        }


def default_gateway() -> str | None:
    """The IPv4 default route's gateway, from this thread's namespace's routing table."""
    for path in ("/proc/thread-self/net/route", "/proc/net/route"):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 7 and cols[1] == "00000000" and cols[7] == "00000000":
                    gw = int(cols[2], 16)
                    if gw:
                        return str(ipaddress.IPv4Address(struct.pack("<I", gw)))
            return None
    return None


def _local_towards(gateway: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((gateway, natpmp.PORT))  # no packet: only picks the route and source
        except OSError:
            return None
        return str(s.getsockname()[0])


async def _ask(
    sock: socket.socket, request: bytes, dest: tuple[str, int], timeout: float
) -> bytes | None:
    """Send `request` every RETRY s until an answer from `dest` or the deadline. The socket is
    connected, so the kernel keeps out strangers and reports the gateway's ICMP port
    unreachable (nothing listens: the protocol is not offered, no need to wait)."""
    loop = asyncio.get_running_loop()
    sock.connect(dest)
    deadline = time.monotonic() + timeout  # from now: the loop may have been busy before
    while (left := deadline - time.monotonic()) > 0:
        try:
            sock.send(request)
            return await asyncio.wait_for(loop.sock_recv(sock, 2048), min(RETRY, left))
        except TimeoutError:
            continue
        except ConnectionRefusedError:
            return None
        except OSError:
            await asyncio.sleep(min(RETRY, max(0.0, left)))
    return None


def _udp(bind: str = "0.0.0.0") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.bind((bind, 0))
    return s


async def _pcp(probe: PortMappingProbe, timeout: float) -> None:
    assert probe.gateway and probe.local
    with _udp() as s:
        data = await _ask(
            s,
            pcp.announce_request(ipaddress.IPv4Address(probe.local)),
            (probe.gateway, pcp.PORT),
            timeout,
        )
    if data is None:
        probe.pcp = False
        return
    try:
        answer = pcp.parse_response(data, pcp.OP_ANNOUNCE)
    except pcp.PcpError as err:
        probe.pcp = False
        probe.notes.append(f"PCP: {err}")
        return
    probe.pcp = answer.ok
    if not answer.ok:
        probe.notes.append(f"PCP ANNOUNCE answered {answer.result_name}")


async def _natpmp(probe: PortMappingProbe, timeout: float) -> None:
    assert probe.gateway
    with _udp() as s:
        data = await _ask(
            s, natpmp.external_address_request(), (probe.gateway, natpmp.PORT), timeout
        )
    if data is None:
        probe.natpmp = False
        return
    try:
        answer = natpmp.parse_external_address(data)
    except natpmp.NatPmpError as err:
        probe.natpmp = False
        probe.notes.append(f"NAT-PMP: {err}")
        return
    probe.natpmp = answer.ok
    if answer.ok:
        probe.external_address = str(answer.address)
    else:
        probe.notes.append(f"NAT-PMP answered: {natpmp.RESULTS.get(answer.result, answer.result)}")


async def _ssdp(probe: PortMappingProbe, timeout: float) -> None:
    assert probe.local
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    with _udp(probe.local) as s:
        # Out of the LAN interface only, and no further than the next router.
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(probe.local))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        next_send = 0.0
        while (left := deadline - time.monotonic()) > 0:
            if time.monotonic() >= next_send:
                with contextlib.suppress(OSError):
                    s.sendto(upnp.msearch(), upnp.SSDP_ADDRESS)
                next_send = time.monotonic() + RETRY * 2
            try:
                data, source = await asyncio.wait_for(
                    loop.sock_recvfrom(s, 4096), min(left, next_send - time.monotonic())
                )
            except (TimeoutError, OSError):
                continue
            try:
                answer = upnp.parse_ssdp(data)
            except upnp.UpnpError:
                continue
            if answer.st == upnp.IGD and source[0] == probe.gateway:
                probe.upnp = True
                probe.upnp_location, probe.upnp_server = answer.location, answer.server
                return
    probe.upnp = False


async def detect(timeout: float = DETECT_TIMEOUT) -> PortMappingProbe:
    """Ask the default gateway which protocols it offers; nothing is mapped."""
    probe = PortMappingProbe(gateway=default_gateway())
    if probe.gateway is None:
        probe.notes.append("no IPv4 default gateway")
        return probe
    if not _behind_another_nat(probe.gateway):
        probe.notes.append(f"the gateway {probe.gateway} is not a private address: not asked")
        return probe
    probe.local = _local_towards(probe.gateway)
    if probe.local is None:
        probe.notes.append(f"no route to the gateway {probe.gateway}")
        return probe
    # Each probe's `timeout` counts from its own first send: diagnose's other jobs can hold the
    # event loop (module imports) between here and there, which must not eat the window.
    await asyncio.gather(_pcp(probe, timeout), _natpmp(probe, timeout), _ssdp(probe, timeout))
    if probe.upnp and probe.external_address is None:
        with contextlib.suppress(Exception):
            probe.external_address = await asyncio.to_thread(
                _upnp_external, probe, max(0.2, timeout + 0.5)
            )
    return probe


# -- UPnP over HTTP (blocking; run in a thread or in the synchronous clean-up) ----------------
def _http(url: str, timeout: float, body: bytes | None = None, action: str | None = None) -> bytes:
    headers = {"Content-Type": 'text/xml; charset="utf-8"'}
    if action:
        headers["SOAPAction"] = action
    request = urllib.request.Request(url, data=body, headers=headers)
    # No proxy: the gateway is on the LAN (and a proxy from the environment must not see it).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            data: bytes = response.read(1 << 20)
            return data
    except urllib.error.HTTPError as err:  # a SOAP fault comes with status 500
        fault: bytes = err.read(1 << 20)
        return fault


def _upnp_service(probe: PortMappingProbe, timeout: float) -> tuple[str, str]:
    assert probe.upnp_location
    return upnp.find_wan_service(_http(probe.upnp_location, timeout), probe.upnp_location)


def _upnp_call(
    probe: PortMappingProbe, action: str, args: dict[str, str | int], timeout: float
) -> dict[str, str]:
    service, control = _upnp_service(probe, timeout)
    body, soap_action = upnp.soap_request(service, action, args)
    return upnp.parse_soap(_http(control, timeout, body, soap_action))


def _upnp_external(probe: PortMappingProbe, timeout: float) -> str | None:
    return _upnp_call(probe, "GetExternalIPAddress", {}, timeout).get("NewExternalIPAddress")


# -- making, testing and deleting one mapping -------------------------------------------------
def _sync_ask(request: bytes, dest: tuple[str, int], timeout: float) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(RETRY)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                s.sendto(request, dest)
            with contextlib.suppress(OSError, TimeoutError):
                data, source = s.recvfrom(2048)
                if source[0] == dest[0]:
                    return data
    return None


class Mapper:
    """One mapping of `port` through `protocol`: `request(lifetime)` makes or renews it,
    `request(0)` deletes it (blocking calls)."""

    def __init__(self, probe: PortMappingProbe, protocol: Protocol, port: int) -> None:
        assert probe.gateway and probe.local
        self.probe, self.protocol, self.port = probe, protocol, port
        self.gateway, self.local = probe.gateway, probe.local
        self.nonce = os.urandom(12)

    async def make(self, lifetime: int, timeout: float) -> tuple[Address | None, int]:
        """`request(lifetime)` in a thread. Cancelled (Ctrl-C) while the request is out, it
        waits for the answer and deletes the mapping it made before the cancel goes on: the
        gateway maps on receipt, whether or not anyone still waits for its answer."""
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="natkit-portmap")
        requested = pool.submit(self.request, lifetime, timeout)
        try:
            return await asyncio.wrap_future(requested)
        except (asyncio.CancelledError, KeyboardInterrupt):
            with contextlib.suppress(Exception, concurrent.futures.CancelledError):
                requested.result(timeout + 1.0)  # bounded by the request's own timeout
                self.request(0, timeout)
            raise
        finally:
            pool.shutdown(wait=False)

    def request(self, lifetime: int, timeout: float) -> tuple[Address | None, int]:
        """Make (renew) the mapping for `lifetime` s, or delete it with 0: (external address or
        None when the gateway names none, granted lifetime). Raises when refused or unanswered."""
        if self.protocol == "pcp":
            return self._pcp(lifetime, timeout)
        if self.protocol == "natpmp":
            return self._natpmp(lifetime, timeout)
        return self._upnp(lifetime, timeout)

    def _pcp(self, lifetime: int, timeout: float) -> tuple[Address | None, int]:
        client = ipaddress.IPv4Address(self.local)
        # The same nonce each time: RFC 6887 §11.2 renews (or, lifetime 0, deletes) by it.
        req = pcp.map_request(client, self.nonce, self.port, lifetime, external_port=self.port)
        data = _sync_ask(req, (self.gateway, pcp.PORT), timeout)
        if data is None:
            raise TimeoutError("no PCP answer")
        answer = pcp.parse_response(data, pcp.OP_MAP)
        if not answer.ok or answer.mapping is None:
            raise RuntimeError(f"PCP MAP refused: {answer.result_name}")
        m = answer.mapping
        return Address(str(m.external_address), m.external_port), answer.lifetime

    def _natpmp(self, lifetime: int, timeout: float) -> tuple[Address | None, int]:
        req = natpmp.map_request(self.port, lifetime, external_port=self.port if lifetime else 0)
        data = _sync_ask(req, (self.gateway, natpmp.PORT), timeout)
        if data is None:
            raise TimeoutError("no NAT-PMP answer")
        got = natpmp.parse_map(data)
        if not got.ok:
            raise RuntimeError(f"NAT-PMP refused: {natpmp.RESULTS.get(got.result, got.result)}")
        ext = self.probe.external_address
        if ext is None and lifetime:  # the map answer carries no address (RFC 6886 §3.3)
            data = _sync_ask(
                natpmp.external_address_request(), (self.gateway, natpmp.PORT), timeout
            )
            ext = str(natpmp.parse_external_address(data or b"").address)
        return (Address(ext, got.external_port) if ext else None), got.lifetime

    def _upnp(self, lifetime: int, timeout: float) -> tuple[Address | None, int]:
        args: dict[str, str | int] = {
            "NewRemoteHost": "",
            "NewExternalPort": self.port,
            "NewProtocol": "UDP",
        }
        if lifetime == 0:
            _upnp_call(self.probe, "DeletePortMapping", args, timeout)
            return None, 0
        args |= {
            "NewInternalPort": self.port,
            "NewInternalClient": self.local,
            "NewEnabled": 1,
            "NewPortMappingDescription": "natkit diagnose --map-port",
            "NewLeaseDuration": lifetime,
        }
        _upnp_call(self.probe, "AddPortMapping", args, timeout)
        ext = self.probe.external_address or _upnp_external(self.probe, timeout)
        return (Address(ext, self.port) if ext else None), lifetime


def _behind_another_nat(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    return isinstance(ip, ipaddress.IPv4Address) and any(ip in n for n in _INSIDE)


async def _reachable(
    mapped: socket.socket, external: Address, server: Address, timeout: float
) -> tuple[bool | None, str]:
    """Ask `server` to answer to `external` (RESPONSE-PORT) from another socket; listen on
    `mapped`."""
    from natkit.stun import AttrType, Message, MessageClass, Method, parse_message

    loop = asyncio.get_running_loop()
    tid = os.urandom(12)
    request = Message(Method.BINDING, MessageClass.REQUEST, tid)
    request.add(AttrType.RESPONSE_PORT, external.port)
    with _udp() as sender:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sender.sendto(request.encode(), (server.host, server.port))
            for sock in (mapped, sender):
                with contextlib.suppress(TimeoutError, OSError):
                    data, source = await asyncio.wait_for(
                        loop.sock_recvfrom(sock, 2048), min(RETRY, left) / 2
                    )
                    msg = parse_message(data)
                    if msg.transaction_id != tid:
                        continue
                    if sock is mapped:
                        return True, f"{source[0]}:{source[1]} reached {external} unsolicited"
                    if msg.message_class == MessageClass.ERROR:
                        return None, f"{server} does not honour RESPONSE-PORT"
    return False, f"no answer from {server} reached {external}"


async def map_port(
    probe: PortMappingProbe, server: Address | None, *, lifetime: int = 120, timeout: float = 2.0
) -> MappedPort | None:
    """Map a fresh UDP socket through the best offered protocol, test it, delete it."""
    if not probe.offered or probe.local is None:
        return None
    protocol = probe.offered[0]
    with _udp(probe.local) as mapped_sock:
        port = mapped_sock.getsockname()[1]
        result = MappedPort(protocol, Address(probe.local, port))
        mapper = Mapper(probe, protocol, port)
        made = False
        try:
            external, granted = await mapper.make(lifetime, timeout)
            made = True
            result.external, result.lifetime = external, granted
            if external is None:
                result.evidence = "the gateway gave no external address"
            elif server is None:
                result.evidence = "no STUN server to test reachability from"
            elif _behind_another_nat(external.host):
                result.evidence = f"{external.host} is private: another NAT is in front"
            else:
                result.reachable, result.evidence = await _reachable(
                    mapped_sock, external, server, timeout
                )
        except Exception as err:
            result.error = f"{type(err).__name__}: {err}"
        finally:
            if made:  # synchronous: runs even when the loop is being cancelled (Ctrl-C)
                try:
                    mapper.request(0, 1.0)
                    result.deleted = True
                except Exception as err:
                    result.error = result.error or f"deleting the mapping failed: {err}"
    return result
