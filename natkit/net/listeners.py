"""Every client-facing socket of one worker: bound from the listener plan, served through the
dispatcher each plan's routes make, closed on the way out.

Theory of operation. The listeners know sockets, connections, limits and the RFC 7983 kinds,
and nothing about what a message means: `natkit.serve` registers the handlers (the Binding
handler per listener, the TURN engine when it is on) as `natkit.net.routes.Dispatcher`s, and
the read paths (`natkit.net.udp`, `natkit.net.stream`) classify each datagram or frame and call
its route. One per-source rate limiter (``stun.rate_limit``, run before any parsing, with the
routes' declarations of what counts) and one metrics row are shared by every listener of the
worker.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Callable

from natkit.addr import Address, Transport
from natkit.config.model import RateLimitConfig, StunConfig
from natkit.metrics import WorkerCounters
from natkit.net.proxy_protocol import header_required
from natkit.net.ratelimit import RateLimiter
from natkit.net.routes import Dispatcher
from natkit.net.sockets import ListenerPlan, bind_stream, bind_udp, plan_listeners
from natkit.net.stream import StreamService
from natkit.net.udp import udp_reader

__all__ = ["Listeners"]


class Listeners:
    """Every listener of one worker process, sharing one rate limiter and one counter row."""

    def __init__(
        self,
        config: StunConfig,
        counters: WorkerCounters,
        dispatch: Callable[[ListenerPlan], Dispatcher],
        *,
        reuse_port: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`dispatch` gives each listener plan its routes (called once per plan, at start)."""
        self.config = config
        self.counters = counters
        self.dispatch = dispatch
        self.limiter: RateLimiter | None = None
        self.reconfigure(config.rate_limit)
        self._reuse_port = reuse_port
        self._ssl = ssl_context
        self._plans: list[ListenerPlan] = []
        self._udp: list[socket.socket] = []
        self._stream_socks: list[tuple[ListenerPlan, socket.socket]] = []
        self._servers: list[asyncio.Server] = []
        proxied = None
        if config.proxy_protocol:
            proxied = functools.partial(header_required, stun=config)
        self.streams = StreamService(config.stream, counters.values, lambda: self.limiter, proxied)
        self._accepting: list[asyncio.Task[None]] = []  # PROXY listeners' accept loops
        self._loop: asyncio.AbstractEventLoop | None = None

    def reconfigure(self, rl: RateLimitConfig) -> None:
        """Apply `stun.rate_limit` (at start and on SIGHUP), keeping bucket state if possible."""
        if not rl.enabled:
            self.limiter = None
        elif self.limiter is None:
            self.limiter = RateLimiter(rl.per_source, rl.burst, rl.max_sources)
        else:
            self.limiter.reconfigure(rl.per_source, rl.burst, rl.max_sources)

    def bind(self, sockets: list[socket.socket] | None = None) -> list[ListenerPlan]:
        """Create every socket (NatkitError on failure) before the loop starts serving, or adopt
        `sockets` bound by the supervisor (`natkit.net.sockets.bind_worker_sockets` order)."""
        plans = plan_listeners(self.config)
        given = iter(sockets) if sockets is not None else None
        join = self._reuse_port  # standalone: join a group someone else started
        for plan in plans:
            if plan.uri.transport is Transport.UDP:
                for a in plan.addresses:
                    sock = next(given) if given else bind_udp(a, reuse_port=join, join=join)
                    self._udp.append(sock)
            else:
                sock = next(given) if given else bind_stream(plan.primary, join, join=join)
                self._stream_socks.append((plan, sock))
        self._plans = plans
        return plans

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        udp = iter(self._udp)
        counts = self.counters.values
        for plan in self._plans:
            if plan.uri.transport is not Transport.UDP:
                continue
            dispatcher = self.dispatch(plan)
            socks: dict[Address, socket.socket] = {addr: next(udp) for addr in plan.addresses}
            for local, sock in socks.items():
                reader = udp_reader(dispatcher, sock, local, socks, counts, lambda: self.limiter)
                loop.add_reader(sock.fileno(), reader)
        for plan, sock in self._stream_socks:
            tls = plan.uri.transport is Transport.TLS
            if self.config.proxy_protocol:  # the header comes before TLS: accept ourselves
                ctx = self._ssl if tls else None
                task = self.streams.accept_proxied(
                    sock, self.dispatch(plan), plan.uri.transport, ctx
                )
                self._accepting.append(task)
                continue
            server = await asyncio.start_server(
                self.streams.callback(self.dispatch(plan), plan.uri.transport),
                sock=sock,
                ssl=self._ssl if tls else None,
                # A handshake is a frame too: bounded by frame_timeout, not reset per byte.
                ssl_handshake_timeout=self.config.stream.frame_timeout if tls else None,
                limit=max(self.config.stream.max_message_size, 2**16),
            )
            self._servers.append(server)

    async def close(self, drain: float = 2.0) -> None:
        """Stop accepting; give open streams `drain` seconds to finish, then cut them."""
        loop = self._loop
        for sock in self._udp:
            if loop is not None:
                loop.remove_reader(sock.fileno())
            sock.close()
        for server in self._servers:
            server.close()
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for _, sock in self._stream_socks:
            sock.close()
        await self.streams.close(drain)
        self.counters.flush()
