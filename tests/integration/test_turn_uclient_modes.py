"""coturn's own test client, `turnutils_uclient` (4.6.1), in its modes against `natkit serve`
(builtin engine, loopback), with `turnutils_peer` echoing on 127.0.0.1 and ::1.

- Its default mode makes RTP/RTCP allocation pairs: EVEN-PORT with the R bit, then an Allocate
  with the RESERVATION-TOKEN from another 5-tuple, which must get port N+1 (RFC 8656 §7.2). It
  relays with Send indications (`-s`) over UDP and TCP (`-t`), with long-term (`-u/-w`) and REST
  credentials (`-W`), to an IPv4 and an IPv6 peer — no packet lost, every one through natkit.
- `-Z`: a dual allocation (ADDITIONAL-ADDRESS-FAMILY; 4.6.1 sends it under coturn's draft code
  point 0x8032): an IPv4 and an IPv6 relay from one Allocate on the IPv4 listener; the peer's
  family picks the relay.
- Its channel mode picks channel numbers above 0x4FFF (FIELD-NOTES), which RFC 8656 §12 refuses:
  the pair is allocated, the ChannelBind gets 400.

The server runs one worker: a token is the state of the worker that made the reservation, and
SO_REUSEPORT may hand the claiming 5-tuple to another (508 there; see natkit.turn.reservations).
Runs are bounded: a few clients, ten packets each.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from natkit import testing
from natkit.testing import Served, stop_process, wait_until
from tests.integration.conftest import HOST, has_ipv6_loopback

pytestmark = [pytest.mark.integration]

UCLIENT, PEER_TOOL = shutil.which("turnutils_uclient"), shutil.which("turnutils_peer")
if UCLIENT is None or PEER_TOOL is None:
    pytest.skip("turnutils_uclient/turnutils_peer not installed (coturn)", allow_module_level=True)

USER, PASSWORD, SECRET = "alice", "wonderland", "uclient-secret"
PACKETS, CLIENTS = 10, 2
RELAYED = re.compile(r"IPv([46])\. Received relay addr: (\S+):(\d+)$")
TOKEN = re.compile(r"clnet_allocate: rtv=(\d+)$")


def _both_free() -> int:
    """A UDP+TCP port free on 127.0.0.1 and on ::1 (the listeners share one port number)."""
    for _ in range(50):
        port = testing.free_port("udp+tcp", HOST)
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET6, kind) as s:
                    s.bind(("::1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both loopbacks")


@pytest.fixture(scope="module")
def peer_port() -> Iterator[int]:
    """`turnutils_peer` echoing on 127.0.0.1 and ::1 (the uclient also talks to port + 1)."""
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    port = _both_free()
    assert PEER_TOOL is not None
    proc = subprocess.Popen(
        [PEER_TOOL, "-L", HOST, "-L", "::1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: _echoes(port), 10), "turnutils_peer did not start"
        yield port
    finally:
        stop_process(proc)


def _echoes(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(b"ping", (HOST, port))
        try:
            return s.recv(64) == b"ping"
        except OSError:
            return False


def _serve(natkit_serve: Callable[..., Served], workers: int) -> Served:
    port = _both_free()
    listen = [f"{t}://{h}:{port}" for h in (HOST, "[::1]") for t in ("udp", "tcp")]
    turn = {
        "enabled": True, "engine": "builtin",
        "auth": {"users": {USER: PASSWORD}, "secret": SECRET},
        # Loopback is denied by default (an open relay into the host): open exactly the peers.
        "peers": {"allow": [f"{HOST}/32", "::1/128"]},
        "drain_timeout": 1,
    }  # fmt: skip
    return natkit_serve(stun={"listen": listen, "workers": workers}, port=port, turn=turn)


@pytest.fixture
def server(natkit_serve: Callable[..., Served]) -> Served:
    """natkit serve on UDP+TCP, 127.0.0.1 and [::1] (so both relay families exist)."""
    return _serve(natkit_serve, 1)


@dataclass
class Run:
    status: int
    output: str
    sent: int
    received: int
    lost: int
    relayed: list[tuple[int, str, int, int]]
    """(IP version, host, port, token) of each XOR-RELAYED-ADDRESS printed (-v); token: the
    RESERVATION-TOKEN of that allocation's response as a number, 0 if none."""


def uclient(served: Served, peer: str, peer_port: int, *flags: str) -> Run:
    # Hard rule: the relay is only ever asked to send to loopback.
    assert ipaddress.ip_address(peer).is_loopback, peer
    assert UCLIENT is not None
    argv = [UCLIENT, "-v", "-n", str(PACKETS), "-m", str(CLIENTS), "-e", peer,
            "-r", str(peer_port), "-p", str(served.port), *flags, HOST]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    totals = re.findall(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    lost = re.findall(r"Total lost packets (\d+)", output)
    relayed, pending = [], []
    for line in output.splitlines():
        if m := RELAYED.search(line):
            pending.append((int(m[1]), m[2], int(m[3])))
        elif m := TOKEN.search(line):
            relayed += [(*p, int(m[1])) for p in pending]
            pending = []
    sent, received = (int(totals[-1][0]), int(totals[-1][1])) if totals else (0, 0)
    return Run(done.returncode, output, sent, received, int(lost[-1]) if lost else -1, relayed)


def assert_relayed_without_loss(run: Run, served: Served) -> None:
    assert run.status == 0, run.output[-3000:]
    assert run.lost == 0 and run.sent >= PACKETS and run.received == run.sent, run.output[-3000:]

    def counted() -> bool:  # every packet went through natkit, both ways
        to_peer = served.metric(r'natkit_turn_relayed_packets_total\{direction="client_to_peer"\}')
        back = served.metric(r'natkit_turn_relayed_packets_total\{direction="peer_to_client"\}')
        return to_peer >= run.sent and back >= run.received

    assert wait_until(counted, 5)


def assert_rtp_rtcp_pair(run: Run, version: int) -> None:
    """An allocation on an even port N with a token, then the next one exactly on N+1."""
    pairs = [
        (first, second)
        for first, second in zip(run.relayed, run.relayed[1:], strict=False)
        if first[3] and not second[3]
    ]
    assert pairs, run.relayed
    for (v, host, port, _), (v2, host2, port2, _) in pairs:
        assert v == v2 == version and host == host2
        assert port % 2 == 0 and port2 == port + 1, pairs


@pytest.mark.parametrize(
    ("flags", "peer"),
    [
        pytest.param(["-u", USER, "-w", PASSWORD], HOST, id="udp-long-term"),
        pytest.param(["-t", "-u", USER, "-w", PASSWORD], HOST, id="tcp-long-term"),
        pytest.param(["-W", SECRET, "-u", "carol"], HOST, id="udp-rest"),
        pytest.param(["-t", "-W", SECRET, "-u", "carol"], HOST, id="tcp-rest"),
        pytest.param(["-u", USER, "-w", PASSWORD], "::1", id="udp-ipv6-peer"),
    ],
)
def test_default_mode_rtp_rtcp_pairs_relay_without_loss(
    server: Served, peer_port: int, flags: list[str], peer: str
) -> None:
    run = uclient(server, peer, peer_port, "-s", *flags)
    assert_relayed_without_loss(run, server)
    assert_rtp_rtcp_pair(run, ipaddress.ip_address(peer).version)


@pytest.mark.parametrize("transport", [[], ["-t"]], ids=["udp", "tcp"])
def test_reservation_claims_meet_their_worker(
    natkit_serve: Callable[..., Served], peer_port: int, transport: list[str]
) -> None:
    """With 2 workers the RTCP allocation's 5-tuple (another client port) hashes anywhere;
    source-address steering (natkit.net.steering) brings it to the worker that holds the
    reservation. Without steering 3 runs in 4 got 508."""
    served = _serve(natkit_serve, 2)
    for _ in range(3):
        run = uclient(served, HOST, peer_port, "-s", *transport, "-u", USER, "-w", PASSWORD)
        assert_relayed_without_loss(run, served)
        assert_rtp_rtcp_pair(run, 4)


@pytest.mark.parametrize("transport", [[], ["-t"]], ids=["udp", "tcp"])
@pytest.mark.parametrize("peer", [HOST, "::1"])
def test_dual_allocation_relays_to_either_family(
    server: Served, peer_port: int, transport: list[str], peer: str
) -> None:
    run = uclient(server, peer, peer_port, "-Z", "-s", "-u", USER, "-w", PASSWORD, *transport)
    assert_relayed_without_loss(run, server)
    if peer == "::1":
        # The uclient prints each relayed address until it finds the peer's family: an IPv4
        # and an IPv6 relay in one response, from the IPv4 listener.
        versions = [r[0] for r in run.relayed]
        assert versions.count(4) == versions.count(6) >= CLIENTS, run.relayed
        assert all(host == "::1" for v, host, *_ in run.relayed if v == 6)
        # A dual allocation is one allocation in the outcome counts, not one per relay socket.
        created = r'natkit_turn_allocation_outcomes_total\{outcome="created"\}'
        assert wait_until(lambda: server.metric(created) == versions.count(4), 5), (
            server.metric(created),
            run.relayed,
        )


def test_channel_mode_numbers_above_0x4fff_are_refused(server: Served, peer_port: int) -> None:
    """The uclient picks its channel numbers at random in 0x4000-0x7FFF (coturn's own range):
    RFC 8656 allows 0x4000-0x4FFF only, so a bind is refused with 400 unless the uclient
    happened to pick only allowed numbers: then every bind succeeds and it relays (ChannelData,
    through the relay pump) with no loss."""
    run = uclient(server, HOST, peer_port, "-u", USER, "-w", PASSWORD)
    bound = [int(n, 16) for n in re.findall(r"success: 0x([0-9a-f]+)$", run.output, re.M)]
    assert all(0x4000 <= n <= 0x4FFF for n in bound), bound  # never a success above 0x4FFF
    if run.status != 0:
        assert "channel bind: error 400" in run.output
    else:  # all its numbers were allowed ones (about 1 run in 16)
        assert bound, run.output[-3000:]
        assert_relayed_without_loss(run, server)
    assert_rtp_rtcp_pair(run, 4)  # the allocations before it were fine
