"""The rendezvous over HTTP/1.1: a tiny asyncio server in front of `SignalStore`.

Routes (JSON bodies; every response closes the connection, which keeps the parser trivial and
costs nothing at two exchanges per pairing):

    POST /v1/pair                          201 {"code": CODE, "ttl": SECONDS}
    PUT  /v1/pair/CODE/offer|answer        204; body {"type": "offer"|"answer", "sdp": SDP}
    GET  /v1/pair/CODE/offer|answer?wait=S 200 {"type", "sdp"}; 204 if still empty after S seconds
    GET  /healthz                          200 {"ok": true}

Errors are ``{"error": TEXT}`` with 400 (malformed), 404 (unknown/expired/used code), 409 (slot
already written), 411, 413 (too big), 429 (rate limited), 503 (full). A GET long-polls: it waits
up to `wait` seconds (capped by `poll_timeout`) for the slot to be written, so a peer learns of the
other's description at once without hammering the server.

The server reads at most a fixed header size and `max_sdp_size` worth of body, gives every request
`_READ_TIMEOUT` seconds to arrive (slow-loris), caps concurrent connections, and never logs a body:
SDP carries the peers' addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from natkit.addr import format_hostport, parse_hostport
from natkit.config.model import SignalConfig
from natkit.errors import NatkitError, UsageError
from natkit.signal.store import SignalError, SignalStore, Slot

__all__ = ["SignalServer", "run_signal", "serve_signal"]

log = logging.getLogger("natkit.signal")

_MAX_HEAD = 8192
_READ_TIMEOUT = 10.0
_MAX_CONNECTIONS = 256
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


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


class SignalServer:
    """The rendezvous HTTP service: ``await start()``, ``await stop()`` (or ``async with``)."""

    def __init__(
        self,
        listen: str = "127.0.0.1:8765",
        *,
        store: SignalStore | None = None,
        poll_timeout: float = 25.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listen = listen
        self.store = store if store is not None else SignalStore()
        self.poll_timeout = poll_timeout
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()
        self._connections: set[asyncio.Task[Any]] = set()

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
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
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
        self._connections.add(task)
        try:
            if len(self._connections) > _MAX_CONNECTIONS:
                await _respond(writer, 503, {"error": "too many connections"})
                return
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        try:
            # Rate-check after reading the (bounded) request: answering before reading it would
            # make the kernel reset the connection and the client would never see the 429.
            request = await asyncio.wait_for(self._read(reader), _READ_TIMEOUT)
            self.store.check_rate(source, self._clock())
            status, body = await self._route(request)
        except TimeoutError:
            status, body = 400, {"error": "request not received in time"}
        except _HttpError as err:
            status, body = err.status, {"error": str(err)}
        except SignalError as err:
            status, body = err.status, {"error": str(err)}
        # Status only: the path holds the pairing code and the body the SDP, neither is logged.
        log.debug("signal %s -> %d", source, status)
        await _respond(writer, status, body)
        if status == 413:
            await _linger(reader, writer)

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
        except ValueError:
            raise _HttpError(400, "malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise _HttpError(400, "malformed header")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "transfer-encoding" in headers:
            raise _HttpError(411, "send a Content-Length body")
        if method in ("PUT", "POST") and headers.get("content-length", "0") != "0":
            body = await self._read_body(reader, headers["content-length"])
        url = urlsplit(target)
        return _Request(method, url.path, parse_qs(url.query), body)

    async def _read_body(self, reader: asyncio.StreamReader, length_text: str) -> bytes:
        try:
            length = int(length_text)
        except ValueError:
            raise _HttpError(400, "bad Content-Length") from None
        # JSON escaping at most doubles the SDP's CR/LF; refuse before reading a byte of excess.
        if length < 0 or length > 2 * self.store.max_sdp_size + 1024:
            raise _HttpError(413, f"description larger than {self.store.max_sdp_size} bytes")
        return await reader.readexactly(length)

    # --- routes -----------------------------------------------------------------------------

    async def _route(self, req: _Request) -> tuple[int, dict[str, Any] | None]:
        parts = [p for p in req.path.split("/") if p]
        if parts == ["healthz"] and req.method == "GET":
            return 200, {"ok": True}
        if parts == ["v1", "pair"]:
            if req.method != "POST":
                raise _HttpError(405, "use POST")
            pairing = self.store.create(self._clock())
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
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _HttpError(400, "body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("sdp"), str):
        raise _HttpError(400, 'body must be {"type": ..., "sdp": "..."}')
    if data.get("type", slot) != slot:
        raise _HttpError(400, f"type must be {slot!r} in the {slot} slot")
    sdp: str = data["sdp"]
    return sdp


def _wait_arg(query: dict[str, list[str]], cap: float) -> float:
    try:
        wait = float(query.get("wait", ["0"])[0])
    except ValueError:
        raise _HttpError(400, "wait must be a number of seconds") from None
    return max(0.0, min(wait, cap))


async def _respond(writer: asyncio.StreamWriter, status: int, body: dict[str, Any] | None) -> None:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nConnection: close\r\n"
    if status == 429:
        head += "Retry-After: 1\r\n"
    if data:
        head += "Content-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\n\r\n"
    writer.write(head.encode() + data)
    await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # The refused body may still be arriving; closing with unread data sends a RST that can
    # destroy our 413 before the client reads it. Half-close and discard a bounded amount.
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(1.0):
            for _ in range(64):
                if not await reader.read(65536):
                    break


def serve_signal(config: SignalConfig, *, poll_timeout: float = 25.0) -> SignalServer:
    """The rendezvous per `config.signal`, not started yet: ``await server.start()``."""
    store = SignalStore(ttl=config.ttl, max_sdp_size=config.max_sdp_size)
    return SignalServer(config.listen, store=store, poll_timeout=poll_timeout)


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
