"""The rendezvous under hostile clients, on real loopback sockets from several source IPs.

Linux answers the whole 127.0.0.0/8 on `lo`, so binding a client to 127.0.0.2 or 127.0.0.3 gives
the server a different source address: the per-source caps are tested with real peers. Every
refusal must be an HTTP answer the client can read (a reset would make a client report "cannot
reach"), and no remote input may end a connection without one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from natkit.signal import SignalClient, SignalServer, SignalStore, SignalUnavailable

pytestmark = pytest.mark.integration

FLOODER = "127.0.0.1"
LEGIT = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        self.body: dict[str, Any] = json.loads(body) if body else {}


def run(test: Callable[[SignalServer], Awaitable[None]], **kw: Any) -> list[dict[str, Any]]:
    """Run `test` against a fresh server; returns what reached the loop's exception handler."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        async with SignalServer("127.0.0.1:0", **kw) as server:
            await asyncio.wait_for(test(server), 9)
        assert server.stats["internal_errors"] == 0

    asyncio.run(main())
    return errors


async def connect(
    server: SignalServer, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.address
    return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def request(server: SignalServer, data: bytes, source: str = FLOODER) -> Answer:
    reader, writer = await connect(server, source)
    try:
        writer.write(data)
        await writer.drain()
        return Answer(await asyncio.wait_for(reader.read(), 3))
    finally:
        writer.close()


def put(code: str, body: bytes) -> bytes:
    head = f"PUT /v1/pair/{code}/offer HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def hold(server: SignalServer, source: str, count: int) -> list[Conn]:
    """`count` connections from `source` that never send a byte (kept open by the caller:
    a StreamWriter closes its socket when garbage-collected)."""
    conns = [await connect(server, source) for _ in range(count)]
    await asyncio.sleep(0.2)  # let the server accept them all
    return conns


async def outcome(conn: Conn, timeout: float) -> str:
    """What one held connection got: an HTTP status, "open" (nothing yet) or "reset"."""
    reader, writer = conn
    try:
        data = await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        return "open"
    except ConnectionResetError:
        return "reset"
    finally:
        writer.close()
    return str(Answer(data).status) if data else "closed without an answer"


def test_one_source_holding_unread_connections_cannot_keep_others_out() -> None:
    async def test(server: SignalServer) -> None:
        held = await hold(server, FLOODER, 300)
        for source in LEGIT:
            answer = await request(server, b"POST /v1/pair HTTP/1.1\r\n\r\n", source)
            assert answer.status == 201, (source, answer.status, answer.body)
        outcomes = await asyncio.gather(*(outcome(c, 1.0) for c in held))
        # The flooder's connections over its cap were answered 429 at once; none was reset.
        refused = [o for o in outcomes if o == "429"]
        assert len(refused) >= 300 - 32 and set(outcomes) <= {"429", "open"}, set(outcomes)
        assert server.stats["refused_source_connections"] == len(refused)

    assert run(test) == []


def test_a_full_server_evicts_the_oldest_unread_connection_for_a_new_one() -> None:
    async def test(server: SignalServer) -> None:
        held = [c for i in range(6) for c in await hold(server, f"127.0.1.{i}", 5)]
        for source in LEGIT:
            answer = await request(server, b"POST /v1/pair HTTP/1.1\r\n\r\n", source)
            assert answer.status == 201, (source, answer.status, answer.body)
        outcomes = await asyncio.gather(*(outcome(c, 1.0) for c in held))
        # 20 slots: the last 10 held connections evicted the 10 oldest, the first legitimate
        # client one more; it then freed its slot for the next. Oldest first, nothing refused.
        assert outcomes == ["503"] * 11 + ["open"] * 19, " ".join(outcomes)
        assert server.stats["evicted_idle"] == 11 and server.stats["refused_full"] == 0

    assert run(test, max_connections=20, max_connections_per_source=5) == []


def test_full_of_long_polls_answers_503_with_retry_after() -> None:
    async def test(server: SignalServer) -> None:
        code = (await request(server, b"POST /v1/pair HTTP/1.1\r\n\r\n")).body["code"]
        poll = f"GET /v1/pair/{code}/offer?wait=2 HTTP/1.1\r\n\r\n".encode()
        polls = [asyncio.create_task(request(server, poll, source)) for source in LEGIT[:4]]
        await asyncio.sleep(0.3)
        # Every slot holds a request being served: nothing to evict, the newcomer waits.
        answer = await request(server, b"GET /healthz HTTP/1.1\r\n\r\n", LEGIT[4])
        assert answer.status == 503 and answer.headers["retry-after"] == "1", answer.headers
        assert [a.status for a in await asyncio.gather(*polls)] == [204] * 4

    assert run(test, max_connections=4) == []


def test_one_source_cannot_fill_the_pairing_table() -> None:
    async def test(server: SignalServer) -> None:
        pair = b"POST /v1/pair HTTP/1.1\r\n\r\n"
        answers = [await request(server, pair, FLOODER) for _ in range(40)]
        statuses = [a.status for a in answers]
        assert statuses.count(201) <= 20 and statuses.count(503) == 0, statuses
        assert "too many pairings" in answers[-1].body["error"]
        assert answers[-1].headers["retry-after"]
        # Everyone else still pairs, offer to answer.
        code = (await request(server, pair, LEGIT[0])).body["code"]
        offer = json.dumps({"type": "offer", "sdp": "v=0"}).encode()
        assert (await request(server, put(code, offer), LEGIT[0])).status == 204
        got = await request(
            server, f"GET /v1/pair/{code}/offer HTTP/1.1\r\n\r\n".encode(), LEGIT[1]
        )
        assert got.status == 200 and got.body["sdp"] == "v=0"
        assert server.stats["refused_source_pairings"] == statuses.count(429)

    assert run(test, store=SignalStore(max_pairings=30)) == []


def test_a_full_pairing_table_is_503_with_retry_after() -> None:
    async def test(server: SignalServer) -> None:
        for source in LEGIT[:3]:
            assert (await request(server, b"POST /v1/pair HTTP/1.1\r\n\r\n", source)).status == 201
        answer = await request(server, b"POST /v1/pair HTTP/1.1\r\n\r\n", LEGIT[3])
        assert answer.status == 503 and 59 <= int(answer.headers["retry-after"]) <= 60

    assert run(test, store=SignalStore(max_pairings=3, ttl=60)) == []


async def trickle(server: SignalServer, data: bytes) -> tuple[float, Answer | str]:
    """Send `data` one byte every 0.5 s; when and what the server answered."""
    reader, writer = await connect(server, FLOODER)
    start = time.monotonic()

    async def send() -> None:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.5)

    sender = asyncio.create_task(send())
    try:
        raw = await asyncio.wait_for(reader.read(), 8)
        return time.monotonic() - start, Answer(raw) if raw else "no answer"
    except (TimeoutError, ConnectionResetError) as err:
        return time.monotonic() - start, type(err).__name__
    finally:
        sender.cancel()
        writer.close()


def test_slowloris_is_cut_at_the_request_deadline() -> None:
    async def test(server: SignalServer) -> None:
        head = b"POST /v1/pair HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n\r\n"
        body = b"PUT /v1/pair/abcdefghjk/offer HTTP/1.1\r\nContent-Length: 40\r\n\r\n" + b"x" * 40
        # The deadline covers the whole request: a byte every 0.5 s does not extend it.
        results = await asyncio.gather(trickle(server, head), trickle(server, body))
        for elapsed, answer in results:
            assert isinstance(answer, Answer) and answer.status == 408, answer
            assert 4.5 <= elapsed <= 6.5, elapsed
        assert (await request(server, b"GET /healthz HTTP/1.1\r\n\r\n")).status == 200
        assert server.stats["request_timeouts"] == 2

    assert run(test) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b'{"type": "offer", "sdp": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested"),
        (b'{"type": "offer", "sdp": "v=0 \\ud800"}', "UTF-8"),
        (b'{"type": "offer", "sdp": "\\udfff\\ud800"}', "UTF-8"),
    ],
    ids=["depth-100k", "depth-10k-in-sdp", "lone-high-surrogate", "reversed-pair"],
)
def test_hostile_json_is_400_with_a_reason(body: bytes, reason: str) -> None:
    async def test(server: SignalServer) -> None:
        code = (await request(server, b"POST /v1/pair HTTP/1.1\r\n\r\n")).body["code"]
        answer = await request(server, put(code, body))
        assert answer.status == 400 and reason in answer.body["error"], answer.body
        # The server survives and the pairing is still usable.
        offer = json.dumps({"type": "offer", "sdp": "v=0"}).encode()
        assert (await request(server, put(code, offer))).status == 204

    assert run(test, store=SignalStore(max_sdp_size=200_000)) == []


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET http://[::1/v1 HTTP/1.1\r\n\r\n", 400),
        (b"GET //[x/healthz HTTP/1.1\r\n\r\n", 400),
        (b"POST /v1/pair HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n0123456789", 400),
        (b"POST /v1/pair HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
        (b"POST /v1/pair HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /v1/pair/abcdefghjk/offer?wait=nan HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 200),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 400),
        (put("abcdefghjk", b"\xff\xfe\x00"), 400),
        (put("abcdefghjk", b'{"sdp": "x", "n": ' + b"1" * 5000 + b"}"), 400),
        (b"\x00\xff\r\n\r\n", 400),
    ],
)
def test_hostile_request_heads_get_an_answer(data: bytes, status: int) -> None:
    async def test(server: SignalServer) -> None:
        assert (await request(server, data)).status == status
        assert (await request(server, b"GET /healthz HTTP/1.1\r\n\r\n")).status == 200

    assert run(test) == []


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 201 Created\r\n\r\n" + b"[" * 50_000 + b"]" * 50_000,
        b"HTTP/1.1 201 Created\r\n\r\n\xff\xfe",
        b"HTTP/1.1 " + b"9" * 5000 + b" X\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ],
    ids=["nested", "not-utf8", "huge-status", "not-http"],
)
def test_the_client_reports_a_hostile_server_in_one_line(response: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            client = SignalClient(f"http://127.0.0.1:{port}", request_timeout=3)
            with pytest.raises(SignalUnavailable, match="is not a natkit signal service"):
                await client.create()

    asyncio.run(main())


def test_a_waiting_client_retries_when_the_server_is_busy() -> None:
    async def test(server: SignalServer) -> None:
        code = (await request(server, b"POST /v1/pair HTTP/1.1\r\n\r\n")).body["code"]
        poll = f"GET /v1/pair/{code}/answer?wait=1 HTTP/1.1\r\n\r\n".encode()
        polls = [asyncio.create_task(request(server, poll, source)) for source in LEGIT[:2]]
        await asyncio.sleep(0.2)
        # Both slots are serving: the client's first GET is a 503; it must retry, not give up.
        waiting = asyncio.create_task(SignalClient(server.url).wait(code, "offer", 6))
        await asyncio.gather(*polls)
        await asyncio.sleep(0.5)
        offer = json.dumps({"type": "offer", "sdp": "v=0"}).encode()
        assert (await request(server, put(code, offer), LEGIT[2])).status == 204
        assert await waiting == "v=0"
        assert server.stats["refused_full"] >= 1

    assert run(test, max_connections=2) == []


def test_a_client_that_never_reads_its_answer_is_let_go() -> None:
    async def test(server: SignalServer) -> None:
        code = (await request(server, b"POST /v1/pair HTTP/1.1\r\n\r\n")).body["code"]
        offer = json.dumps({"type": "offer", "sdp": "x" * 6_000_000}).encode()
        assert (await request(server, put(code, offer))).status == 204
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((LEGIT[0], 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, server.address)
        _, writer = await asyncio.open_connection(sock=sock)
        writer.write(f"GET /v1/pair/{code}/offer HTTP/1.1\r\n\r\n".encode())
        await asyncio.sleep(0.5)
        assert len(server._tasks) == 1  # stuck writing 6 MB to a client that reads nothing
        await asyncio.sleep(2.5)  # request_timeout + linger, then the server gives up
        assert not server._tasks
        writer.close()

    assert run(test, request_timeout=1.0, store=SignalStore(max_sdp_size=8_000_000)) == []


def test_a_long_poll_outlives_the_request_deadline() -> None:
    async def test(server: SignalServer) -> None:
        code = (await request(server, b"POST /v1/pair HTTP/1.1\r\n\r\n")).body["code"]
        poll = f"GET /v1/pair/{code}/offer?wait=2.5 HTTP/1.1\r\n\r\n".encode()
        start = time.monotonic()
        answer = await request(server, poll, LEGIT[0])
        # The deadline covers receiving the request, not the wait the client asked for.
        assert answer.status == 204 and time.monotonic() - start >= 2.4

    assert run(test, request_timeout=1.0) == []
