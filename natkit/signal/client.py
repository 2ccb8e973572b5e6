"""The rendezvous client `natkit p2p` uses: create a pairing, send a description, wait for one.

Plain asyncio streams and one request per connection (the server closes every connection), so
natkit needs no HTTP library. Errors are `NatkitError`s with the exit status the CLI uses: a
signal service that cannot be reached or a code that does not exist is bad input (2); a peer that
never shows up within the deadline means "not connected" (1).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from natkit.addr import parse_hostport
from natkit.errors import NatkitError, UsageError
from natkit.signal import wire

__all__ = ["PeerTimeout", "SignalClient", "SignalUnavailable"]

_MAX_RESPONSE = 1 << 20


class SignalUnavailable(NatkitError):
    """The signal service could not be reached or refused the request."""

    exit_status = 2


class PeerTimeout(NatkitError):
    """The other peer did not send its description in time."""

    exit_status = 1


class SignalClient:
    """Talks to one rendezvous at `url` (``http://HOST:PORT`` or ``https://…``)."""

    def __init__(self, url: str, *, request_timeout: float = 10.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https"):
            raise UsageError(f"signal URL {url!r}: use http://HOST:PORT or https://HOST:PORT")
        default = 443 if parts.scheme == "https" else 80
        try:
            self.host, self.port = parse_hostport(parts.netloc, default_port=default)
        except ValueError as err:
            raise UsageError(f"signal URL {url!r}: {err}") from None
        self.url = url
        self.base = parts.path.rstrip("/")
        self.tls = parts.scheme == "https"
        self.request_timeout = request_timeout

    async def create(self) -> str:
        """A new pairing code."""
        status, body = await self._request("POST", "/v1/pair")
        if status != 201 or not isinstance(body.get("code"), str):
            raise self._refused(status, body)
        code: str = body["code"]
        return code

    async def put(self, code: str, slot: str, sdp: str) -> None:
        """Send our description into `slot` ("offer" or "answer")."""
        payload = json.dumps({"type": slot, "sdp": sdp}).encode()
        status, body = await self._request("PUT", f"/v1/pair/{code}/{slot}", payload)
        if status != 204:
            raise self._refused(status, body)

    async def wait(self, code: str, slot: str, timeout: float, *, poll: float = 20.0) -> str:
        """The description in `slot`, long-polling until it arrives or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerTimeout(f"the other peer sent no {slot} within {timeout:g} s")
            wait = min(poll, remaining)
            path = f"/v1/pair/{code}/{slot}?wait={wait:.1f}"
            status, body = await self._request("GET", path, timeout=wait + self.request_timeout)
            if status == 200 and isinstance(body.get("sdp"), str):
                sdp: str = body["sdp"]
                return sdp
            if status in (429, 503):  # rate-limited, or the server is busy: both say retry
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            elif status != 204:
                raise self._refused(status, body)

    def _refused(self, status: int, body: dict[str, Any]) -> SignalUnavailable:
        reason = body.get("error") or f"HTTP {status}"
        return SignalUnavailable(f"signal service {self.url}: {reason}")

    async def _request(
        self, method: str, path: str, payload: bytes = b"", *, timeout: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        try:
            return await asyncio.wait_for(
                self._exchange(method, path, payload), timeout or self.request_timeout
            )
        except TimeoutError:
            raise SignalUnavailable(f"signal service {self.url}: no response in time") from None
        except OSError as err:
            raise SignalUnavailable(
                f"cannot reach signal service {self.url}: {err.strerror or err}"
            ) from None

    async def _exchange(self, method: str, path: str, payload: bytes) -> tuple[int, dict[str, Any]]:
        context = ssl.create_default_context() if self.tls else None
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context)
        try:
            host = f"[{self.host}]" if ":" in self.host else self.host
            head = (
                f"{method} {self.base}{path} HTTP/1.1\r\nHost: {host}:{self.port}\r\n"
                f"Connection: close\r\nContent-Length: {len(payload)}\r\n"
            )
            if payload:
                head += "Content-Type: application/json\r\n"
            writer.write(head.encode() + b"\r\n" + payload)
            await writer.drain()
            raw = b""
            while len(raw) < _MAX_RESPONSE:  # the server closes after the response
                chunk = await reader.read(65536)
                if not chunk:
                    break
                raw += chunk
        finally:
            writer.close()
        return self._parse(raw)

    def _parse(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        head, _, body = raw.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise SignalUnavailable(f"{self.url} is not a natkit signal service") from None
        if not body:
            return status, {}
        try:
            data = wire.loads(body)  # the server is remote input too: bounded, never a traceback
        except ValueError:
            raise SignalUnavailable(f"{self.url} is not a natkit signal service") from None
        return status, data if isinstance(data, dict) else {}
