"""natkit serve in a lab's `server` node, as the RFC 5780 server for lab tests (needs root)."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from natkit.lab import Lab

PRIMARY, ALTERNATE = "203.0.113.10", "203.0.113.11"

CONFIG = f"""version: 1
stun:
  listen: ["udp://{PRIMARY}:3478", "tcp://{PRIMARY}:3478"]
  alternate: "{ALTERNATE}:3479"
  workers: 1
metrics: {{listen: null}}
"""


def wait_udp(lab: Lab, seconds: float = 10.0) -> None:
    """Until something answers a Binding on the primary address (from the server node)."""
    deadline = time.monotonic() + seconds
    sock = lab.socket("server")
    sock.settimeout(0.1)
    try:
        while time.monotonic() < deadline:
            sock.sendto(struct.pack("!HHI", 1, 0, 0x2112A442) + b"x" * 12, (PRIMARY, 3478))
            try:
                sock.recvfrom(1500)
                return
            except TimeoutError:
                continue
    finally:
        sock.close()
    raise AssertionError("the STUN server in node server did not come up")


def checksum_offload_off(lab: Lab, node: str) -> None:
    """veth's checksum offload hides checksum bugs (FIELD-NOTES): off, a node's interfaces
    complete every checksum in software, and a receiver drops a wrong one."""
    links = lab.exec(node, ["ip", "-o", "link", "show"], check=True).stdout
    for line in links.splitlines():
        name = line.split(": ")[1].split("@")[0]
        if name != "lo":
            lab.exec(node, ["ethtool", "-K", name, "tx", "off"], check=True)


@contextmanager
def natkit_stun(lab: Lab, tmp: Path, fast_path: str = "off") -> Iterator[subprocess.Popen[bytes]]:
    """`natkit serve` with the RFC 5780 sockets in node `server`; stopped (exit 0) at the end.
    With `fast_path` on (``stun.fast_path``) every node's checksum offload is off."""
    config = tmp / "natkit.yaml"
    config.write_text(CONFIG.replace("  workers: 1\n", f"  workers: 1\n  fast_path: {fast_path}\n"))
    if fast_path != "off":
        for node in lab.nodes:
            checksum_offload_off(lab, node)
    argv = [sys.executable, "-m", "natkit", "serve", "-c", str(config)]
    proc = lab.spawn("server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_udp(lab)
        yield proc
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
