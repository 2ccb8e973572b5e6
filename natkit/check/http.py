"""The HTTP/1.1 plumbing of natkit check's server: one bounded request per connection, answers
with the page's security headers. Remote input: the head is at most `MAX_HEAD` bytes, a body
`MAX_BODY` bytes (the caller bounds the time), chunked bodies are refused (411).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from natkit.addr import Address

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "REQUEST_TIMEOUT",
    "HttpError",
    "Request",
    "mask",
    "read_request",
    "respond",
]

MAX_HEAD = 8192
MAX_BODY = 32768
REQUEST_TIMEOUT = 5.0
_CONTENT_LENGTH = re.compile(r"[0-9]{1,9}")
_REASONS = {
    200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
    503: "Service Unavailable",
}  # fmt: skip
# No third-party content, nothing inline: the page is its three files and the API.
_SECURITY = (
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
    "X-Frame-Options: DENY\r\n"
)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: bytes
    local: Address  # the address the browser reached (the one to name in URLs)
    source: str


def mask(source: str) -> str:
    """An address for the log: the /24 or /48 it is in, never the visitor's own address."""
    try:
        ip = ipaddress.ip_address(source.split("/")[0])
    except ValueError:
        return "?"
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(400, "request head too large") from None
    if len(head) > MAX_HEAD:
        raise HttpError(400, "request head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[1].startswith("/"):
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if line and not sep:
            raise HttpError(400, "malformed header")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(411, "send a Content-Length body")
    length = headers.get("content-length", "0")
    if not _CONTENT_LENGTH.fullmatch(length):
        raise HttpError(400, "bad Content-Length")
    if int(length) > MAX_BODY:
        raise HttpError(413, f"body larger than {MAX_BODY} bytes")
    body = await reader.readexactly(int(length)) if int(length) else b""
    local = writer.get_extra_info("sockname")
    return Request(
        parts[0], parts[1].split("?")[0], body, Address(str(local[0]), int(local[1])), source
    )


async def respond(
    writer: asyncio.StreamWriter, status: int, body: Any, kind: str = "application/json"
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nConnection: close\r\n"
        f"Content-Type: {kind}\r\nContent-Length: {len(data)}\r\nCache-Control: no-store\r\n"
        + _SECURITY
    )
    if status in (429, 503):
        head += "Retry-After: 10\r\n"
    writer.write(head.encode() + b"\r\n" + data)
    async with asyncio.timeout(REQUEST_TIMEOUT):
        await writer.drain()
