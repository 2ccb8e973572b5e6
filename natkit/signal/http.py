"""The rendezvous over HTTP/1.1: a tiny asyncio server in front of `SignalStore`.

Routes (JSON bodies; every response closes the connection, which keeps the parser trivial and
costs nothing at two exchanges per pairing):

    POST /v1/pair                          201 {"code": CODE, "ttl": SECONDS}
    PUT  /v1/pair/CODE/offer|answer        204; body {"type": "offer"|"answer", "sdp": SDP}
    GET  /v1/pair/CODE/offer|answer?wait=S 200 {"type", "sdp"}; 204 if still empty after S seconds
    GET  /healthz                          200 {"ok": true}

Errors are ``{"error": TEXT}`` with 400 (malformed), 404 (unknown/expired/used code), 408 (request
not complete in time), 409 (slot already written), 411, 413 (too big), 429 (rate limited, or this
address holds too many connections or pairings), 503 (full; with Retry-After). A GET long-polls: it
waits up to `wait` seconds (capped by `poll_timeout`) for the slot to be written, so a peer learns
of the other's description at once without hammering the server.

Hostile clients. The head is at most `_MAX_HEAD` bytes and the body `max_sdp_size` worth; the
whole request must arrive within `request_timeout` seconds of the connect (one deadline, not
reset per byte: a byte every few seconds cannot hold a slot). Connections are admitted by
`ConnectionTable` (per-source cap, global cap, oldest unread connection evicted when full, see
`natkit.admission`). Every refusal is an HTTP answer followed by a bounded drain of the
input, never a reset; refusals are counted in `stats` and logged at most once per 10 s per kind.
No body is ever logged: SDP carries the peers' addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from natkit.addr import format_hostport, parse_hostport
from natkit.admission import ConnectionTable, LogLimiter, source_key
from natkit.config.model import SignalConfig
from natkit.errors import NatkitError, UsageError
from natkit.signal import wire
from natkit.signal.store import Full, RateLimited, SignalError, SignalStore, Slot, TooManyPairings

__all__ = ["STAT_KEYS", "SignalServer", "run_signal", "serve_signal"]

log = logging.getLogger("natkit.signal")

_MAX_HEAD = 8192
_LINGER = 1.0  # seconds an answered client gets to read the answer and close its end
_CONTENT_LENGTH = re.compile(r"[0-9]{1,9}")  # int() would also take "1_0", " +5" and "٣"
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

STAT_KEYS = (
    "connections",  # accepted TCP connections
    "refused_source_connections",  # 429: the source already held its share of connections
    "refused_full",  # 503: every connection slot was serving a request
    "evicted_idle",  # 503 to the oldest unread connection, to make room for a new one
    "request_timeouts",  # 408: the request did not arrive within `request_timeout`
    "refused_source_pairings",  # 429: the source already owned its share of pairings
    "refused_full_pairings",  # 503: the pairing table was full
    "rate_limited",  # 429: the source's request bucket was empty
    "bad_requests",  # 400/411/413: a request the server could not parse or would not read
    "internal_errors",  # 500: a bug; logged (rate-limited) with the exception
)
"""The counters in `SignalServer.stats`, each monotonic since start (for metrics)."""


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes


class _Conn:
    """One admitted connection: its read deadline, so that eviction can expire it at once."""

    __slots__ = ("deadline", "evicted")

    def __init__(self) -> None:
        self.deadline: asyncio.Timeout | None = None
        self.evicted = False


_Answer = tuple[int, dict[str, Any] | None, float | None]  # status, JSON body, Retry-After


class SignalServer:
    """The rendezvous HTTP service: ``await start()``, ``await stop()`` (or ``async with``).

    `request_timeout`: seconds from connect to a complete request (head and body).
    `max_connections`: connections served at once; `max_connections_per_source`: of those, how
    many one IPv4 address or IPv6 /64 may hold. The per-source pairing cap is the store's.
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:8765",
        *,
        store: SignalStore | None = None,
        poll_timeout: float = 25.0,
        request_timeout: float = 5.0,
        max_connections: int = 256,
        max_connections_per_source: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if request_timeout <= 0:
            raise ValueError("request_timeout must be > 0")
        self.listen = listen
        self.store = store if store is not None else SignalStore()
        self.poll_timeout = poll_timeout
        self.request_timeout = request_timeout
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._table = ConnectionTable(max_connections, max_connections_per_source)
        self._lingering = 0
        self._logs = LogLimiter(log)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        """Refusals and errors by kind (see `STAT_KEYS`)."""

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): with port 0 in `listen`, the one the kernel picked."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("signal server not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        return f"http://{format_hostport(*self.address)}"

    async def start(self) -> None:
        try:
            host, port = parse_hostport(self.listen)
        except ValueError as err:
            raise UsageError(f"signal.listen: {err}") from None
        try:
            self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        except OSError as err:
            reason = err.strerror or err
            raise NatkitError(f"cannot serve signal on {self.listen}: {reason}") from None
        log.info("signal listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SignalServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- connection handling ----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        delivered = False
        try:
            await self._handle(reader, writer)
            delivered = True
        except (OSError, TimeoutError):
            pass  # the client went away (reset, ENOTCONN on shutdown) or never read the answer
        except asyncio.CancelledError:
            # Only `stop` cancels these tasks. Ending normally spares asyncio's stream callback,
            # which calls `task.exception()` and logs a CancelledError traceback for each one.
            pass
        finally:
            await _close(writer, delivered)
            self._tasks.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = source_key(writer.get_extra_info("peername"))
        conn = _Conn()
        self.stats["connections"] += 1
        verdict = self._table.admit(conn, source)
        if verdict.status:
            kind = "refused_source_connections" if verdict.status == 429 else "refused_full"
            self._count(kind, f"refused a connection from {source}: {verdict.reason}")
            answer: _Answer = (verdict.status, {"error": verdict.reason}, 1.0)
        else:
            if isinstance(verdict.evict, _Conn):
                self._evict(verdict.evict)
            try:
                answer = await self._serve_one(conn, source, reader)
            finally:
                self._table.release(conn)
        # Status only: the path holds the pairing code and the body the SDP, neither is logged.
        log.debug("signal %s -> %d", source, answer[0])
        # Bounded too: a client that never reads would otherwise hold this task and its socket
        # forever in drain() (its slot is free already).
        async with asyncio.timeout(self.request_timeout + _LINGER):
            await _respond(writer, *answer)
            await self._linger(reader, writer)

    async def _serve_one(self, conn: _Conn, source: str, reader: asyncio.StreamReader) -> _Answer:
        try:
            request = await self._read_before_deadline(conn, reader)
            self._table.serving(conn)
            # Rate-check after reading the (bounded) request: answering before reading it would
            # make the kernel reset the connection and the client would never see the 429.
            self.store.check_rate(source, self._clock())
            status, body = await self._route(request, source)
            return status, body, None
        except _HttpError as err:
            if err.status == 503:
                return err.status, {"error": str(err)}, 1.0
            self.stats["bad_requests" if err.status != 408 else "request_timeouts"] += 1
            return err.status, {"error": str(err)}, None
        except SignalError as err:
            self._count_refusal(err, source)
            return err.status, {"error": str(err)}, err.retry_after
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:  # a bug, not the client's fault: one line, rate-limited
            self._count("internal_errors", f"internal error: {type(err).__name__}: {err}")
            return 500, {"error": "internal error"}, None

    async def _read_before_deadline(self, conn: _Conn, reader: asyncio.StreamReader) -> _Request:
        # One deadline for head and body, from the connect: a byte every few seconds does not
        # extend it (slow-loris). Eviction moves the deadline to now (see `_evict`).
        try:
            async with asyncio.timeout(self.request_timeout) as deadline:
                conn.deadline = deadline
                request = await self._read(reader)
        except TimeoutError:
            if conn.evicted:
                raise _HttpError(503, "server busy; retry later") from None
            raise _HttpError(
                408, f"request not complete within {self.request_timeout:g} s"
            ) from None
        except asyncio.IncompleteReadError:
            raise _HttpError(400, "connection closed before the end of the request") from None
        finally:
            conn.deadline = None
        if conn.evicted:  # evicted just as its last byte arrived: its slot is gone already
            raise _HttpError(503, "server busy; retry later")
        return request

    def _evict(self, conn: _Conn) -> None:
        conn.evicted = True
        self._count("evicted_idle", "full: closed the oldest unread connection for a new one")
        if conn.deadline is not None:
            conn.deadline.reschedule(asyncio.get_running_loop().time())

    def _count(self, kind: str, message: str) -> None:
        self.stats[kind] += 1
        self._logs.warning(kind, f"signal: {message}", time.monotonic())

    def _count_refusal(self, err: SignalError, source: str) -> None:
        if isinstance(err, TooManyPairings):
            self._count("refused_source_pairings", f"refused a pairing to {source}: {err}")
        elif isinstance(err, Full):
            self._count("refused_full_pairings", f"refused a pairing to {source}: {err}")
        elif isinstance(err, RateLimited):
            self._count("rate_limited", f"rate-limited {source}")
        elif err.status in (400, 413):
            self.stats["bad_requests"] += 1

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The client may still be sending (a refused or cut request); closing with unread input
        # sends a reset that can destroy the answer before the client reads it. Half-close, then
        # discard input until the client closes too, for at most `_LINGER` seconds. Bounded: past
        # `max_connections` lingering sockets a flood gets no drain (the reset risk is its own).
        if self._lingering >= self._table.max_connections:
            return
        self._lingering += 1
        try:
            if writer.can_write_eof():
                writer.write_eof()
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(_LINGER):
                    while await reader.read(65536):
                        pass
        finally:
            self._lingering -= 1

    async def _read(self, reader: asyncio.StreamReader) -> _Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _HttpError(400, "request head too large") from None
        if len(head) > _MAX_HEAD:
            raise _HttpError(400, "request head too large")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ")
            url = urlsplit(target)  # ValueError on e.g. "//[x/": an unclosed IPv6 literal
        except ValueError:
            raise _HttpError(400, "malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise _HttpError(400, "malformed header")
                headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _HttpError(411, "send a Content-Length body")
        # Any method's body is read (a GET may carry one): unread input would reset the answer.
        body = await self._read_body(reader, headers.get("content-length", "0"))
        return _Request(method, url.path, parse_qs(url.query), body)

    async def _read_body(self, reader: asyncio.StreamReader, length_text: str) -> bytes:
        if not _CONTENT_LENGTH.fullmatch(length_text):
            raise _HttpError(400, "bad Content-Length")
        length = int(length_text)
        # JSON escaping at most doubles the SDP's CR/LF; refuse before reading a byte of excess.
        if length > 2 * self.store.max_sdp_size + 1024:
            raise _HttpError(413, f"description larger than {self.store.max_sdp_size} bytes")
        return await reader.readexactly(length) if length else b""

    # --- routes -----------------------------------------------------------------------------

    async def _route(self, req: _Request, source: str) -> tuple[int, dict[str, Any] | None]:
        parts = [p for p in req.path.split("/") if p]
        if parts == ["healthz"] and req.method == "GET":
            return 200, {"ok": True}
        if parts == ["v1", "pair"]:
            if req.method != "POST":
                raise _HttpError(405, "use POST")
            pairing = self.store.create(self._clock(), source)
            return 201, {"code": pairing.code, "ttl": self.store.ttl}
        if len(parts) == 4 and parts[:2] == ["v1", "pair"] and parts[3] in ("offer", "answer"):
            slot: Slot = "offer" if parts[3] == "offer" else "answer"
            if req.method == "PUT":
                self.store.put(parts[2], slot, _parse_description(req.body, slot), self._clock())
                self._wake()
                return 204, None
            if req.method == "GET":
                return await self._get(parts[2], slot, _wait_arg(req.query, self.poll_timeout))
            raise _HttpError(405, "use PUT or GET")
        raise _HttpError(404, "no such route")

    async def _get(self, code: str, slot: Slot, wait: float) -> tuple[int, dict[str, Any] | None]:
        deadline = self._clock() + wait
        while True:
            # Take the event before looking, so a write in between is not missed.
            changed = self._changed
            sdp = self.store.get(code, slot, self._clock())
            if sdp is not None:
                return 200, {"type": slot, "sdp": sdp}
            remaining = deadline - self._clock()
            if remaining <= 0:
                return 204, None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _wake(self) -> None:
        # One event per generation: every waiter re-checks its own slot; fine at this scale.
        self._changed.set()
        self._changed = asyncio.Event()


def _parse_description(body: bytes, slot: Slot) -> str:
    try:
        data = wire.loads(body)
    except ValueError as err:
        raise _HttpError(400, f"body is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sdp"), str):
        raise _HttpError(400, 'body must be {"type": ..., "sdp": "..."}')
    if data.get("type", slot) != slot:
        raise _HttpError(400, f"type must be {slot!r} in the {slot} slot")
    sdp: str = data["sdp"]
    try:
        sdp.encode()
    except UnicodeEncodeError:  # JSON may escape a lone surrogate ("\ud800"): no UTF-8 text
        raise _HttpError(400, "sdp is not valid UTF-8 text (lone surrogate)") from None
    return sdp


def _wait_arg(query: dict[str, list[str]], cap: float) -> float:
    try:
        wait = float(query.get("wait", ["0"])[0])
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait):
        raise _HttpError(400, "wait must be a number of seconds")
    return max(0.0, min(wait, cap))


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: dict[str, Any] | None,
    retry_after: float | None = None,
) -> None:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nConnection: close\r\n"
    if status in (429, 503):
        # RFC 9110 §10.2.3: delay-seconds, a whole number; at least 1 so clients do back off.
        head += f"Retry-After: {max(1, math.ceil(retry_after or 1.0))}\r\n"
    if data:
        head += "Content-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\n\r\n"
    writer.write(head.encode() + data)
    await writer.drain()


async def _close(writer: asyncio.StreamWriter, delivered: bool) -> None:
    # close() waits for the write buffer to flush: with a client that stopped reading that is
    # forever, so an undelivered answer is aborted and a delivered one gets `_LINGER` seconds.
    if delivered:
        writer.close()
    else:
        writer.transport.abort()
    try:
        async with asyncio.timeout(_LINGER):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except (Exception, asyncio.CancelledError):  # stop() while closing; the error is the peer's
        pass


def serve_signal(config: SignalConfig, *, poll_timeout: float = 25.0) -> SignalServer:
    """The rendezvous per `config.signal`, not started yet: ``await server.start()``."""
    store = SignalStore(
        ttl=config.ttl,
        max_sdp_size=config.max_sdp_size,
        max_pairings_per_source=config.max_pairings_per_source,
    )
    return SignalServer(
        config.listen,
        store=store,
        poll_timeout=poll_timeout,
        request_timeout=config.request_timeout,
        max_connections=config.max_connections,
        max_connections_per_source=config.max_connections_per_source,
    )


def run_signal(config: SignalConfig, *, out: TextIO | None = None) -> None:
    """Run only the rendezvous in the foreground until SIGINT/SIGTERM (`natkit p2p signal`).

    Prints ``listening signal http://HOST:PORT`` once bound (scripts wait for that line).
    """

    async def main() -> None:
        server = serve_signal(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        try:
            print(f"listening signal {server.url}", file=out or sys.stdout, flush=True)
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())
