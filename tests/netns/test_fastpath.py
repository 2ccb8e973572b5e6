"""The kernel fast path (``stun.fast_path``) in a lab (needs root): `natkit serve` in node `server`
answers plain Binding requests from tc-BPF, behind the NAT of a real lab, byte for byte as user
space would, with checksums a receiving kernel verifies; RFC 5780 requests still reach user space
(diagnose classifies the NAT); the per-source limit holds in the kernel; serve removes what it
attached on SIGTERM, and what a SIGKILL left is found and removed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from natkit.addr import Address
from natkit.fastpath.build import build_object
from natkit.lab import Lab
from natkit.stun.binding import BindingHandler
from natkit.stun.constants import MessageClass, Method
from natkit.stun.message import Message, parse_message
from tests.netns.stunserver import ALTERNATE, PRIMARY, checksum_offload_off, wait_udp

pytestmark = pytest.mark.netns

METRICS = "127.0.0.1:9464"  # the server node's own loopback


def _config(**stun: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "stun": {
            "listen": [f"udp://{PRIMARY}:3478", f"tcp://{PRIMARY}:3478"],
            "alternate": f"{ALTERNATE}:3479",
            "workers": 1,
            "fast_path": "kernel",
            **stun,
        },
        "metrics": {"listen": METRICS},
        "logging": {"level": "info"},
    }


@contextlib.contextmanager
def serving(lab: Lab, tmp: Path, config: dict[str, Any]) -> Iterator[subprocess.Popen[str]]:
    path, out = tmp / "serve.yaml", tmp / "serve.out"
    path.write_text(yaml.safe_dump(config))
    with out.open("w") as sink:
        argv = [sys.executable, "-m", "natkit", "serve", "-c", str(path)]
        proc = lab.spawn("server", argv, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while out.read_text().count("\nlistening ") + out.read_text().startswith("listening") < 1:
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                assert proc.wait(10) == 0, out.read_text()
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise


def natkit(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = lab.exec(node, [sys.executable, "-m", "natkit", *args], timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def filters(lab: Lab) -> list[dict[str, Any]]:
    done = natkit(lab, "server", "fastpath", "status", "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)["filters"]
    return rows


def metrics(lab: Lab) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=5) as response:
            return str(response.read().decode())

    return lab.call("server", fetch)


def binding(fingerprint: bool) -> bytes:
    return Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12), []).encode(
        fingerprint=fingerprint
    )


@pytest.mark.parametrize("offload", ["offload-on", "offload-off"])
def test_kernel_answers_plain_bindings_and_user_space_the_rest(
    nat_lab: Any, tmp_path: Path, offload: str
) -> None:
    lab = nat_lab("port-restricted-cone")
    if offload == "offload-off":
        checksum_offload_off(lab, "server")
    with serving(lab, tmp_path, _config()):
        rows = filters(lab)
        assert rows and all(r["owner_alive"] for r in rows), rows
        sock = lab.socket("peer")
        sock.settimeout(2)
        sock.bind(("0.0.0.0", 0))
        handler = BindingHandler(primary=Address(PRIMARY, 3478), alternate=Address(ALTERNATE, 3479))
        for fingerprint in (False, True, False, True):
            request = binding(fingerprint)
            sock.sendto(request, (PRIMARY, 3478))
            answer, source = sock.recvfrom(2048)
            assert source == (PRIMARY, 3478)
            mapped = parse_message(answer).get(0x0020)  # XOR-MAPPED-ADDRESS: the NAT's WAN side
            assert isinstance(mapped, Address) and mapped.host.startswith("203.0.113.1"), mapped
            # The very bytes user space sends (suffix with RFC 5780 attributes, FINGERPRINT).
            local = Address(PRIMARY, 3478)
            assert answer == handler.handle(request, mapped, local).data  # type: ignore[union-attr]
        # RFC 5780 tests (CHANGE-REQUEST) are user space's: diagnose still classifies the NAT.
        done = natkit(lab, "peer", "diagnose", "--no-ice", "--stun", f"{PRIMARY}:3478", "--json")
        report = json.loads(done.stdout)
        assert (report["mapping"], report["filtering"]) == (
            "endpoint-independent", "address-and-port-dependent"
        ), report  # fmt: skip
        time.sleep(0.7)  # the workers flush their counters every 0.5 s
        text = metrics(lab)
        kernel = [line for line in text.splitlines() if 'path="kernel"' in line]
        answered = next(line for line in kernel if 'family="ipv4"' in line)
        assert float(answered.rsplit(" ", 1)[1]) >= 4, kernel
        user = [
            line for line in text.splitlines()
            if line.startswith('natkit_stun_requests_total{transport="udp",family="ipv4",'
                               'result="success"}')
        ]  # fmt: skip
        assert user and float(user[0].rsplit(" ", 1)[1]) > 0, "RFC 5780 requests reach user space"
    assert filters(lab) == [], "SIGTERM leaves no filter behind"


def _checksummed(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4 + UDP packet with both checksums complete (what a wire delivers, not the
    CHECKSUM_PARTIAL a local socket hands over)."""

    def csum(data: bytes) -> int:
        data += b"\0" * (len(data) % 2)
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    udp_len = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, udp_len)
    check = csum(pseudo + struct.pack("!HHHH", sport, dport, udp_len, 0) + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, udp_len, check) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + udp


def test_answers_to_complete_checksums_are_verified_by_the_receiver(
    nat_lab: Any, tmp_path: Path
) -> None:
    lab = nat_lab("open")  # no NAT: the packet arrives as the raw socket wrote it
    peer_ip = lab.address("peer")
    with serving(lab, tmp_path, _config()):
        receiver = lab.socket("peer")
        receiver.bind((peer_ip, 0))
        receiver.settimeout(2)
        raw = lab.call("peer", socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            for fingerprint in (False, True):
                request = binding(fingerprint)
                packet = _checksummed(peer_ip, receiver.getsockname()[1], PRIMARY, 3478, request)
                raw.sendto(packet, (PRIMARY, 0))
                # A UDP socket drops a datagram whose checksum does not verify: it must arrive.
                answer = receiver.recv(2048)
                assert parse_message(answer).transaction_id == request[8:20]
        finally:
            raw.close()


def test_the_kernel_keeps_the_per_source_limit(nat_lab: Any, tmp_path: Path) -> None:
    lab = nat_lab("open")
    # A second source in node peer, on the lab's internet (203.0.113.0/24 is the lab's own).
    device = lab.exec("peer", ["ip", "-o", "-4", "addr", "show"], check=True).stdout
    device = next(line.split()[1] for line in device.splitlines() if "203.0.113." in line)
    lab.exec("peer", ["ip", "addr", "add", "203.0.113.51/24", "dev", device], check=True)
    limit = {"enabled": True, "per_source": 5, "burst": 5, "max_sources": 1000}
    with serving(lab, tmp_path, _config(rate_limit=limit)):
        flood, other = lab.socket("peer"), lab.socket("peer")
        flood.bind((lab.address("peer"), 0))
        other.bind(("203.0.113.51", 0))
        for _ in range(50):
            flood.sendto(binding(False), (PRIMARY, 3478))
        flood.settimeout(0.5)
        answered = 0
        with contextlib.suppress(TimeoutError):
            while True:
                flood.recv(2048)
                answered += 1
        assert 5 <= answered <= 7, answered  # the burst, plus what refilled meanwhile
        other.settimeout(1)
        for _ in range(3):  # another source, right after the flood: its own bucket
            other.sendto(binding(False), (PRIMARY, 3478))
            assert parse_message(other.recv(2048)).message_class is MessageClass.SUCCESS
        (row,) = filters(lab)
        assert row["rate_limited"] >= 43 and row["answered_v4"] >= answered + 3, row


def test_sigkill_leaves_nothing_answering_and_tc_leftovers_are_removed(
    nat_lab: Any, tmp_path: Path
) -> None:
    lab = nat_lab("open")
    with serving(lab, tmp_path, _config()) as proc:
        (row,) = filters(lab)
        assert row["kind"] == "tcx" and row["owner_alive"], row
        proc.kill()
        proc.wait()
    # The tcx link died with the process, and the program with it: nothing stale answers.
    assert filters(lab) == []
    sock = lab.socket("peer")
    sock.settimeout(0.5)
    sock.sendto(binding(False), (PRIMARY, 3478))
    with pytest.raises(TimeoutError):
        sock.recv(2048)
    # A tc filter left by an interrupted start (made here by hand) is found and removed.
    obj = lab.call("server", build_object)
    device = lab.exec("server", ["ip", "-o", "link", "show"], check=True).stdout.splitlines()[1]
    device = device.split(": ")[1].split("@")[0]
    attach = ["tc", "qdisc", "add", "dev", device, "clsact"]
    lab.exec("server", attach, check=True)
    lab.exec("server", ["tc", "filter", "add", "dev", device, "ingress", "pref", "49152",
                        "handle", "1", "bpf", "direct-action", "obj", str(obj), "sec", "tc"],
             check=True)  # fmt: skip
    (row,) = filters(lab)
    assert row["kind"] == "tc" and not row["owner_alive"], row
    done = natkit(lab, "server", "fastpath", "status")
    assert "LEFTOVER" in done.stdout and "natkit serve --cleanup" in done.stdout
    done = natkit(lab, "server", "serve", "--cleanup")
    assert done.returncode == 0 and "removed a leftover" in done.stdout, done
    assert filters(lab) == []
    with serving(lab, tmp_path, _config()):
        rows = filters(lab)
        assert len(rows) == 1 and rows[0]["owner_alive"], rows
    assert filters(lab) == []


# Root without a capability: what a serve under a restricted account or container has.
NO_CAPS = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]


def test_without_privileges_kernel_mode_is_a_one_line_error_and_auto_serves(
    nat_lab: Any, tmp_path: Path
) -> None:
    lab = nat_lab("open")
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(_config()))
    argv = [*NO_CAPS, sys.executable, "-m", "natkit", "serve", "-c", str(path)]
    done = lab.exec("server", argv, timeout=30)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "stun.fast_path: kernel:" in lines[0], lines
    assert "CAP_BPF" in lines[0], lines  # what it needs, said
    # auto: one warning, and user space answers everything.
    path.write_text(yaml.safe_dump(_config(fast_path="auto")))
    proc = lab.spawn("server", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     text=True)  # fmt: skip
    try:
        wait_udp(lab)
        assert filters(lab) == []
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if "stun.fast_path: auto" in line]
    assert len(warnings) == 1 and "serving from user space only" in warnings[0], err


def test_ipv6_and_loopback(nat_lab: Any, tmp_path: Path) -> None:
    lab = nat_lab("open")
    config = _config()
    config["stun"]["listen"] = [f"udp://{PRIMARY}:3478", "udp://[::1]:3478"]
    del config["stun"]["alternate"]
    with serving(lab, tmp_path, config):
        sock = lab.socket("server", socket.AF_INET6)
        sock.settimeout(2)
        sock.bind(("::1", 0))
        handler = BindingHandler(primary=Address("::1", 3478))
        for fingerprint in (False, True):
            request = binding(fingerprint)
            sock.sendto(request, ("::1", 3478))
            answer = sock.recv(2048)
            client = Address("::1", sock.getsockname()[1])
            assert answer == handler.handle(request, client, Address("::1", 3478)).data  # type: ignore[union-attr]
        text = metrics(lab)
        answered = next(
            line for line in text.splitlines() if 'path="kernel"' in line and "ipv6" in line
        )
        assert float(answered.rsplit(" ", 1)[1]) == 2, answered


# -- TURN ChannelData relayed in the kernel ---------------------------------------------------


SERVER6 = "2001:db8::10"


def _turn_config(server: str = PRIMARY) -> dict[str, Any]:
    config = _config()
    config["stun"]["listen"] = [f"udp://{Address(server, 3478)}"]
    del config["stun"]["alternate"]
    config["turn"] = {
        "enabled": True,
        "engine": "builtin",
        "realm": "natkit.lab",
        "auth": {"users": {"alice": "wonderland"}},
        "relay": {"address": server, "ports": "50000-50099"},
        "peers": {"allow": ["203.0.113.0/24", "2001:db8::/64"]},
        "drain_timeout": 0.5,  # a failed test's allocations must not hold serve's exit
    }
    return config


SIZES = [*range(0, 20), 255, 256, 257, 511, 512, 513, 1000, 1447, 1448, 1449, 1468, 1472]


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))  # fmt: skip


@pytest.mark.parametrize(
    ("offload", "family"),
    [("offload-on", 4), ("offload-on", 6), ("offload-off", 4), ("offload-off", 6)],
)
def test_channel_data_relayed_in_the_kernel_both_ways(
    nat_lab: Any, tmp_path: Path, offload: str, family: int
) -> None:
    """Node `peer` holds both the TURN client and its peer (the relay sends to 203.0.113.x
    only). With checksum offload on, the client's datagrams are CHECKSUM_PARTIAL: the kernel
    leaves them to user space; with it off they are complete and the kernel relays them."""
    from natkit.stun.constants import AttrType
    from tests.integration.turn_client import TurnClient, code, relayed

    lab = nat_lab("open")
    kernel = offload == "offload-off"
    if kernel:
        checksum_offload_off(lab, "peer")
    server = PRIMARY if family == 4 else SERVER6
    with serving(lab, tmp_path, _turn_config(server)):
        kind = socket.AF_INET if family == 4 else socket.AF_INET6
        peer_ip = lab.address("peer", kind)
        assert peer_ip.startswith(("203.0.113.", "2001:db8::")), peer_ip  # safe to relay to
        client_sock, peer = lab.socket("peer", kind), lab.socket("peer", kind)
        client_sock.bind((peer_ip, 0))
        peer.bind((peer_ip, 0))
        peer.settimeout(2)
        client = TurnClient(3478, "alice", "wonderland", "natkit.lab", lab_socket=client_sock,
                            server_host=server)  # fmt: skip
        wire_family = 1 if family == 4 else 2  # RFC 8656 §18.6
        want = [
            (AttrType.REQUESTED_TRANSPORT, 17),
            (AttrType.REQUESTED_ADDRESS_FAMILY, wire_family),
        ]
        answer = client.ask(Method.ALLOCATE, want)
        assert code(answer) == 0, answer
        relay = relayed(answer)
        assert relay.host == server
        peer_address = Address(peer_ip, peer.getsockname()[1])
        assert code(client.channel_bind(0x4001, peer_address)) == 0
        # Byte-exact both ways, 0 to 1472 bytes; the client's side of the largest is over the
        # lab's MTU (1500): fragments and ChannelData over the MTU are user space's.
        for size in SIZES:
            payload = os.urandom(size)
            client.sock.sendto(struct.pack("!HH", 0x4001, size) + payload, client.server)
            data, source = peer.recvfrom(4096)
            assert data == payload and source[:2] == (relay.host, relay.port), size
            back = os.urandom(size)
            peer.sendto(back, (relay.host, relay.port))
            frame = client.sock.recv(4096)
            assert frame == struct.pack("!HH", 0x4001, size) + back, size
        fits = sum(1 for size in SIZES if (20 if family == 4 else 40) + 8 + 4 + size <= 1500)
        rows = filters(lab)
        relayed = (rows[0]["relayed_to_peer"], rows[0]["relayed_to_client"])
        assert relayed == ((fits, fits) if kernel else (0, 0)), rows
        # Padded ChannelData (RFC 8656 §12.5) and a Send indication: user space relays them.
        client.sock.sendto(struct.pack("!HH", 0x4001, 5) + b"pad\x00\x01\0\0\0", client.server)
        assert peer.recv(4096) == b"pad\x00\x01"
        send = Message(
            Method.SEND,
            MessageClass.INDICATION,
            os.urandom(12),
            [(AttrType.XOR_PEER_ADDRESS, peer_address), (AttrType.DATA, b"sent")],
        )
        client.sock.sendto(send.encode(), client.server)  # fmt: skip
        assert peer.recv(4096) == b"sent"
        assert filters(lab)[0]["relayed_to_peer"] == relayed[0]
        time.sleep(1.2)  # the engine's tick adds the kernel's counts to the TURN metrics
        text = metrics(lab)
        sent = 'natkit_turn_relayed_packets_total{direction="client_to_peer"'
        assert _metric(text, sent) == len(SIZES) + 2, text
        # Refresh 0 ends the allocation: the kernel relays nothing more, at once.
        assert code(client.refresh(0)) == 0
        peer.sendto(b"too late", (relay.host, relay.port))
        client.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.sock.recv(4096)
        assert filters(lab)[0]["relayed_to_client"] == relayed[1]


AIOICE_GATHER = """
import asyncio, json, sys
import aioice

async def main():
    conn = aioice.Connection(ice_controlling=True, stun_server=(sys.argv[1], 3478))
    await conn.gather_candidates()
    print(json.dumps([[c.type, c.host, c.port] for c in conn.local_candidates]))
    await conn.close()

asyncio.run(main())
"""


def test_clients_we_did_not_write_see_the_same_with_the_kernel_answering(
    nat_lab: Any, tmp_path: Path
) -> None:
    """turnutils_stunclient and aioice, behind every NAT type of the `matrix` preset at once,
    get the same server-reflexive address from the kernel as from user space (offload off
    everywhere: a wrong checksum would be dropped)."""
    lab = nat_lab("matrix")
    for node in lab.nodes:
        checksum_offload_off(lab, node)
    peers = sorted(n for n in lab.nodes if n.startswith("peer-") and n != "peer-udp-blocked")
    # Each peer's public side: its own address, or its NAT's WAN address (CGNAT: the carrier's).
    public = {peer: _public_address(lab, peer) for peer in peers}
    seen: dict[str, dict[str, tuple[set[str], set[str]]]] = {}
    for mode in ("off", "kernel"):
        with serving(lab, tmp_path, _config(fast_path=mode)):
            # turnutils_stunclient waits for the RFC 3489 tests a NAT filters: bounded here.
            runs = {
                peer: (
                    lab.spawn(peer, ["timeout", "8", "turnutils_stunclient", PRIMARY],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True),
                    lab.spawn(peer, [sys.executable, "-c", AIOICE_GATHER, PRIMARY],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                )
                for peer in peers
            }  # fmt: skip
            seen[mode] = {}
            for peer, (stunclient, gatherer) in runs.items():
                out, _ = stunclient.communicate(timeout=20)
                gathered, err = gatherer.communicate(timeout=30)
                assert gatherer.returncode == 0, (peer, err)
                reflexive = set(re.findall(r"UDP reflexive addr: (\S+):\d+", out))
                srflx = {host for kind, host, _ in json.loads(gathered) if kind == "srflx"}
                seen[mode][peer] = (reflexive, srflx)
            answered = filters(lab)[0]["answered_v4"] if mode == "kernel" else None
        if answered is not None:
            assert answered >= 2 * len(peers), "the kernel answered every client's plain Bindings"
    assert seen["kernel"] == seen["off"], seen
    assert seen["off"] == {peer: ({public[peer]}, {public[peer]}) for peer in peers}, seen


def _public_address(lab: Lab, node: str) -> str:
    """Where a node's packets come from on the internet segment: its own address when it is
    on it, else the WAN address of the outermost NAT above it."""
    nodes = lab.state.nodes
    while nodes[node].get("behind") not in (None, "internet"):
        node = nodes[node]["behind"]
    return lab.address(node)


@pytest.mark.parametrize("length", [0, 200, 1468])
def test_turnutils_uclient_relays_with_the_fast_path_on_with_no_loss(
    nat_lab: Any, tmp_path: Path, length: int
) -> None:
    """coturn's own client and echo peer, both in node peer (offload off), with the kernel fast
    path on: every message back. Its channel mode picks numbers above 0x4FFF, which RFC 8656
    refuses (tests/integration/test_turn_uclient_modes.py), so it runs with Send indications,
    which the kernel leaves to user space: a fallback exercised by a client we did not write."""
    lab = nat_lab("open")
    for node in lab.nodes:
        checksum_offload_off(lab, node)
    peer_ip = lab.address("peer")
    assert peer_ip.startswith("203.0.113."), peer_ip  # the relay sends to the lab only
    echo = lab.spawn("peer", ["turnutils_peer", "-L", peer_ip, "-p", "3480"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with serving(lab, tmp_path, _turn_config()):
            argv = ["turnutils_uclient", "-s", "-n", "100", "-m", "4", "-l", str(length), "-e",
                    peer_ip, "-r", "3480", "-u", "alice", "-w", "wonderland", PRIMARY]  # fmt: skip
            done = lab.exec("peer", argv, timeout=60)
            output = done.stdout + done.stderr
            totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
            lost = re.findall(r"Total lost packets (\d+)", output)
            assert totals and lost, output[-2000:]
            assert totals[-1][0] == totals[-1][1] and int(lost[-1]) == 0, output[-2000:]
            (row,) = filters(lab)
            assert row["relayed_to_peer"] == row["relayed_to_client"] == 0, row
    finally:
        echo.terminate()
        echo.wait(5)


def test_a_dead_workers_channels_leave_the_kernel(nat_lab: Any, tmp_path: Path) -> None:
    """A TURN worker killed: its relay sockets die with it, so the supervisor removes its kernel
    entries before the ports can serve another allocation (the restarted worker starts empty)."""
    from natkit.stun.constants import AttrType
    from natkit.testing import children
    from tests.integration.turn_client import TurnClient, code, relayed

    lab = nat_lab("open")
    checksum_offload_off(lab, "peer")
    with serving(lab, tmp_path, _turn_config()) as proc:
        peer_ip = lab.address("peer")
        assert peer_ip.startswith("203.0.113."), peer_ip  # the relay sends to the lab only
        client_sock, peer = lab.socket("peer"), lab.socket("peer")
        client_sock.bind((peer_ip, 0))
        peer.bind((peer_ip, 0))
        client = TurnClient(3478, "alice", "wonderland", "natkit.lab", lab_socket=client_sock,
                            server_host=PRIMARY)  # fmt: skip
        answer = client.ask(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)])
        relay = relayed(answer)
        assert code(client.channel_bind(0x4001, Address(peer_ip, peer.getsockname()[1]))) == 0
        assert filters(lab)[0]["channels"] == 1
        workers = [p for p in children(proc.pid) if "multiprocessing" in _cmdline(p)
                   and "resource_tracker" not in _cmdline(p)]  # fmt: skip
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while filters(lab)[0]["channels"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert filters(lab)[0]["channels"] == 0
        peer.sendto(b"after the worker", (relay.host, relay.port))
        client.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.sock.recv(4096)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


AIORTC_PAIR = {
    "version": 1,
    "description": "alice behind a port-restricted cone NAT, bob on the internet",
    "servers": {"server": {"addresses": ["203.0.113.10", "203.0.113.11"]}},
    "nats": {"nat-a": {"type": "port-restricted-cone"}},
    "hosts": {"alice": {"behind": "nat-a"}, "bob": {"behind": "internet"}},
}


def test_aiortc_data_channel_through_the_kernel_relay(nat_lab: Any, tmp_path: Path) -> None:
    """A real WebRTC data channel (aiortc: DTLS and SCTP would fail on one wrong byte) from
    alice, relay-only, to bob on the internet: alice's channel to bob is relayed by the kernel
    both ways (offload off everywhere), and all of natkit p2p's bytes arrive."""
    from natkit.lab.topology import Topology
    from natkit.p2p.matrix import _read_line, serve_config

    lab = nat_lab(Topology.from_dict(AIORTC_PAIR, default_name="aiortc-kernel"))
    for node in lab.nodes:
        checksum_offload_off(lab, node)
    bob = lab.address("bob")
    assert bob.startswith("203.0.113."), bob  # the relay sends to the lab only
    config = serve_config("pw")
    config["stun"]["fast_path"] = "kernel"
    config["metrics"] = {"listen": METRICS}
    with serving(lab, tmp_path, config):
        common = ["--signal", f"http://{PRIMARY}:80", "--timeout", "20", "--wait", "30",
                  "--bytes", "262144", "--json"]  # fmt: skip
        relay = ["--relay-only", "--turn", f"turn:{PRIMARY}:3478?transport=udp",
                 "--user", "natkit", "--password", "pw"]  # fmt: skip
        pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        offer = lab.spawn("alice", [sys.executable, "-m", "natkit", "p2p", "offer", *common,
                                    *relay], **pipes)  # fmt: skip
        try:
            line = _read_line(offer, offer.stderr, 30.0)  # bounded: a silent offerer fails here
            assert line and line.startswith("pairing code: "), line
            answer = lab.exec("bob", [sys.executable, "-m", "natkit", "p2p", "answer",
                                      line.split()[2], *common, "--stun", f"stun:{PRIMARY}"],
                              timeout=90)  # fmt: skip
            out, err = offer.communicate(timeout=60)
        finally:
            if offer.poll() is None:
                offer.kill()
                offer.wait()
        report = json.loads(out)
        assert answer.returncode == 0 and report["connected"], (report, answer.stdout, err)
        assert report["selected"]["local"]["type"] == "relay", report["selected"]
        assert report["bytes"] == 262144, report
        (row,) = filters(lab)
        # Everything after each channel's first packet (the slow path that binds it) is the
        # kernel's: the throughput run alone is hundreds of packets each way.
        assert row["relayed_to_peer"] > 100 and row["relayed_to_client"] > 100, row
