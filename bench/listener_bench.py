"""CPU per datagram of the listener's UDP read path, in one process: natkit.net.udp vs a bare loop.

Steps, all on 127.0.0.1 and bounded (a few seconds):
1. a client socket queues 2,000 plain Binding requests on a server socket at a time;
2. the read path drains them (recvmmsg, rate limit, classification, the Binding fast path,
   sendmmsg) and its process CPU time is taken; 40 rounds, alternating with
3. the anchor: the same batched recvmmsg/sendmmsg (`natkit.net.mmsg`) answering each datagram
   with a fixed reply, no rate limit, no routing: what the system calls and the batching cost.
The ratio natkit/bare is the price of the transport layer and the handler per datagram; its
difference is what a change to the hot path moves (run it before and after).
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable

from natkit.addr import Address
from natkit.metrics import COUNTERS
from natkit.net import mmsg
from natkit.net.ratelimit import RateLimiter
from natkit.net.routes import Dispatcher
from natkit.net.udp import udp_reader
from natkit.stun.binding import BindingHandler

HOST = "127.0.0.1"
QUEUED = 2000
ROUNDS = 40


def _pair() -> tuple[socket.socket, socket.socket, Address]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    server.bind((HOST, 0))
    server.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    client.bind((HOST, 0))
    client.setblocking(False)
    return server, client, Address(HOST, server.getsockname()[1])


def natkit_reader(server: socket.socket, local: Address) -> Callable[[], None]:
    limiter = RateLimiter(1e9, 1e9, 100_000)  # on, as in production, but never refusing
    dispatcher = Dispatcher(BindingHandler(primary=local).route())
    return udp_reader(dispatcher, server, local, {local: server}, [0] * COUNTERS, lambda: limiter)


def bare_reader(server: socket.socket, local: Address) -> Callable[[], None]:
    batch = mmsg.MMsgSocket(server, batch=64, size=2048)
    answer = bytes(32)

    def on_readable() -> None:
        for _ in range(4):
            n = batch.recv()
            if not n:
                return
            for i in range(n):
                batch.source(i)
                batch.datagram(i)
                batch.queue(i, answer)
            batch.flush()

    return on_readable


def measure(make: Callable[[socket.socket, Address], Callable[[], None]]) -> float:
    """µs of process CPU per datagram drained, over one round of QUEUED datagrams."""
    server, client, local = _pair()
    try:
        reader = make(server, local)
        request = bytes.fromhex("000100002112a442") + os.urandom(12)
        sent = 0
        for _ in range(QUEUED):
            try:
                client.sendto(request, local)
                sent += 1
            except BlockingIOError:
                break
        start = time.process_time()
        for _ in range(QUEUED // 256 + 2):
            reader()
        cpu = time.process_time() - start
        return cpu / sent * 1e6
    finally:
        server.close()
        client.close()


def main(argv: list[str] | None = None) -> int:
    if not mmsg.available():
        print("listener: skipped, recvmmsg/sendmmsg are not available here")
        return 0
    natkit, bare = [], []
    for _ in range(ROUNDS):  # alternating: both see the same machine
        natkit.append(measure(natkit_reader))
        bare.append(measure(bare_reader))
    n, b = statistics.median(natkit), statistics.median(bare)
    print(f"UDP read path, in-process, {QUEUED} plain Binding requests per round, {ROUNDS} rounds")
    print(f"  natkit.net.udp + BindingHandler: {n:.2f} us CPU/datagram (median)")
    print(f"  bare recvmmsg/sendmmsg echo:     {b:.2f} us CPU/datagram (median)")
    print(f"  ratio natkit/bare: {n / b:.2f}   (the transport layer's and the handler's share)")
    return 0
