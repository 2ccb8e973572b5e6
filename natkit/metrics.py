"""Server metrics: per-worker counters in shared memory, summed and exposed by the parent.

Theory of operation: every worker owns one row of a shared array of unsigned 64-bit counters and
is its only writer, so no lock is needed. The hot path never touches shared memory: it bumps a
plain Python list (`WorkerCounters.values`) and `flush()` copies the row out a few times a second.
The parent sums the rows when Prometheus scrapes. A restarted worker starts from the values its
predecessor flushed, so counters never go backwards (Prometheus would read that as a reset).

The exposition is the Prometheus text format 0.0.4, served by a tiny asyncio HTTP server: one
GET a scrape does not justify the prometheus-client dependency and its multiprocess mode's
file-per-process scheme.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from natkit.addr import parse_hostport

__all__ = [
    "CLUSTER_COUNTERS",
    "CLUSTER_GAUGES",
    "CLUSTER_MEMBERS",
    "CLUSTER_ONLINE",
    "COUNTERS",
    "FAMILIES",
    "RESULTS",
    "TRANSPORTS",
    "TURN_BYTES_TO_CLIENT",
    "TURN_BYTES_TO_PEER",
    "TURN_CHANNELS",
    "TURN_METHODS",
    "TURN_OUTCOMES",
    "TURN_PACKETS_TO_CLIENT",
    "TURN_PACKETS_TO_PEER",
    "TURN_PERMISSIONS",
    "TURN_PUMP_ROUTES",
    "TURN_REASONS",
    "MetricsServer",
    "SharedCounters",
    "WorkerCounters",
    "cluster_index",
    "cluster_ready",
    "error_index",
    "ratelimited_index",
    "render",
    "render_signal",
    "request_index",
    "rss_bytes",
    "turn_allocation_index",
    "turn_outcome_index",
    "turn_refusal_index",
]

TRANSPORTS = ("udp", "tcp", "tls")
FAMILIES = (4, 6)
RESULTS = ("success", "error", "ignored")
"""success: answered with a success response; error: with an error response (e.g. 420);
ignored: nothing sent (malformed, indication, response, ChannelData without TURN)."""
ERROR_KINDS = (
    "internal",
    "send",
    "framing",
    "connection_limit",
    "idle_timeout",
    "source_limit",  # a TCP/TLS connection refused: its source held its share of the slots
    "frame_timeout",  # a stream cut: a frame did not complete within stream.frame_timeout
    "evicted",  # an idle or mid-frame stream closed to make room for a new connection
    "proxy_missing",  # a trusted load balancer's connection opened without a PROXY header
    "proxy_invalid",  # ... with a malformed or unusable PROXY v2 header
)

_N_REQUESTS = len(TRANSPORTS) * len(FAMILIES) * len(RESULTS)
_RATELIMITED = _N_REQUESTS
_ERRORS = _RATELIMITED + len(TRANSPORTS)
CONNECTIONS = _ERRORS + len(ERROR_KINDS)
"""Gauge: TCP/TLS connections open in this worker."""

# TURN series (builtin engine). Issue 12's full TURN set appends its own blocks after this one:
# a block is a base index + a fixed label table, so adding one never renumbers another.
TURN_METHODS = ("allocate", "refresh", "create_permission", "channel_bind", "other")
TURN_REASONS: tuple[tuple[str, int], ...] = (
    ("challenge", 401),
    ("credentials", 401),
    ("bad_request", 400),
    ("unknown_attribute", 420),
    ("peer_policy", 403),
    ("allocation_mismatch", 437),
    ("stale_nonce", 438),
    ("family_unsupported", 440),
    ("wrong_user", 441),
    ("unsupported_transport", 442),
    ("family_mismatch", 443),
    ("quota", 486),
    ("capacity", 508),
    ("alternate_server", 300),
    ("draining", 508),
    ("downgrade", 400),
    ("connection_exists", 446),
    ("connection_failed", 447),
)
"""(reason, error code) of every TURN error answer counted (`natkit.turn.refusals` explains
each answer as one of them)."""
_TURN_REFUSALS = CONNECTIONS + 1
_TURN_ALLOCATIONS = _TURN_REFUSALS + len(TURN_REASONS) * len(TURN_METHODS)
"""Gauges: allocations active by (transport, family) of the client's 5-tuple."""
TURN_PERMISSIONS = _TURN_ALLOCATIONS + len(TRANSPORTS) * len(FAMILIES)
"""Gauge: permissions installed (expired ones until the sweep drops them)."""
TURN_CHANNELS = TURN_PERMISSIONS + 1
"""Gauge: channel bindings (including those in their RFC 8656 §12 quarantine)."""
TURN_DIRECTIONS = ("client_to_peer", "peer_to_client")
_TURN_RELAYED = TURN_CHANNELS + 1
TURN_PACKETS_TO_PEER = _TURN_RELAYED
TURN_BYTES_TO_PEER = _TURN_RELAYED + 1
TURN_PACKETS_TO_CLIENT = _TURN_RELAYED + 2
TURN_BYTES_TO_CLIENT = _TURN_RELAYED + 3
TURN_OUTCOMES = ("created", "refreshed", "expired", "deleted")
"""created: a relay socket bound and announced; refreshed: a Refresh with a lifetime > 0;
expired: the lifetime ran out (RFC 8656 §7); deleted: Refresh 0, the TCP/TLS connection closed,
a replaced allocation or shutdown."""
_TURN_OUTCOMES = _TURN_RELAYED + 4
_CLUSTER = _TURN_OUTCOMES + len(TURN_OUTCOMES)
CLUSTER_MEMBERS = _CLUSTER
"""Gauge: workers that are fleet members (``cluster.redis``; 0: no cluster)."""
CLUSTER_ONLINE = _CLUSTER + 1
"""Gauge: of those, the ones whose last heartbeat reached Redis."""
CLUSTER_COUNTERS = (
    ("local_admitted", "allocations admitted on local quotas without Redis (fail-open)"),
    ("local_refused", "allocations refused without Redis' word (fail-closed, local limits)"),
    ("redirects", "Allocates answered 300 Try Alternate (node full or draining)"),
    ("revoked_ended", "allocations ended because their user or credential was revoked"),
    ("redis_errors", "Redis calls that failed or timed out"),
    ("outages", "times Redis became unreachable"),
)
_CLUSTER_COUNTERS = _CLUSTER + 2
TURN_PUMP_ROUTES = _CLUSTER_COUNTERS + len(CLUSTER_COUNTERS)
"""Gauge: bound channels the relay pump relays (``turn.pump``, `natkit.turn.pump`)."""
COUNTERS = TURN_PUMP_ROUTES + 1
"""Width of one worker's row."""
TURN_GAUGES = range(_TURN_ALLOCATIONS, TURN_CHANNELS + 1)
CLUSTER_GAUGES = (CLUSTER_MEMBERS, CLUSTER_ONLINE)
_ALLOCATION_GAUGES = range(_TURN_ALLOCATIONS, TURN_PERMISSIONS)
"""Gauges a restarted worker starts from zero (it holds no allocation)."""

_REASON_INDEX = {reason: i for i, (reason, _) in enumerate(TURN_REASONS)}


def cluster_index(name: str) -> int:
    """Counter of one `CLUSTER_COUNTERS` entry."""
    return _CLUSTER_COUNTERS + [n for n, _ in CLUSTER_COUNTERS].index(name)


def turn_refusal_index(reason: str, method: str) -> int:
    """Counter of one (reason, method) pair; the code label follows from the reason."""
    return _TURN_REFUSALS + _REASON_INDEX[reason] * len(TURN_METHODS) + TURN_METHODS.index(method)


def turn_allocation_index(transport: str, family: int) -> int:
    return _TURN_ALLOCATIONS + TRANSPORTS.index(transport) * len(FAMILIES) + FAMILIES.index(family)


def turn_outcome_index(outcome: str) -> int:
    return _TURN_OUTCOMES + TURN_OUTCOMES.index(outcome)


def request_index(transport: str, family: int, result: str) -> int:
    t, f, r = TRANSPORTS.index(transport), FAMILIES.index(family), RESULTS.index(result)
    return (t * len(FAMILIES) + f) * len(RESULTS) + r


def ratelimited_index(transport: str) -> int:
    return _RATELIMITED + TRANSPORTS.index(transport)


def error_index(kind: str) -> int:
    return _ERRORS + ERROR_KINDS.index(kind)


class SharedCounters:
    """`max_workers` rows of `COUNTERS` u64 in anonymous shared memory (inherited by workers)."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.array: Any = multiprocessing.RawArray(ctypes.c_uint64, max_workers * COUNTERS)

    def row(self, worker: int) -> list[int]:
        base = worker * COUNTERS
        return list(self.array[base : base + COUNTERS])

    def totals(self) -> list[int]:
        totals = [0] * COUNTERS
        for worker in range(self.max_workers):
            for i, value in enumerate(self.row(worker)):
                totals[i] += value
        return totals


class WorkerCounters:
    """A worker's private copy of its row; hot paths do ``counters.values[i] += 1``."""

    def __init__(self, array: Any, worker: int) -> None:
        self._array = array
        self._base = worker * COUNTERS
        self.values: list[int] = list(array[self._base : self._base + COUNTERS])
        self.values[CONNECTIONS] = 0  # a gauge: a restarted worker holds no connections
        for i in (*TURN_GAUGES, *CLUSTER_GAUGES, TURN_PUMP_ROUTES):
            self.values[i] = 0
        self.flush()

    def flush(self) -> None:
        self._array[self._base : self._base + COUNTERS] = self.values

    def turn_allocations_total(self) -> int:
        """Allocations active over every worker, as last flushed (a draining worker keeps its
        listeners open while any sibling still relays: the kernel may hash anyone to it)."""
        array, rows = self._array, len(self._array) // COUNTERS
        return sum(array[r * COUNTERS + i] for r in range(rows) for i in _ALLOCATION_GAUGES)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process from /proc (0 if it is gone or /proc is absent)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _family_label(family: int) -> str:
    return f"ipv{family}"


def render(
    totals: Sequence[int],
    workers: Iterable[tuple[int, int]],
    kernel: Mapping[str, int] | None = None,
) -> str:
    """Prometheus text exposition of summed counters; `workers` is (index, pid) of live workers;
    `kernel` the kernel fast path's counters (`natkit.fastpath.COUNTER_NAMES`), if it runs:
    its answers join the same series with ``path="kernel"``."""
    workers = list(workers)
    out: list[str] = []

    def head(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    head(
        "natkit_stun_requests_total",
        "counter",
        "STUN messages received, by transport, address family and result.",
    )
    for t in TRANSPORTS:
        for f in FAMILIES:
            for r in RESULTS:
                value = totals[request_index(t, f, r)]
                out.append(
                    f'natkit_stun_requests_total{{transport="{t}",family="{_family_label(f)}",'
                    f'result="{r}"}} {value}'
                )
    if kernel is not None:
        for f in FAMILIES:
            value = kernel.get(f"answered_v{f}", 0)
            out.append(
                f'natkit_stun_requests_total{{transport="udp",family="{_family_label(f)}",'
                f'result="success",path="kernel"}} {value}'
            )
    head(
        "natkit_stun_ratelimited_total",
        "counter",
        "STUN messages dropped by the per-source rate limit before parsing.",
    )
    for t in TRANSPORTS:
        out.append(
            f'natkit_stun_ratelimited_total{{transport="{t}"}} {totals[ratelimited_index(t)]}'
        )
    if kernel is not None:
        limited = kernel.get("rate_limited", 0)
        out.append(f'natkit_stun_ratelimited_total{{transport="udp",path="kernel"}} {limited}')
    head(
        "natkit_stun_errors_total",
        "counter",
        "Server-side errors: internal, send failures, stream framing, connection caps (global and "
        "per source), idle and frame timeouts, evictions of idle streams for new ones.",
    )
    for kind in ERROR_KINDS:
        out.append(f'natkit_stun_errors_total{{kind="{kind}"}} {totals[error_index(kind)]}')
    head("natkit_stun_connections", "gauge", "Open TCP/TLS connections over all workers.")
    out.append(f"natkit_stun_connections {totals[CONNECTIONS]}")
    _render_turn(totals, head, out)
    if totals[CLUSTER_MEMBERS]:
        _render_cluster(totals, head, out)
    head("natkit_workers", "gauge", "Worker processes alive.")
    out.append(f"natkit_workers {len(workers)}")
    head("natkit_worker_resident_memory_bytes", "gauge", "Resident set size of each worker.")
    for index, pid in workers:
        out.append(f'natkit_worker_resident_memory_bytes{{worker="{index}"}} {rss_bytes(pid)}')
    head("process_resident_memory_bytes", "gauge", "Resident set size of the supervisor process.")
    out.append(f"process_resident_memory_bytes {rss_bytes()}")
    return "\n".join(out) + "\n"


def _render_turn(
    totals: Sequence[int], head: Callable[[str, str, str], None], out: list[str]
) -> None:
    head(
        "natkit_turn_refusals_total",
        "counter",
        "TURN requests answered with an error, by code, method and reason (builtin engine); "
        'reason="challenge" is the normal first 401 of every client. Series appear once non-zero.',
    )
    for reason, code in TURN_REASONS:
        for method in TURN_METHODS:
            value = totals[turn_refusal_index(reason, method)]
            if value:
                out.append(
                    f'natkit_turn_refusals_total{{code="{code}",method="{method}",'
                    f'reason="{reason}"}} {value}'
                )
    _render_turn_state(totals, head, out)


def _render_turn_state(
    totals: Sequence[int], head: Callable[[str, str, str], None], out: list[str]
) -> None:
    head(
        "natkit_turn_allocations",
        "gauge",
        "TURN allocations active, by the client's transport and address family (builtin engine).",
    )
    for t in TRANSPORTS:
        for f in FAMILIES:
            value = totals[turn_allocation_index(t, f)]
            out.append(
                f'natkit_turn_allocations{{transport="{t}",family="{_family_label(f)}"}} {value}'
            )
    head("natkit_turn_permissions", "gauge", "TURN permissions installed over all allocations.")
    out.append(f"natkit_turn_permissions {totals[TURN_PERMISSIONS]}")
    head("natkit_turn_channels", "gauge", "TURN channel bindings over all allocations.")
    out.append(f"natkit_turn_channels {totals[TURN_CHANNELS]}")
    head(
        "natkit_turn_pump_routes",
        "gauge",
        "Bound channels the relay pump relays in compiled code (turn.pump; 0: Python relays).",
    )
    out.append(f"natkit_turn_pump_routes {totals[TURN_PUMP_ROUTES]}")
    head("natkit_turn_relayed_packets_total", "counter", "Datagrams relayed, by direction.")
    head_bytes = "natkit_turn_relayed_bytes_total"
    packets = (TURN_PACKETS_TO_PEER, TURN_PACKETS_TO_CLIENT)
    for direction, index in zip(TURN_DIRECTIONS, packets, strict=True):
        out.append(f'natkit_turn_relayed_packets_total{{direction="{direction}"}} {totals[index]}')
    head(head_bytes, "counter", "Application bytes relayed (no TURN framing), by direction.")
    byte_counts = (TURN_BYTES_TO_PEER, TURN_BYTES_TO_CLIENT)
    for direction, index in zip(TURN_DIRECTIONS, byte_counts, strict=True):
        out.append(f'{head_bytes}{{direction="{direction}"}} {totals[index]}')
    head(
        "natkit_turn_allocation_outcomes_total",
        "counter",
        "TURN allocations created, refreshed, expired and deleted (refusals: "
        "natkit_turn_refusals_total).",
    )
    for outcome in TURN_OUTCOMES:
        value = totals[turn_outcome_index(outcome)]
        out.append(f'natkit_turn_allocation_outcomes_total{{outcome="{outcome}"}} {value}')


def _render_cluster(
    totals: Sequence[int], head: Callable[[str, str, str], None], out: list[str]
) -> None:
    head("natkit_cluster_members", "gauge", "Worker processes that are members of the fleet.")
    out.append(f"natkit_cluster_members {totals[CLUSTER_MEMBERS]}")
    head("natkit_cluster_redis_up", "gauge", "Members whose last heartbeat reached Redis.")
    out.append(f"natkit_cluster_redis_up {totals[CLUSTER_ONLINE]}")
    for name, help_text in CLUSTER_COUNTERS:
        head(f"natkit_cluster_{name}_total", "counter", help_text[0].upper() + help_text[1:] + ".")
        out.append(f"natkit_cluster_{name}_total {totals[cluster_index(name)]}")


def cluster_ready(totals: Sequence[int], fail_open: bool) -> tuple[bool, str]:
    """/readyz for a fleet member: ready unless Redis is unreachable and the fail policy
    refuses new allocations (a balancer should send clients elsewhere); the reason to show."""
    members, online = totals[CLUSTER_MEMBERS], totals[CLUSTER_ONLINE]
    if not members or online >= members:
        return True, ""
    if fail_open:
        return True, "cluster: Redis unreachable, serving on local quotas"
    return False, "cluster: Redis unreachable, refusing new allocations (fail-closed)"


def render_signal(stats: Mapping[str, int]) -> str:
    """The rendezvous' `SignalServer.stats` as counters ``natkit_signal_<key>_total``.

    The rendezvous runs in the supervisor (one pairing table), so its counters need no shared
    memory: the scrape reads the dict itself. Every key is always present, zero included, so a
    dashboard's rate() has a series from the first scrape."""
    out: list[str] = []
    for key, value in stats.items():
        name = f"natkit_signal_{key}_total"
        out.append(f"# HELP {name} Rendezvous {key.replace('_', ' ')} since start.")
        out.append(f"# TYPE {name} counter")
        out.append(f"{name} {value}")
    return "\n".join(out) + "\n" if out else ""


class MetricsServer:
    """GET /metrics, /healthz and /readyz over HTTP/1.0-style one-shot connections; anything
    else is a 404. /healthz is 200 while the process answers (liveness); /readyz is 200 while
    `ready()` holds (listeners bound, allocations accepted) and 503 otherwise, e.g. during a
    drain, so a load balancer sends new clients elsewhere (Kubernetes probe semantics)."""

    def __init__(
        self,
        listen: str,
        body: Callable[[], str],
        ready: Callable[[], bool] | None = None,
        detail: Callable[[], str] | None = None,
    ) -> None:
        """`detail()`, if given, is one more line for /readyz (e.g. a fleet's Redis state)."""
        self.host, self.port = parse_hostport(listen, default_port=9641)
        self._body = body
        self._ready = ready or (lambda: True)
        self._detail = detail or (lambda: "")
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # Only the request line matters; the header block is bounded by the reader's limit.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            status, ctype, payload = self._answer(method, path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a broken scrape only concerns the scraper
        finally:
            writer.close()

    def _answer(self, method: bytes, path: bytes) -> tuple[str, str, bytes]:
        if method != b"GET":
            return "404 Not Found", "text/plain", b"try GET /metrics, /healthz or /readyz\n"
        if path == b"/metrics":
            return "200 OK", "text/plain; version=0.0.4", self._body().encode()
        if path == b"/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == b"/readyz":
            detail = self._detail()
            extra = (detail + "\n").encode() if detail else b""
            if self._ready():
                return "200 OK", "text/plain", b"ready\n" + extra
            reason = b"not ready (starting or draining)\n"
            return "503 Service Unavailable", "text/plain", reason + extra
        return "404 Not Found", "text/plain", b"try /metrics, /healthz or /readyz\n"
