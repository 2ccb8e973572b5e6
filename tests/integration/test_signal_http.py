"""The rendezvous over real loopback HTTP: pairing, long-poll, 404, 413, 429, expiry, 400s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from natkit.config.model import SignalConfig
from natkit.signal import SignalClient, SignalServer, SignalStore, SignalUnavailable, serve_signal

pytestmark = pytest.mark.integration


class Clock:
    """A settable monotonic clock, so expiry is tested without waiting for the TTL."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(test: Callable[[SignalServer], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        server = SignalServer("127.0.0.1:0", **kw)
        async with server:
            await asyncio.wait_for(test(server), 20)

    asyncio.run(main())


async def raw(server: SignalServer, data: bytes) -> tuple[int, dict[str, Any]]:
    host, port = server.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else {}


def test_pairing_exchange_with_long_poll() -> None:
    async def test(server: SignalServer) -> None:
        offerer, answerer = SignalClient(server.url), SignalClient(server.url)
        code = await offerer.create()
        # The offerer long-polls for the answer before it exists; it must wake on the PUT.
        waiting = asyncio.create_task(offerer.wait(code, "answer", 10))
        await offerer.put(code, "offer", "v=0\r\noffer\r\n")
        assert await answerer.wait(code, "offer", 5) == "v=0\r\noffer\r\n"
        await asyncio.sleep(0.1)
        assert not waiting.done()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await answerer.put(code, "answer", "v=0\r\nanswer\r\n")
        assert await waiting == "v=0\r\nanswer\r\n"
        assert loop.time() - start < 1.0
        assert len(server.store) == 0  # forgotten once the answer was read

    run(test)


def test_unknown_code_is_404() -> None:
    async def test(server: SignalServer) -> None:
        status, body = await raw(server, b"GET /v1/pair/abcdefghjk/offer HTTP/1.1\r\n\r\n")
        assert status == 404 and "unknown" in body["error"]
        with pytest.raises(SignalUnavailable, match="unknown or expired pairing code"):
            await SignalClient(server.url).wait("abcdefghjk", "offer", 2)

    run(test)


def test_too_large_is_413_without_reading_the_body() -> None:
    async def test(server: SignalServer) -> None:
        client = SignalClient(server.url)
        code = await client.create()
        with pytest.raises(SignalUnavailable, match="larger than 100 bytes"):
            await client.put(code, "offer", "x" * 101)
        head = f"PUT /v1/pair/{code}/offer HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"
        status, _ = await raw(server, head.encode())  # no body sent: refused on the header
        assert status == 413
        # A client that sends the whole big body still reads the 413 (no reset).
        status, _ = await raw(server, head.encode() + b"x" * 100000)
        assert status == 413

    run(test, store=SignalStore(max_sdp_size=100))


def test_rate_limited_is_429() -> None:
    async def test(server: SignalServer) -> None:
        statuses = [(await raw(server, b"POST /v1/pair HTTP/1.1\r\n\r\n"))[0] for _ in range(5)]
        assert statuses == [201, 201, 201, 429, 429]

    run(test, store=SignalStore(rate=0.01, burst=3))


def test_expired_code_is_404() -> None:
    clock = Clock()

    async def test(server: SignalServer) -> None:
        client = SignalClient(server.url)
        code = await client.create()
        await client.put(code, "offer", "o")
        clock.now += 61
        with pytest.raises(SignalUnavailable, match="unknown or expired"):
            await client.wait(code, "offer", 2)

    run(test, store=SignalStore(ttl=60), clock=clock)


def test_long_poll_returns_204_when_nothing_arrives() -> None:
    async def test(server: SignalServer) -> None:
        code = await SignalClient(server.url).create()
        request = f"GET /v1/pair/{code}/offer?wait=0.2 HTTP/1.1\r\n\r\n"
        status, _ = await raw(server, request.encode())
        assert status == 204

    run(test)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
        (b"GET /v1/pair HTTP/1.1\r\n\r\n", 405),
        (b"POST /v1/pair HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 200),
    ],
)
def test_malformed_requests_get_one_clear_status(request_bytes: bytes, status: int) -> None:
    async def test(server: SignalServer) -> None:
        assert (await raw(server, request_bytes))[0] == status

    run(test)


def test_bad_json_and_wrong_type_are_400() -> None:
    async def test(server: SignalServer) -> None:
        code = await SignalClient(server.url).create()
        for body in (b"not json", b'{"type": "answer", "sdp": "x"}', b'{"sdp": 5}'):
            head = f"PUT /v1/pair/{code}/offer HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n"
            assert (await raw(server, head.encode() + body))[0] == 400

    run(test)


def test_serve_signal_uses_the_config_and_stop_ends_waiters() -> None:
    async def main() -> None:
        server = serve_signal(SignalConfig(listen="127.0.0.1:0", ttl=5.0, max_sdp_size=10))
        assert server.store.ttl == 5.0 and server.store.max_sdp_size == 10
        await server.start()
        code = await SignalClient(server.url).create()
        waiter = asyncio.create_task(SignalClient(server.url).wait(code, "offer", 30))
        await asyncio.sleep(0.1)
        await asyncio.wait_for(server.stop(), 2)  # a pending long-poll must not block stop
        with pytest.raises(SignalUnavailable):
            await asyncio.wait_for(waiter, 5)

    asyncio.run(main())


def test_unreachable_service_is_one_clear_error() -> None:
    async def main() -> None:
        with pytest.raises(SignalUnavailable, match="cannot reach signal service"):
            await SignalClient("http://127.0.0.1:9", request_timeout=2).create()

    asyncio.run(main())
