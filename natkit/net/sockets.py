"""Which sockets the STUN server binds, and binding them with errors a user can act on.

`plan_listeners` turns `stun.listen` + `stun.alternate` into local addresses: one per URI, or
the four RFC 5780 §4 needs (primary/alternate IP x primary/alternate port) for a UDP listener
of the alternate's family. Addresses carry canonical IP text because the binding handler names
`Transmit.source` that way and the server looks its sockets up by it.

Bind failures become one-line `NatkitError`s (port in use, privileged port, address not local);
a bad certificate or key becomes a `ConfigError` naming `stun.tls`.

Who may share a port (`bind_worker_sockets`). Workers spread load with SO_REUSEPORT, but the
kernel lets *any* socket of the same effective uid join a reuseport group: a second natkit, or a
coturn, would silently take part of the traffic (issue 11 #8). So the supervisor binds every
socket itself, before any worker exists: the first socket of each address WITHOUT SO_REUSEPORT,
which fails with EADDRINUSE if anyone at all holds the port (a probe bind that is kept, so
there is no window between probe and bind); only then does it set SO_REUSEPORT on that socket
and bind one more per worker into the same group. Workers receive their sockets by fd passing
and the supervisor keeps its copies for its lifetime, so the group never empties (a crashed
worker's socket stays bound, queues, and goes to its successor). What this cannot stop: a later
process of the same uid that sets SO_REUSEPORT itself may still join (a kernel rule; only a
reuseport BPF program could exclude it). natkit always binds exclusively first, so a second
natkit is refused either way.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass

from natkit.addr import Address, ListenURI, Transport, parse_hostport
from natkit.config.model import StunConfig, TlsConfig
from natkit.errors import ConfigError, NatkitError
from natkit.net.steering import steer_by_source

__all__ = [
    "ListenerPlan",
    "bind_stream",
    "bind_udp",
    "bind_worker_sockets",
    "make_ssl_context",
    "plan_listeners",
]

log = logging.getLogger("natkit.net.sockets")


@dataclass(frozen=True, slots=True)
class ListenerPlan:
    """One `stun.listen` URI and the local addresses it binds (4 for RFC 5780 UDP)."""

    uri: ListenURI
    addresses: tuple[Address, ...]
    primary: Address
    alternate: Address | None


def plan_listeners(config: StunConfig, source: str | None = None) -> list[ListenerPlan]:
    """Resolve listen URIs + `stun.alternate` into sockets to bind; ConfigError if impossible."""
    alternate: Address | None = None
    if config.alternate:
        try:
            alternate = Address(*_parse_alternate(config.alternate))
        except ValueError as err:
            raise ConfigError(str(err), file=source, path="stun.alternate") from None
    plans = []
    for uri in config.listen:
        alt = alternate if alternate is not None and alternate.family == uri.family else None
        # Canonical IP text: the handler names Transmit.source that way and we look sockets up
        # by it.
        primary = Address(str(uri.address.ip), uri.port)
        addresses: tuple[Address, ...] = (primary,)
        if alt is not None and uri.transport is Transport.UDP:
            if uri.address.ip.is_unspecified:
                raise ConfigError(
                    f"{uri} listens on a wildcard address, but with stun.alternate set RFC 5780 "
                    "needs a specific primary IP (e.g. udp://203.0.113.10:3478)",
                    file=source,
                    path="stun.listen",
                )
            if alt.ip == uri.address.ip or alt.port == uri.port:
                raise ConfigError(
                    f"stun.alternate {alt} must differ from {uri} in both IP and port "
                    "(RFC 5780 §4 tests change IP and port independently)",
                    file=source,
                    path="stun.alternate",
                )
            p, a = primary, alt
            addresses = (p, Address(p.host, a.port), Address(a.host, p.port), a)
        plans.append(ListenerPlan(uri, addresses, primary, alt))
    return plans


def _parse_alternate(text: str) -> tuple[str, int]:
    host, port = parse_hostport(text, default_port=3478)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address literal") from None
    if ip.is_unspecified:
        raise ValueError("the alternate address must be a specific IP")
    return str(ip), port


def _bind_error(what: str, addr: Address, err: OSError) -> NatkitError:
    if err.errno == errno.EADDRINUSE:
        why = (
            "address already in use (another server? natkit, coturn or any other process holds "
            "this port: stop it or choose another port)"
        )
    elif err.errno == errno.EACCES:
        why = "permission denied" + (
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if addr.port < 1024 else ""
        )
    elif err.errno == errno.EADDRNOTAVAIL:
        why = "no local interface has this address"
    else:
        why = err.strerror or str(err)
    return NatkitError(f"{what}://{addr}: {why}")


def _socket(addr: Address, kind: int, reuse_port: bool, *, join: bool = False) -> socket.socket:
    family = socket.AF_INET if addr.family == 4 else socket.AF_INET6
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            # A [::] listener must not swallow IPv4: udp://0.0.0.0 is configured separately.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and join:
            # Workers each bind the same port; the kernel spreads flows over them by hash.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        if reuse_port and not join:
            # Bound exclusively (EADDRINUSE if anyone holds the port); now open the group to
            # the sockets bound after it (see the module docstring).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise _bind_error("udp" if kind == socket.SOCK_DGRAM else "tcp", addr, err) from None
    return sock


def bind_udp(addr: Address, *, reuse_port: bool = True, join: bool = False) -> socket.socket:
    """A UDP socket on `addr`; with `reuse_port`, the first of a group (`join=False`, bound
    exclusively) or another member of it (`join=True`)."""
    sock = _socket(addr, socket.SOCK_DGRAM, reuse_port, join=join)
    with contextlib.suppress(OSError):  # bigger buffers absorb bursts between wake-ups
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return sock


def bind_stream(addr: Address, reuse_port: bool = True, *, join: bool = False) -> socket.socket:
    """A listening TCP socket on `addr`; `reuse_port` and `join` as for `bind_udp`."""
    sock = _socket(addr, socket.SOCK_STREAM, reuse_port, join=join)
    try:
        sock.listen(1024)
    except OSError as err:  # a TCP reuseport group is checked again at listen()
        sock.close()
        raise _bind_error("tcp", addr, err) from None
    return sock


def bind_worker_sockets(config: StunConfig, workers: int) -> list[list[socket.socket]]:
    """Every listening socket of `workers` workers, in `Listeners.bind` order (plan by plan,
    address by address): one reuseport group per address whose first member is bound
    exclusively, steered by source address (`natkit.net.steering`: one client host, one
    worker). NatkitError (and nothing left open) if any address is taken."""
    per_worker: list[list[socket.socket]] = [[] for _ in range(workers)]
    try:
        for plan in plan_listeners(config):
            udp = plan.uri.transport is Transport.UDP
            for addr in plan.addresses if udp else (plan.primary,):
                for i, socks in enumerate(per_worker):
                    bind = bind_udp if udp else bind_stream
                    socks.append(bind(addr, reuse_port=True, join=i > 0))
                # Behind a PROXY-protocol balancer every connection comes from its address:
                # steering would put them all on one worker.
                proxied = not udp and config.proxy_protocol
                if not proxied and not steer_by_source(per_worker[0][-1], workers):
                    log.warning(
                        "%s: the kernel refused source-address steering: a client's sockets "
                        "may meet different workers (RESERVATION-TOKEN claims, RFC 6062 data "
                        "connections and per-source rate limits then work per worker)",
                        addr,
                    )
    except NatkitError:
        for socks in per_worker:
            for sock in socks:
                sock.close()
        raise
    return per_worker


def make_ssl_context(tls: TlsConfig, source: str | None = None) -> ssl.SSLContext:
    """Server context from `stun.tls`; ConfigError naming the key when a file is unusable."""
    if not tls.cert or not tls.key:
        raise ConfigError(
            "tls:// listeners need stun.tls.cert and stun.tls.key", file=source, path="stun.tls"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    reload_certificate(ctx, tls, source)
    return ctx


def reload_certificate(ctx: ssl.SSLContext, tls: TlsConfig, source: str | None = None) -> None:
    """(Re)load `stun.tls` into `ctx`. On a live context (SIGHUP after a renewal) new handshakes
    use the new certificate while established connections keep theirs. The files are tried on
    a scratch context first: a failed load on the live one could leave a new certificate beside
    the old key. OpenSSL keeps one certificate per key type in a context: a renewal that changes
    the key type (RSA to ECDSA) adds the new one beside the old, which clients may still be
    offered; that change needs a restart."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert or "", tls.key)
        ctx.load_cert_chain(tls.cert or "", tls.key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            f"cannot load certificate {tls.cert} / key {tls.key}: {err}",
            file=source,
            path="stun.tls",
        ) from None
