"""Measuring a lab link with real packets: one-way delay, loss and order of a paced UDP stream.

`measure()` sends `count` numbered datagrams at `rate` per second from a socket in one node to a
socket in another and reads them back with kernel receive timestamps (SO_TIMESTAMPNS), so the
one-way delay of each is its arrival stamp minus the send time written into it (both nodes share
this machine's clock; user-space scheduling of the receiver does not count). The test suite and
`python -m bench impair` use it to report how close the forwarder gets to what a link asks for.
"""

from __future__ import annotations

import socket
import statistics
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from natkit.lab.lab import Lab

__all__ = ["Measurement", "measure"]

SO_TIMESTAMPNS = 35  # also SCM_TIMESTAMPNS; not in Python's socket module
_HEAD = struct.Struct("!Iq")  # sequence number, send time (ns, CLOCK_REALTIME)


@dataclass
class Measurement:
    """What arrived: per datagram (in arrival order) its number and one-way delay in seconds."""

    sent: int
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    send_seconds: float = 0.0
    """How long sending took (the achieved rate is sent / send_seconds)."""

    @property
    def delays(self) -> list[float]:
        return [d for _, d in self.arrivals]

    @property
    def loss(self) -> float:
        """Fraction of datagrams that never arrived."""
        return 1 - len({s for s, _ in self.arrivals}) / self.sent if self.sent else 0.0

    @property
    def reordered(self) -> int:
        """Datagrams that arrived after one sent later than them."""
        late, highest = 0, -1
        for seq, _ in self.arrivals:
            if seq < highest:
                late += 1
            highest = max(highest, seq)
        return late

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the delays, nearest rank."""
        ordered = sorted(self.delays)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]

    def summary(self, configured: float) -> dict[str, float]:
        """Delay error figures against the configured one-way delay, in milliseconds."""
        errors = sorted(abs(d - configured) for d in self.delays)
        if not errors:
            return {"received": 0, "loss_pct": 100.0}
        mean = statistics.fmean(self.delays)
        return {
            "received": len(self.arrivals),
            "loss_pct": round(100 * self.loss, 3),
            "mean_ms": round(1000 * mean, 3),
            "mean_error_ms": round(1000 * (mean - configured), 3),
            "p50_abs_error_ms": round(1000 * errors[len(errors) // 2], 3),
            "p99_abs_error_ms": round(
                1000 * errors[min(len(errors) - 1, len(errors) * 99 // 100)], 3
            ),
            "stdev_ms": round(1000 * statistics.pstdev(self.delays), 3),
            "min_ms": round(1000 * min(self.delays), 3),
            "max_ms": round(1000 * max(self.delays), 3),
            "reordered": self.reordered,
        }


def measure(
    lab: Lab,
    sender: str,
    receiver: str,
    dest: tuple[str, int],
    *,
    rate: float = 1000.0,
    count: int = 2000,
    size: int = 64,
    settle: float = 1.0,
) -> Measurement:
    """Send `count` datagrams at `rate`/s from node `sender` to `dest` (bound in `receiver`);
    wait `settle` seconds after the last for stragglers."""
    rx = lab.socket(receiver)
    rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    rx.bind(dest)
    tx = lab.socket(sender)
    result = Measurement(count)
    done = threading.Event()
    reader = threading.Thread(target=_receive, args=(rx, result, done, settle), daemon=True)
    reader.start()
    try:
        result.send_seconds = _send(tx, dest, rate, count, size)
    finally:
        done.set()
        reader.join()
        rx.close()
        tx.close()
    return result


def _send(sock: socket.socket, dest: tuple[str, int], rate: float, count: int, size: int) -> float:
    pad = b"\0" * max(0, size - _HEAD.size)
    start = time.monotonic()
    for seq in range(count):
        due = start + seq / rate
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)  # late wake-ups do not matter: the send time is in the datagram
        try:
            sock.sendto(_HEAD.pack(seq, time.time_ns()) + pad, dest)
        except OSError:  # a local drop (e.g. an nft loss rule on the sender's own uplink)
            continue
    return time.monotonic() - start


def _receive(
    sock: socket.socket, result: Measurement, done: threading.Event, settle: float
) -> None:
    sock.settimeout(0.1)
    quiet_since: float | None = None
    space = socket.CMSG_SPACE(16)
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(2048, space)
        except TimeoutError:
            if done.is_set():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return
            continue
        except OSError:
            return
        quiet_since = None
        if len(data) < _HEAD.size:
            continue
        seq, sent_ns = _HEAD.unpack_from(data)
        arrived_ns = time.time_ns()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack("qq", value[:16])
                arrived_ns = sec * 1_000_000_000 + nsec
        result.arrivals.append((seq, (arrived_ns - sent_ns) / 1e9))
