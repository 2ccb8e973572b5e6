"""TURN relay throughput and added latency: natkit's builtin engine vs coturn, one load generator.

Steps, all on 127.0.0.1 and bounded in time (< 60 s):
1. start the builtin engine (a child process: its standalone listener, uvloop when installed) and
   coturn (rendered by natkit from the same config) on free ports;
2. against each, the same generator (a child process) allocates ALLOCS relays, binds a channel
   to an echo peer it owns, and keeps WINDOW ChannelData packets in flight per allocation:
   client → relay → peer → relay → client, i.e. 2 relayed packets per round trip. Runs alternate
   between the engines (median of each);
3. latency: one packet in flight, median RTT through the relay minus the direct loopback RTT;
4. per-allocation memory of the builtin core (tracemalloc over 1000 allocations, each with a
   permission and a channel; kernel socket buffers not included).
Every process is started in its own session and killed (group) in a finally block.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from natkit.addr import Address, Transport
from natkit.config import loads
from natkit.stun import AttrType, Message, MessageClass, Method, build_channel_data, parse_message
from natkit.stun.integrity import long_term_key

HOST = "127.0.0.1"
REALM = "natkit.bench"
CONFIG = """
version: 1
stun: {{listen: ["udp://127.0.0.1:{port}"], software: ""}}
turn:
  enabled: true
  engine: {engine}
  realm: natkit.bench
  auth: {{users: {{alice: wonderland}}}}
  relay: {{address: 127.0.0.1, ports: "{low}-{high}"}}
  quota: {{per_user: 1000, total: 2000}}
  peers: {{allow: ["127.0.0.1/32"]}}
"""


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port: int = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, suppress(OSError):
                t.bind((HOST, port))
                return port
    raise RuntimeError("no free port")


def bench_config(engine: str, port: int, size: int = 500) -> str:
    low = 30000 + (os.getpid() * 7) % 10000
    return CONFIG.format(engine=engine, port=port, low=low, high=low + size)


# -- servers ---------------------------------------------------------------------------------


def serve_builtin(path: str) -> None:
    """Child process: the builtin engine on its standalone listener until SIGTERM."""
    from natkit.turn.builtin import BuiltinTurn

    with suppress(ImportError):
        import uvloop

        uvloop.install()
    cfg = loads(Path(path).read_text(), path)

    async def run() -> None:
        engine = BuiltinTurn(cfg)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await engine.start()
        try:
            await engine.listen(cfg.stun.listen[0])
            print("ready", flush=True)
            await stop.wait()
        finally:
            await engine.close()

    asyncio.run(run())


@contextmanager
def child(argv: list[str], ready: str | None, workdir: Path) -> Iterator[subprocess.Popen[str]]:
    log = (workdir / f"{Path(argv[0]).name}.log").open("w")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE if ready else log, stderr=log,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        if ready is not None:
            assert proc.stdout is not None
            ok, _, _ = select.select([proc.stdout], [], [], 10)
            if not ok or ready not in proc.stdout.readline():
                raise RuntimeError(f"{argv[0]} did not start; see {log.name}")
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def wait_udp(port: int) -> None:
    """Until the server answers an unauthenticated Allocate (a 401)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.1)
        for _ in range(100):
            s.sendto(_request(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)]), (HOST, port))
            with suppress(OSError):
                s.recv(2048)
                return
    raise RuntimeError(f"no TURN server answering on {port}")


@contextmanager
def server(engine: str, workdir: Path) -> Iterator[int]:
    port = free_port()
    text = bench_config(engine, port)
    conf = workdir / f"{engine}.yaml"
    conf.write_text(text)
    if engine == "builtin":
        argv = [sys.executable, "-m", "bench.turn_bench", "--serve-builtin", str(conf)]
        with child(argv, "ready", workdir):
            yield port
        return
    from natkit.turn import coturn

    rendered = workdir / "turnserver.conf"
    coturn.write_private(str(rendered), coturn.render(loads(text), coturn.detect_version(),
                                                      runtime_dir=str(workdir)))  # fmt: skip
    with child(["turnserver", "-c", str(rendered)], None, workdir):
        wait_udp(port)
        yield port


# -- the load generator ----------------------------------------------------------------------


def _request(method: int, attrs: Sequence[tuple[int, Any]], key: bytes | None = None) -> bytes:
    msg = Message(method, MessageClass.REQUEST, os.urandom(12), list(attrs))
    return msg.encode(integrity_key=key)


def _transact(sock: socket.socket, method: int, attrs: Sequence[tuple[int, Any]]) -> Message:
    """A signed request with the long-term mechanism (401 → nonce → retry); bounded."""
    key = long_term_key("alice", REALM, "wonderland")
    nonce = ""
    for _ in range(3):
        auth: list[tuple[int, Any]] = [
            (AttrType.USERNAME, "alice"), (AttrType.REALM, REALM), (AttrType.NONCE, nonce)
        ]  # fmt: skip
        sock.send(_request(method, [*attrs, *auth], key))
        response = parse_message(sock.recv(4096))
        if response.message_class is MessageClass.SUCCESS:
            return response
        nonce = str(response.get(AttrType.NONCE) or "")
    raise RuntimeError(f"{method:#x} failed: {response.get(AttrType.ERROR_CODE)!r}")


def generate(port: int, allocs: int, window: int, seconds: float) -> dict[str, float]:
    """Child process body: relay round trips per second and RTT samples (window 1)."""
    server_addr = (HOST, port)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    peer_addr = Address(*peer.getsockname())
    clients: list[socket.socket] = []
    try:
        for _ in range(allocs):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(sock)
            sock.settimeout(2)
            sock.connect(server_addr)
            _transact(sock, Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)])
            _transact(
                sock,
                Method.CHANNEL_BIND,
                [(AttrType.CHANNEL_NUMBER, 0x4000), (AttrType.XOR_PEER_ADDRESS, peer_addr)],
            )
            sock.setblocking(False)  # fmt: skip
        peer.setblocking(False)
        frame = build_channel_data(0x4000, b"x" * 100)
        poller = select.epoll()
        poller.register(peer.fileno(), select.EPOLLIN)
        by_fd = {s.fileno(): s for s in clients}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        done, rtts = 0, []
        for sock in clients:
            for _ in range(window):
                sock.send(frame)
        sent_at = time.perf_counter()
        deadline = sent_at + seconds
        peer_fd = peer.fileno()
        while (now := time.perf_counter()) < deadline:
            for fd, _ in poller.poll(0.05):
                sock = peer if fd == peer_fd else by_fd[fd]
                for _ in range(64):
                    try:
                        data, addr = sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    if sock is peer:
                        peer.sendto(data, addr)  # the echo, back through the relay
                    else:
                        done += 1
                        if window == 1 and allocs == 1:
                            t = time.perf_counter()
                            rtts.append(t - sent_at)
                            sent_at = t
                        sock.send(frame)
            if window > 1 and now - sent_at > 0.02:  # refill windows lost to full buffers
                sent_at = now
                for sock in clients:
                    sock.send(frame)
        return {"round_trips_per_s": done / seconds,
                "rtt_us": statistics.median(rtts) * 1e6 if rtts else 0.0}  # fmt: skip
    finally:
        for sock in [peer, *clients]:
            sock.close()


def direct_rtt_us(seconds: float = 0.5) -> float:
    a, b = (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    )
    try:
        a.bind((HOST, 0))
        b.bind((HOST, 0))
        a.settimeout(1)
        b.settimeout(1)
        rtts, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            a.sendto(b"x" * 104, b.getsockname())
            data, addr = b.recvfrom(2048)
            b.sendto(data, addr)
            a.recv(2048)
            rtts.append(time.perf_counter() - t)
        return statistics.median(rtts) * 1e6
    finally:
        a.close()
        b.close()


def run_generator(port: int, allocs: int, window: int, seconds: float) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.turn_bench", "--generate", str(port),
            str(allocs), str(window), str(seconds)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 20, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, float] = json.loads(out.stdout)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["generator_cpu"] = cpu / seconds  # ~1.0: the generator itself is saturated
    return result


# -- memory ----------------------------------------------------------------------------------


def memory_per_allocation(count: int = 1000) -> float:
    """Python heap bytes per allocation of the builtin core (with a permission and a channel)."""
    from natkit.turn.engine import build_relay

    cfg = loads(bench_config("builtin", 3478, size=count + 100))
    relay = build_relay(cfg)
    key = long_term_key("alice", REALM, "wonderland")
    local, now = Address(HOST, 3478), time.monotonic()
    nonce = relay.auth.nonce(HOST, now)
    auth: list[tuple[int, Any]] = [
        (AttrType.USERNAME, "alice"), (AttrType.REALM, REALM), (AttrType.NONCE, nonce)
    ]  # fmt: skip
    peer = Address(HOST, 9)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    bind: list[tuple[int, Any]] = [
        (AttrType.CHANNEL_NUMBER, 0x4000),
        (AttrType.XOR_PEER_ADDRESS, peer),
    ]
    steps: list[tuple[int, list[tuple[int, Any]]]] = [
        (Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)]),
        (Method.CHANNEL_BIND, bind),
    ]
    for i in range(count):
        client = Address(HOST, 10000 + i)
        for method, attrs in steps:
            data = _request(method, [*attrs, *auth], key)
            relay.handle_client(data, client, local, Transport.UDP, now)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(relay.allocations) == count, "allocations failed"
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return grown / count


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_bench", description=__doc__)
    parser.add_argument("--allocs", type=int, default=8)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-builtin", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_builtin:
        serve_builtin(args.serve_builtin)
        return 0
    if args.generate:
        port, allocs, window, seconds = args.generate
        print(json.dumps(generate(int(port), int(allocs), int(window), float(seconds))))
        return 0
    engines = ["builtin"] + (["coturn"] if shutil.which("turnserver") else [])
    results: dict[str, dict[str, list[float]]] = {
        e: {"rt": [], "rtt": [], "cpu": []} for e in engines
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="natkit-turn-bench-") as tmp, ExitStack() as stack:
        ports = {e: stack.enter_context(server(e, Path(tmp))) for e in engines}
        for _ in range(args.rounds):
            for engine in engines:
                load = run_generator(ports[engine], args.allocs, args.window, args.seconds)
                results[engine]["rt"].append(load["round_trips_per_s"])
                results[engine]["cpu"].append(load["generator_cpu"])
                one = run_generator(ports[engine], 1, 1, 1.0)
                results[engine]["rtt"].append(one["rtt_us"])
    direct = direct_rtt_us()
    summary: dict[str, object] = {"direct_rtt_us": round(direct, 1)}
    for engine in engines:
        pps = 2 * statistics.median(results[engine]["rt"])
        added = (statistics.median(results[engine]["rtt"]) - direct) / 2
        cpu = statistics.median(results[engine]["cpu"])
        summary[engine] = {"relayed_pps": round(pps), "added_latency_us_per_hop": round(added, 1),
                           "generator_cpu": round(cpu, 2)}  # fmt: skip
        print(f"{engine:8} relayed {pps:10,.0f} packets/s   added latency {added:7.1f} us/hop"
              f"   (generator CPU {cpu:.0%})")  # fmt: skip
    if "coturn" in summary:
        b, c = summary["builtin"], summary["coturn"]
        ratio = b["relayed_pps"] / max(1, c["relayed_pps"])  # type: ignore[index]
        summary["ratio_builtin_vs_coturn"] = round(ratio, 2)
        print(f"ratio builtin/coturn: {ratio:.2f}x (target >= 0.5x)")
        if summary["coturn"]["generator_cpu"] > 0.9:  # type: ignore[index]
            print("note: the Python generator is saturated against coturn: its figure is a "
                  "lower bound, so the ratio is an upper bound")  # fmt: skip
    per_alloc = memory_per_allocation()
    summary["builtin_bytes_per_allocation"] = round(per_alloc)
    print(f"builtin memory: {per_alloc:,.0f} bytes per allocation (Python heap, 1 channel)")
    print(f"direct loopback RTT {direct:.1f} us; took {time.monotonic() - started:.1f} s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
