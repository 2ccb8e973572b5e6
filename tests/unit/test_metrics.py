"""Metrics: counter layout, shared-memory rows, Prometheus text, the /metrics endpoint."""

from __future__ import annotations

import asyncio
import re

from natkit import metrics
from natkit.metrics import (
    COUNTERS,
    MetricsServer,
    SharedCounters,
    WorkerCounters,
    error_index,
    ratelimited_index,
    render,
    request_index,
)


def test_indices_are_distinct_and_in_range() -> None:
    indices = [
        request_index(t, f, r)
        for t in metrics.TRANSPORTS
        for f in metrics.FAMILIES
        for r in metrics.RESULTS
    ]
    indices += [ratelimited_index(t) for t in metrics.TRANSPORTS]
    indices += [error_index(k) for k in metrics.ERROR_KINDS] + [metrics.CONNECTIONS]
    indices += [
        metrics.turn_refusal_index(reason, method)
        for reason, _ in metrics.TURN_REASONS
        for method in metrics.TURN_METHODS
    ]
    indices += [
        metrics.turn_allocation_index(t, f) for t in metrics.TRANSPORTS for f in metrics.FAMILIES
    ]
    indices += [metrics.TURN_PERMISSIONS, metrics.TURN_CHANNELS]
    indices += [metrics.TURN_PACKETS_TO_PEER, metrics.TURN_BYTES_TO_PEER]
    indices += [metrics.TURN_PACKETS_TO_CLIENT, metrics.TURN_BYTES_TO_CLIENT]
    indices += [metrics.turn_outcome_index(o) for o in metrics.TURN_OUTCOMES]
    indices += [metrics.CLUSTER_MEMBERS, metrics.CLUSTER_ONLINE]
    indices += [metrics.cluster_index(n) for n, _ in metrics.CLUSTER_COUNTERS]
    indices += [metrics.TURN_PUMP_ROUTES]
    assert sorted(indices) == list(range(COUNTERS))


def test_rows_sum_over_workers_and_survive_restart() -> None:
    shared = SharedCounters(2)
    a, b = WorkerCounters(shared.array, 0), WorkerCounters(shared.array, 1)
    i = request_index("udp", 4, "success")
    a.values[i] += 3
    b.values[i] += 4
    a.values[metrics.CONNECTIONS] = 5
    a.values[metrics.TURN_CHANNELS] = 2
    a.values[metrics.turn_allocation_index("tls", 6)] = 1
    a.flush()
    b.flush()
    assert shared.totals()[i] == 7
    restarted = WorkerCounters(shared.array, 0)  # a new process for worker 0
    assert restarted.values[i] == 3  # counters continue, never go backwards
    assert restarted.values[metrics.CONNECTIONS] == 0  # a gauge starts afresh
    assert shared.totals()[metrics.CONNECTIONS] == 0
    assert restarted.values[metrics.TURN_CHANNELS] == 0  # so do the TURN gauges
    assert shared.totals()[metrics.turn_allocation_index("tls", 6)] == 0


def test_render_is_prometheus_text() -> None:
    totals = [0] * COUNTERS
    totals[request_index("tcp", 6, "error")] = 2
    totals[ratelimited_index("udp")] = 9
    totals[metrics.turn_allocation_index("tcp", 4)] = 3
    totals[metrics.TURN_BYTES_TO_CLIENT] = 1200
    totals[metrics.turn_outcome_index("expired")] = 4
    text = render(totals, [(0, 1), (1, 2)])
    assert 'natkit_stun_requests_total{transport="tcp",family="ipv6",result="error"} 2' in text
    assert 'natkit_stun_ratelimited_total{transport="udp"} 9' in text
    assert "natkit_workers 2" in text
    assert 'natkit_turn_allocations{transport="tcp",family="ipv4"} 3' in text
    assert 'natkit_turn_relayed_bytes_total{direction="peer_to_client"} 1200' in text
    assert 'natkit_turn_allocation_outcomes_total{outcome="expired"} 4' in text
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \d+(\.\d+)?$')
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or sample.match(line), line
    # every sample belongs to a declared family
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")
    } <= declared


def test_rss_of_self_is_positive() -> None:
    assert metrics.rss_bytes() > 1 << 20
    assert metrics.rss_bytes(2**22 + 12345) == 0  # no such process


def test_http_endpoint() -> None:
    ready = [True]

    async def scenario() -> tuple[bytes, ...]:
        server = MetricsServer("127.0.0.1:0", lambda: "natkit_workers 1\n", lambda: ready[0])
        await server.start()
        assert server._server is not None
        port = server._server.sockets[0].getsockname()[1]

        async def get(path: str) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
            return data

        try:
            answers = [await get(p) for p in ("/metrics", "/nope", "/healthz", "/readyz")]
            ready[0] = False  # e.g. draining
            return (*answers, await get("/readyz"), await get("/healthz"))
        finally:
            await server.close()

    ok, missing, healthy, is_ready, draining, still_healthy = asyncio.run(scenario())
    assert ok.startswith(b"HTTP/1.1 200 OK") and ok.endswith(b"\r\n\r\nnatkit_workers 1\n")
    assert b"text/plain; version=0.0.4" in ok
    assert missing.startswith(b"HTTP/1.1 404")
    assert healthy.startswith(b"HTTP/1.1 200 OK") and still_healthy.startswith(b"HTTP/1.1 200 OK")
    assert is_ready.startswith(b"HTTP/1.1 200 OK")
    assert draining.startswith(b"HTTP/1.1 503 Service Unavailable")
