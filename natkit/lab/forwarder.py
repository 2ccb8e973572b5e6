"""The link forwarder process: bridges two veths of a link namespace through `impair.Direction`.

    python -m natkit.lab.forwarder --ifaces nk1a2b-dn,nk1a2b-up --model '{"delay": 0.3, ...}'

Why a process of its own in a namespace of its own: the NAT routers' nftables and conntrack see
exactly the frames they would see on a plain veth, only later (no NFQUEUE hook in their rule
path, no unconfirmed conntrack entries held for hundreds of milliseconds), and the timing does not
share a GIL with the test or diagnosis that measures it.

Frames are read with AF_PACKET and PACKET_VNET_HDR: the virtio-net header carries a local
sender's checksum-offload and GSO state across, so a CHECKSUM_PARTIAL UDP datagram or a 64 KiB TSO
segment leaves the other veth as the kernel would have sent it (without the header the receiver
sees a half-computed checksum and drops the packet). The link namespace has no addresses and IPv6
disabled, so nothing in it answers or originates a frame.

Life cycle: started by `netlink.apply_plan` (`start()`), it prints "ready" once both sockets are
bound; SIGTERM ends it; it lives inside a lab namespace, so removing the lab (`Lab.down()`,
`natkit lab down`, `gc`) kills it like any process there. `stats()` asks it for its counters over
an abstract unix socket, which is private to the link namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from natkit.lab.impair import Direction, LinkModel

__all__ = ["CONTROL", "main", "start", "stats", "wait_ready"]

CONTROL = b"\0natkit-link-forwarder"
"""Abstract unix socket name; per network namespace, so one name serves every link namespace."""
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20: our own sends are not read back
VNET_HDR = 10  # struct virtio_net_hdr
BATCH = 128  # frames read per wake-up at most, so departures are not starved by a flood
PR_SET_TIMERSLACK = 29
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # not in Python's socket module


def _packet_socket(iface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
        with contextlib.suppress(OSError):  # root only; the default buffers still work
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
    sock.bind((iface, ETH_P_ALL))  # CPython applies htons() itself
    sock.setblocking(False)
    return sock


def _tighten_timers() -> None:
    """Wake-ups within microseconds, not the default 50 µs timer slack."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def _realtime() -> None:
    """Run before ordinary tasks: on two shared cores a preempted forwarder holds every frame
    for a scheduler slice (3-10 ms spikes measured). It sleeps in select() between frames, and
    the kernel's RT throttling still leaves 5% of each core to others if it ever spun."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.nice(-5)


def serve(ifaces: tuple[str, str], model: LinkModel, seed: int | None) -> None:
    """Forward between the two interfaces until SIGTERM."""
    rng = random.Random(seed)
    socks = (_packet_socket(ifaces[0]), _packet_socket(ifaces[1]))
    # Frames read on socks[i] leave on socks[1 - i].
    ways = tuple(Direction(model, random.Random(rng.random()), header=VNET_HDR) for _ in range(2))
    send_errors = [0, 0]
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.bind(CONTROL)
    control.listen(4)
    control.setblocking(False)
    _tighten_timers()
    gc.freeze()
    gc.disable()  # the loop makes no cycles; a collection pass would be a delay spike
    print("ready", flush=True)
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the parent stops reading after "ready"
    readable = [socks[0], socks[1], control]
    buf = bytearray(VNET_HDR + 65536 + 64)
    view = memoryview(buf)
    while True:
        now = time.monotonic()
        for i, way in enumerate(ways):
            out = socks[1 - i]
            for frame in way.due(now):
                try:
                    out.send(frame)
                except OSError:  # ENOBUFS/EAGAIN: the veth's backlog is full; a real drop
                    send_errors[i] += 1
        nexts = [t for w in ways if (t := w.next_departure()) is not None]
        timeout = max(0.0, min(nexts) - time.monotonic()) if nexts else None
        ready, _, _ = select.select(readable, [], [], timeout)
        for sock in ready:
            if sock is control:
                _answer(control, ways, send_errors)
                continue
            way = ways[0 if sock is socks[0] else 1]
            for _ in range(BATCH):
                try:
                    n = sock.recv_into(buf)
                except BlockingIOError:
                    break
                if n > VNET_HDR:  # stamped one by one: a batch takes a while to read
                    way.offer(bytes(view[:n]), time.monotonic())


def _answer(control: socket.socket, ways: tuple[Direction, ...], errors: list[int]) -> None:
    with contextlib.suppress(OSError):
        conn, _ = control.accept()
        with conn:
            conn.setblocking(True)
            report: dict[str, Any] = {
                name: {**asdict(w.counters), "queued": len(w), "send_errors": e}
                for name, w, e in zip(("to_parent", "to_node"), ways, errors, strict=True)
            }
            report["rss_kib"] = _rss_kib()
            conn.sendall(json.dumps(report).encode())


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start(argv_ifaces: tuple[str, str], model: LinkModel, netns: str) -> subprocess.Popen[bytes]:
    """Start a forwarder in `netns` (its own session: a terminal's Ctrl-C reaches the lab's
    owner, which removes the lab and with it this process). Call `wait_ready()` next."""
    from natkit.lab.netlink import popen_in_netns

    argv = [
        sys.executable,
        "-m",
        "natkit.lab.forwarder",
        "--ifaces",
        ",".join(argv_ifaces),
        "--model",
        json.dumps(asdict(model)),
    ]
    return popen_in_netns(
        netns,
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_ready(proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    """Block until `proc` says "ready"; LabError with its first stderr line if it does not."""
    from natkit.errors import LabError

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if line.strip() == b"ready":
        assert proc.stderr is not None
        proc.stderr.close()  # nobody reads it from here on: a write fails rather than blocks
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    _, err = proc.communicate()
    lines = err.decode(errors="replace").strip().splitlines()
    raise LabError(f"link forwarder for {what} did not start: {lines[-1] if lines else 'timeout'}")


def stats(netns: str) -> dict[str, Any]:
    """Counters of the forwarder in link namespace `netns`, per direction ("to_parent": what
    the node sends, "to_node": what it receives), and its memory ("rss_kib")."""
    from natkit.lab.netlink import in_netns

    def ask() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(CONTROL)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        data: dict[str, Any] = json.loads(b"".join(chunks))
        return data

    return in_netns(netns, ask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m natkit.lab.forwarder")
    parser.add_argument("--ifaces", required=True, help="NODE_SIDE,PARENT_SIDE")
    parser.add_argument("--model", required=True, help="LinkModel as JSON")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    first, _, second = args.ifaces.partition(",")
    model = LinkModel(**json.loads(args.model))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(0))
    _realtime()
    serve((first, second), model, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
