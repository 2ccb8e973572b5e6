"""TCP and TLS reachability of STUN/TURN servers: connect, then one Binding over the stream.

When UDP is blocked the question becomes "which stream port gets through, and does a STUN/TURN
server answer there?" (typically 443). Each probe reports: connected (and how it failed: refused
means the host is reachable but nothing listens; a timeout means a filter in between), the TLS
handshake, and whether a Binding request over the connection was answered (RFC 8489 §6.2.2:
STUN over TCP/TLS is framed by the message length). TLS certificates are not verified here:
this is a reachability probe; ``natkit turn check`` verifies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from natkit.addr import Address
from natkit.stun import MAGIC_COOKIE, StunDecodeError, parse_message
from natkit.stun.constants import MessageClass

__all__ = ["StreamProbe", "probe_stream"]


@dataclass(frozen=True, slots=True)
class StreamProbe:
    """One TCP or TLS probe."""

    transport: Literal["tcp", "tls"]
    address: Address
    connected: bool = False
    refused: bool = False
    """Connection refused: reachable host, nothing listening."""
    answered: bool = False
    """A STUN Binding over the connection got a success answer."""
    connect_ms: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["address"] = str(self.address)
        return out


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _binding(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    tid = os.urandom(12)
    writer.write(struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE) + tid)
    await writer.drain()
    header = await reader.readexactly(20)
    length = struct.unpack_from("!H", header, 2)[0]
    body = await reader.readexactly(length)
    try:
        message = parse_message(header + body)
    except StunDecodeError:
        return False
    return message.transaction_id == tid and message.message_class == MessageClass.SUCCESS


async def probe_stream(
    transport: Literal["tcp", "tls"],
    address: Address,
    timeout: float,
    server_hostname: str | None = None,
) -> StreamProbe:
    """Probe one stream endpoint within `timeout` seconds; never raises for network outcomes."""
    start = time.perf_counter()
    context = _context() if transport == "tls" else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                address.host,
                address.port,
                ssl=context,
                server_hostname=(server_hostname or address.host) if context else None,
            ),
            timeout,
        )
    except ConnectionRefusedError:
        return StreamProbe(transport, address, refused=True, error="connection refused")
    except TimeoutError:
        what = "no TCP/TLS handshake" if context else "no answer to SYN"
        return StreamProbe(transport, address, error=f"{what} within {timeout:.1f} s (filtered?)")
    except ssl.SSLError as err:
        return StreamProbe(transport, address, error=f"TLS handshake failed: {err.reason or err}")
    except OSError as err:
        return StreamProbe(transport, address, error=err.strerror or str(err))
    connect_ms = round((time.perf_counter() - start) * 1000, 3)
    left = max(0.05, timeout - (time.perf_counter() - start))
    error = None
    answered = False
    try:
        answered = await asyncio.wait_for(_binding(reader, writer), left)
        if not answered:
            error = "connected, but the answer was not a STUN Binding success"
    except TimeoutError:
        error = "connected, but no STUN answer"
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as err:
        error = f"connected, but the STUN exchange failed ({type(err).__name__})"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 0.2)
    return StreamProbe(transport, address, True, False, answered, connect_ms, error)
