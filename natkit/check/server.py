"""natkit check's server: the page and its JSON API over HTTP(S), and the four UDP sockets of the
ICE prober (`natkit.check.ice`). Runs in the `natkit serve` supervisor (one instance: the tests
live in memory), beside the STUN/TURN workers whose addresses the page also uses.

Routes (same origin; JSON bodies; every response closes the connection):

    GET  /check                           the page (static: no build step, no CDN, offline)
    GET  /check/check.js, /check/check.css
    POST /check/api/test                  201 {id, stun, turn, timeout}: a new test, with TURN
                                          credentials minted for it (the REST secret stays here)
    POST /check/api/test/ID/ice/KIND      {sdp}: the browser's offer → natkit's ice-lite answer
                                          (KIND mapping or filtering)
    GET  /check/api/test/ID/ice/KIND      what natkit saw so far ({observed, answered, done})
    POST /check/api/test/ID/report        the page's own results → the report (diagnose JSON)
    GET  /check/api/report/ID             that report, for `report_ttl` seconds

Hostile input: the head is at most 8 KiB, a body 32 KiB, the whole request must arrive within
5 s of the connect; connections are admitted per source and globally (`natkit.admission`);
tests are bounded per source and in total (`natkit.check.store`). Every refusal is an HTTP
answer, counted in `stats` and logged at most once per 10 s per kind. Visitor addresses are
logged only at debug and then only as their /24 (IPv4) or /48 (IPv6).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
from importlib import resources
from typing import Any

from natkit.addr import Address, Transport, format_hostport, parse_hostport
from natkit.admission import ConnectionTable, LogLimiter, source_key
from natkit.check import ice, sdp
from natkit.check.friend import FriendRoutes
from natkit.check.http import (
    REQUEST_TIMEOUT,
    HttpError,
    Request,
    mask,
    read_request,
    respond,
)
from natkit.check.report import build_report, page_results
from natkit.check.store import CheckStore, CheckTest, Refused
from natkit.config.model import Config
from natkit.errors import NatkitError
from natkit.net.ratelimit import RateLimiter
from natkit.signal.store import SignalStore
from natkit.turn.credentials import mint

__all__ = ["STAT_KEYS", "CheckServer", "render_check"]

log = logging.getLogger("natkit.check")

_TICK = 0.05
_REQUESTS_PER_SECOND = 30.0
_CREDENTIAL_TTL = 120  # seconds: a test lasts ~5 s; the page's relays refresh nothing longer
_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_STATIC = {
    "/check": ("index.html", "text/html; charset=utf-8"),
    "/check/": ("index.html", "text/html; charset=utf-8"),
    "/check/check.js": ("check.js", "text/javascript; charset=utf-8"),
    "/check/check.css": ("check.css", "text/css; charset=utf-8"),
}
STAT_KEYS = (
    "tests",  # tests started
    "reports",  # reports made
    "refused_rate",  # 429: the source started too many tests this minute, or sent too much
    "refused_full",  # 503: max_tests running or kept, or too many connections
    "bad_requests",  # 400/404/405/411/413
    "request_timeouts",  # 408
    "internal_errors",  # 500 (a bug)
    "probes",  # filtering probes sent (at most ice.MAX_PROBES per test)
    "dropped_datagrams",  # UDP datagrams the prober ignored
)


class _Prober(asyncio.DatagramProtocol):
    def __init__(self, server: CheckServer, role: ice.Role) -> None:
        self.server, self.role = server, role

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.server._datagram(self.role, data, Address(str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from a browser that left: nothing to do


class CheckServer:
    """``await start()`` binds the HTTP listener and the prober sockets; ``await stop()``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        check = config.check
        scheme, _, hostport = check.listen.partition("://")
        self.tls = scheme == "https"
        self.host, self.port = parse_hostport(hostport)
        self.store = CheckStore(
            max_tests=check.max_tests,
            report_ttl=check.report_ttl,
            tests_per_minute=check.tests_per_minute,
        )
        self.friends = FriendRoutes(
            SignalStore(ttl=120.0, max_pairings=2 * check.max_tests), self._servers, self._nat_of
        )
        udp = next(u for u in config.stun.listen if u.transport is Transport.UDP)
        self.primary_ip = udp.host
        v6 = [u for u in config.stun.listen if u.transport is Transport.UDP and u.family == 6]
        self.ipv6_ip = v6[0].host if v6 and udp.family == 4 else None
        self.alternate_ip = (
            parse_hostport(config.stun.alternate)[0] if config.stun.alternate else None
        )
        self.core = ice.IceCore({}, max_sessions=2 * check.max_tests)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._table = ConnectionTable(256, 16)
        # Requests per source: a test's page polls ~10/s for ~2 s; a flood is refused early.
        self._requests = RateLimiter(_REQUESTS_PER_SECOND, 3 * _REQUESTS_PER_SECOND, 10_000)
        self._logs = LogLimiter(log)
        self._server: asyncio.Server | None = None
        self._udp: dict[ice.Role, asyncio.DatagramTransport] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._files = {
            path: (resources.files("natkit.check").joinpath("static", name).read_bytes(), kind)
            for path, (name, kind) in _STATIC.items()
        }

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{'https' if self.tls else 'http'}://{format_hostport(host, port)}/check"

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("check server not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ctx = None
        if self.tls:
            from natkit.net.sockets import make_ssl_context

            ctx = make_ssl_context(self.config.stun.tls, self.config.source)
        binds: list[tuple[ice.Role, str]] = [
            ("p1", self.primary_ip), ("p2", self.primary_ip), ("p3", self.primary_ip)
        ]  # fmt: skip
        if self.alternate_ip is not None:
            binds.append(("a1", self.alternate_ip))
        if self.ipv6_ip is not None:
            binds.append(("v6", self.ipv6_ip))
        try:
            for role, ip in binds:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda role=role: _Prober(self, role),  # type: ignore[misc]
                    local_addr=(ip, 0),
                )
                self._udp[role] = transport
                host, port = transport.get_extra_info("sockname")[:2]
                self.core.sockets[role] = Address(str(host), int(port))
            self._server = await asyncio.start_server(
                self._accept,
                self.host,
                self.port,
                ssl=ctx,
                reuse_address=True,
                # A handshake that never comes must not hold a socket for asyncio's 60 s.
                ssl_handshake_timeout=REQUEST_TIMEOUT if ctx is not None else None,
            )
        except OSError as err:
            await self.stop()
            raise NatkitError(
                f"check.listen: cannot serve the check page on {self.config.check.listen}: "
                f"{err.strerror or err}"
            ) from None
        self._ticker = asyncio.ensure_future(self._tick())
        log.info("check page at %s", self.url)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        for transport in self._udp.values():
            transport.close()
        self._udp.clear()

    # --- UDP: the ICE prober -----------------------------------------------------------------

    def _datagram(self, role: ice.Role, data: bytes, source: Address) -> None:
        before = self.core.dropped
        try:
            self._send(self.core.handle(role, data, source, time.monotonic()))
        except Exception as err:  # a bug: never a traceback per datagram, one line a while
            self._count("internal_errors", f"internal error: {type(err).__name__}: {err}")
        self.stats["dropped_datagrams"] += self.core.dropped - before

    def _send(self, transmits: list[ice.Transmit]) -> None:
        for t in transmits:
            transport = self._udp.get(t.role)
            if transport is not None:
                if t.data[:2] == b"\x00\x01":  # a Binding request of ours: a probe
                    self.stats["probes"] += 1
                transport.sendto(t.data, (t.destination.host, t.destination.port))

    async def _tick(self) -> None:
        last_expiry = 0.0
        while True:
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            self._send(self.core.tick(now))
            if now - last_expiry > 1.0:
                last_expiry = now
                for test in self.store.expire(now):
                    for session in test.sessions.values():
                        self.core.remove(session)

    # --- HTTP --------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        source = source_key(writer.get_extra_info("peername"))
        try:
            # The task is the connection's slot: when full, the oldest one still reading its
            # request is cancelled (closed) to make room (natkit.admission).
            verdict = self._table.admit(task, source)
            if verdict.status:
                self._count("refused_full", f"refused a connection: {verdict.reason}")
                await respond(writer, verdict.status, {"error": verdict.reason})
                return
            if isinstance(verdict.evict, asyncio.Task):
                self._count("refused_full", "full: closed the oldest unread connection")
                verdict.evict.cancel()
            try:
                status, body, kind = await self._serve_one(reader, writer, source)
            finally:
                self._table.release(task)
            await respond(writer, status, body, kind)
        except (OSError, TimeoutError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            writer.close()
            try:  # close() flushes first: a client that stops reading gets 1 s, then a reset
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except TimeoutError:
                writer.transport.abort()
            except (Exception, asyncio.CancelledError):
                pass
            self._tasks.discard(task)

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
    ) -> tuple[int, Any, str]:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await read_request(reader, writer, source)
            task = asyncio.current_task()
            if task is not None:
                self._table.serving(task)  # read in full: no longer evictable
            # After the (bounded) read: answering first would reset the connection unread.
            if not self._requests.allow(source, time.monotonic()):
                raise Refused(429, "too many requests from this address; retry in a few seconds")
            static = self._files.get(request.path)
            if static is not None:
                if request.method != "GET":
                    raise HttpError(405, "use GET")
                return 200, static[0], static[1]
            return *self._route(request), "application/json"
        except TimeoutError:
            self.stats["request_timeouts"] += 1
            return 408, {"error": "request not complete within 5 s"}, "application/json"
        except asyncio.IncompleteReadError:
            self.stats["bad_requests"] += 1
            return 400, {"error": "connection closed mid-request"}, "application/json"
        except HttpError as err:
            self.stats["bad_requests"] += 1
            return err.status, {"error": str(err)}, "application/json"
        except Refused as err:
            kind = "refused_rate" if err.status == 429 else "refused_full"
            self._count(kind, f"refused {mask(source)}: {err}")
            return err.status, {"error": str(err)}, "application/json"
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:  # a bug: one line, rate-limited, never a traceback to a client
            self._count("internal_errors", f"internal error: {type(err).__name__}: {err}")
            return 500, {"error": "internal error"}, "application/json"

    def _route(self, req: Request) -> tuple[int, Any]:
        now = time.monotonic()
        parts = [p for p in req.path.split("/") if p]
        if parts[:2] != ["check", "api"] or len(parts) < 3:
            raise HttpError(404, "no such page")
        rest = parts[2:]
        if rest[0] == "pair":
            return self.friends.route(req, rest[1:], now)
        if rest == ["test"]:
            _method(req, "POST")
            return 201, self._new_test(req, now)
        if len(rest) == 2 and rest[0] == "report":
            _method(req, "GET")
            test = self._test(rest[1], now)
            if test.report is None:
                raise HttpError(404, "no report yet for this id")
            return 200, test.report
        if len(rest) >= 3 and rest[0] == "test":
            test = self._test(rest[1], now)
            if test.report is not None:
                raise HttpError(405, "this test is finished")
            if len(rest) == 4 and rest[2] == "ice" and rest[3] in ("mapping", "filtering"):
                if req.method == "POST":
                    return 200, self._offer(test, rest[3], req)
                _method(req, "GET")
                return 200, self._observed(test, rest[3])
            if rest[2:] == ["report"]:
                _method(req, "POST")
                return 200, self._report(test, req, now)
        raise HttpError(404, "no such route")

    def _test(self, test_id: str, now: float) -> CheckTest:
        test = self.store.get(test_id, now) if _ID.fullmatch(test_id) else None
        if test is None:
            raise HttpError(404, "no such test (unknown or expired id)")
        return test

    def _new_test(self, req: Request, now: float) -> dict[str, Any]:
        test = self.store.create(req.source, now)
        self.stats["tests"] += 1
        log.debug("check test started from %s", mask(req.source))
        return {
            "id": test.id,
            "stun": self._stun_urls(req.local.host),
            "turn": self._turn_servers(f"check-{test.id}", req.local.host),
            "alternate": self.alternate_ip is not None,
            "ipv6": self.ipv6_ip is not None,
        }

    def _nat_of(self, report_id: str, now: float) -> str | None:
        test = self.store.get(report_id, now) if _ID.fullmatch(report_id) else None
        if test is None or test.report is None:
            return None
        return str(test.report["nat_type"])

    def _servers(self, user: str, local: str) -> dict[str, Any]:
        return {"stun": self._stun_urls(local), "turn": self._turn_servers(user, local)}

    def _host(self, ip: str, local: str) -> str:
        host = local if ip in ("0.0.0.0", "::") else ip
        return f"[{host}]" if ":" in host else host

    def _stun_urls(self, local: str) -> list[str]:
        udp = next(u for u in self.config.stun.listen if u.transport is Transport.UDP)
        urls = [f"stun:{self._host(udp.host, local)}:{udp.port}"]
        if self.config.stun.alternate:
            host, port = parse_hostport(self.config.stun.alternate)
            urls.append(f"stun:{self._host(host, local)}:{port}")
        return urls

    def _turn_servers(self, user: str, local: str) -> list[dict[str, Any]]:
        turn = self.config.turn
        if not turn.enabled or turn.engine != "builtin" or not turn.auth.secret:
            return []  # static users' passwords are never handed to a page
        cred = mint(turn.auth.secret, user, _CREDENTIAL_TTL, time.time())
        out: list[dict[str, Any]] = []
        for transport in (Transport.UDP, Transport.TCP, Transport.TLS):
            uri = next((u for u in self.config.stun.listen if u.transport is transport), None)
            if uri is None:
                continue
            scheme = "turns" if transport is Transport.TLS else "turn"
            kind = "udp" if transport is Transport.UDP else "tcp"
            url = f"{scheme}:{self._host(uri.host, local)}:{uri.port}?transport={kind}"
            out.append(
                {
                    "transport": str(transport),
                    "urls": [url],
                    "username": cred.username,
                    "credential": cred.password,
                }
            )
        return out

    def _offer(self, test: CheckTest, kind: str, req: Request) -> dict[str, Any]:
        if kind in test.sessions:
            raise HttpError(405, f"the {kind} offer was sent already")
        try:
            body = json.loads(req.body)
            offer = sdp.parse_offer(body["sdp"] if isinstance(body, dict) else None)
        except (ValueError, KeyError, TypeError) as err:
            raise HttpError(400, f'body must be {{"sdp": OFFER}}: {err}') from None
        ufrag, pwd = sdp.random_credentials()
        session = ice.IceSession(
            "mapping" if kind == "mapping" else "filtering", ufrag, pwd, offer.ufrag, offer.pwd
        )
        if not self.core.add(session):
            raise Refused(503, "too many tests at once; retry in a minute")
        test.sessions[kind], test.offers[kind] = session, offer
        roles = ice.MAPPING_ROLES if kind == "mapping" else (ice.FILTER_ROLE,)
        local = req.local.host
        addrs = [
            Address(self._host(a.host, local).strip("[]"), a.port)
            for role in roles
            if (a := self.core.sockets.get(role)) is not None
        ]
        return {"sdp": sdp.answer(offer, ufrag, pwd, addrs)}

    def _observed(self, test: CheckTest, kind: str) -> dict[str, Any]:
        session = test.sessions.get(kind)
        if session is None:
            raise HttpError(404, f"no {kind} offer yet")
        seen = sorted({role for group in session.observed.values() for role in group})
        done = session.probes_done and session.opened_at is not None
        if done and session.opened_at is not None:
            done = time.monotonic() - session.opened_at > ice.PROBE_SCHEDULE[-1] + 0.3
        return {"observed": seen, "answered": sorted(session.answered), "done": done}

    def _report(self, test: CheckTest, req: Request, now: float) -> dict[str, Any]:
        try:
            body = json.loads(req.body)
        except ValueError as err:
            raise HttpError(400, f"body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        turn, candidates, duration, hairpin = page_results(body)
        report = build_report(
            test.id,
            test.sessions.get("mapping"),
            test.sessions.get("filtering"),
            test.offers.get("mapping"),
            turn,
            candidates,
            duration,
            alternate=self.alternate_ip is not None,
            hairpin=hairpin,
            ipv6_offered=self.ipv6_ip is not None,
        )
        for session in test.sessions.values():
            self.core.remove(session)
        self.store.finish(test, report, now)
        self.stats["reports"] += 1
        return report

    def _count(self, kind: str, message: str) -> None:
        self.stats[kind] += 1
        self._logs.warning(kind, f"check: {message}", time.monotonic())


def _method(req: Request, method: str) -> None:
    if req.method != method:
        raise HttpError(405, f"use {method}")


def render_check(stats: dict[str, int]) -> str:
    """Prometheus text for `CheckServer.stats` (natkit_check_<kind>_total)."""
    lines = []
    for key in STAT_KEYS:
        name = f"natkit_check_{key}_total"
        lines += [f"# TYPE {name} counter", f"{name} {stats.get(key, 0)}"]
    return "\n".join(lines) + "\n"
