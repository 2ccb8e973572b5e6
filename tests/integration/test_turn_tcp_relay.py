"""RFC 6062 TCP relays through a real `natkit serve` (builtin engine, one worker) on loopback.

- coturn's own client, ``turnutils_uclient -T`` (client to client: both ends are TCP
  allocations on this server, so nothing leaves loopback), over TCP and TLS, with long-term and
  REST API credentials: every message relayed, none lost;
- natkit's codec as the client and a plain TCP server of the test as the peer: Connect leaves
  from the relayed address, ConnectionBind turns a new connection into a byte pipe, payloads
  arrive byte-exact both ways (large enough for flow control to work), what the peer sent
  before the bind comes first, either side closing closes the other; a peer connecting to the
  relayed address needs a permission (else it is closed, and the client hears nothing), with
  one the client gets a ConnectionAttempt; ConnectionBind with a wrong CONNECTION-ID (400) or
  by another user (441) is refused; an unbound connection is closed after the bind timeout
  (``NATKIT_TURN_TCP_BIND_TIMEOUT``: 2 s here instead of RFC 6062's 30); a Connect to a closed
  port is 447, counted; losing the control connection closes the data connections.

Every peer is this test's own socket on 127.0.0.1 (checked before the relay is asked to
connect), and the config opens exactly 127.0.0.1/32.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.addr import Address
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.message import Message, parse_message
from natkit.testing import Served, free_port, self_signed_certificate, serve, wait_until
from natkit.turn.tcp_sockets import BIND_TIMEOUT_ENV
from tests.integration.conftest import has_ipv6_loopback
from tests.integration.turn_client import TurnClient, code

pytestmark = [pytest.mark.integration]

HOST = "127.0.0.1"
USER, PASSWORD, REALM = "alice", "wonderland", "natkit.test"
SECRET = "tcp-relay-test-secret"
BIND_TIMEOUT = 2.0
UCLIENT = shutil.which("turnutils_uclient")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def _config(certificate: tuple[Path, Path], workers: int) -> dict[str, Any]:
    port, tls_port = free_port(), free_port()
    cert, key = certificate
    return {
        "version": 1,
        "stun": {
            "listen": [f"udp://{HOST}:{port}", f"tcp://{HOST}:{port}", f"tls://{HOST}:{tls_port}"],
            "tls": {"cert": str(cert), "key": str(key)},
            "workers": workers,
        },
        "turn": {
            "enabled": True,
            "engine": "builtin",
            "realm": REALM,
            "auth": {"users": {USER: PASSWORD, "bob": "builder"}, "secret": SECRET},
            "peers": {"allow": [f"{HOST}/32"]},  # these tests relay only to themselves
            "drain_timeout": 0.1,
        },
        "metrics": {"listen": f"{HOST}:{free_port('tcp')}"},
    }


@contextlib.contextmanager
def _serve(config: dict[str, Any]) -> Iterator[Served]:
    saved = os.environ.get(BIND_TIMEOUT_ENV)
    os.environ[BIND_TIMEOUT_ENV] = str(BIND_TIMEOUT)  # the server inherits it
    try:
        with serve(config) as running:
            tls = config["stun"]["listen"][2]
            running.tls_port = int(tls.rpartition(":")[2])  # type: ignore[attr-defined]
            yield running
    finally:
        if saved is None:
            os.environ.pop(BIND_TIMEOUT_ENV, None)
        else:
            os.environ[BIND_TIMEOUT_ENV] = saved


@pytest.fixture(scope="module")
def served(certificate: tuple[Path, Path]) -> Iterator[Served]:
    with _serve(_config(certificate, workers=1)) as running:
        yield running


def loopback(addr: Address) -> Address:
    """The network-safety rule: the relay only ever connects to this host's loopback."""
    assert ipaddress.ip_address(addr.host).is_loopback, addr
    return addr


# -- coturn's client -----------------------------------------------------------------------


def _uclient(served: Served, *args: str) -> str:
    assert UCLIENT is not None
    argv = [UCLIENT, "-T", "-n", "20", "-m", "2", "-l", "120", *args, HOST]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout


@pytest.mark.skipif(UCLIENT is None, reason="coturn's turnutils_uclient is not installed")
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("credentials", ["long-term", "rest"])
def test_turnutils_uclient_tcp_relay(served: Served, tls: bool, credentials: str) -> None:
    # -T: RFC 6062 TCP allocations, client to client (-y is implied): the two clients'
    # allocations Connect to each other's relayed addresses (127.0.0.1) on this server.
    long_term = ["-u", USER, "-w", PASSWORD]
    auth = long_term if credentials == "long-term" else ["-W", SECRET, "-u", "carol"]
    port = served.tls_port if tls else served.port  # type: ignore[attr-defined]
    to_peer = r'natkit_turn_relayed_bytes_total\{direction="client_to_peer"\}'
    before = served.metric(to_peer)
    out = _uclient(served, *auth, *(["-S"] if tls else []), "-p", str(port))
    # 2 clients x 20 messages, every one sent and received back, none lost.
    assert "tot_send_msgs=40, tot_recv_msgs=40" in out, out
    assert "Total lost packets 0 " in out, out
    # The bytes went through the relay's data connections (counters flush every 0.5 s).
    assert wait_until(lambda: served.metric(to_peer) - before >= 40 * 120)


@pytest.mark.skipif(UCLIENT is None, reason="coturn's turnutils_uclient is not installed")
def test_turnutils_uclient_tcp_relay_with_two_workers(certificate: tuple[Path, Path]) -> None:
    # The data connections of a client reach the worker of its allocation: natkit.net.steering
    # puts every TCP/TLS connection of one client IP on one worker.
    with _serve(_config(certificate, workers=2)) as running:
        for _ in range(3):  # without steering, each run fails with probability 15/16
            out = _uclient(running, "-u", USER, "-w", PASSWORD, "-p", str(running.port))
            assert "tot_send_msgs=40, tot_recv_msgs=40" in out, out
            assert "Total lost packets 0 " in out, out


# -- natkit's codec against a plain TCP server ---------------------------------------------


class Peer:
    """A plain TCP server of this test on 127.0.0.1: what the relay connects to."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(5)
        self.address = loopback(Address(HOST, self.listener.getsockname()[1]))

    def accept(self) -> tuple[socket.socket, Address]:
        conn, addr = self.listener.accept()
        conn.settimeout(5)
        return conn, Address(addr[0], addr[1])

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    server = Peer()
    yield server
    server.close()


def control(served: Served, user: str = USER, password: str = PASSWORD) -> TurnClient:
    """A TCP control connection with a TCP allocation."""
    client = TurnClient(served.port, user, password, REALM, tcp=True)
    answer = client.ask(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 6)])
    assert code(answer) == 0, answer
    relayed = answer.get(AttrType.XOR_RELAYED_ADDRESS)
    assert isinstance(relayed, Address)
    client.relayed = relayed
    return client


def connect(client: TurnClient, peer: Address) -> Message:
    return client.ask(Method.CONNECT, [(AttrType.XOR_PEER_ADDRESS, loopback(peer))])


def cid_of(answer: Message) -> int:
    assert code(answer) == 0, answer
    cid = answer.get(AttrType.CONNECTION_ID)
    assert isinstance(cid, int)
    return cid


class Data:
    """A client data connection: a new TCP connection, ConnectionBind, then raw bytes."""

    def __init__(
        self, served: Served, owner: TurnClient, cid: int, user: str = USER, behind: bytes = b""
    ) -> None:
        """`behind`: bytes sent in the same write as the ConnectionBind, right after it."""
        password = PASSWORD if user == USER else "builder"
        self.turn = TurnClient(served.port, user, password, REALM, tcp=True)
        self.turn.nonce = owner.nonce  # bound to the client's IP: valid on this connection too
        if behind:
            send, sent = self.turn.sock.sendall, []

            def request_and_data(request: bytes) -> None:
                send(request if sent else request + behind)
                sent.append(request)

            self.turn._send = request_and_data  # type: ignore[method-assign]
        self.answer = self.turn.ask(Method.CONNECTION_BIND, [(AttrType.CONNECTION_ID, cid)])
        self.sock = self.turn.sock

    def take(self) -> bytes:
        """What the STUN reader had buffered past the answer: the first relayed bytes."""
        rest, self.turn._buffer = self.turn._buffer, b""
        return rest

    def close(self) -> None:
        self.sock.close()


def read_exactly(sock: socket.socket, size: int, first: bytes = b"") -> bytes:
    data = bytearray(first)
    while len(data) < size:
        chunk = sock.recv(min(65536, size - len(data)))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def closed(sock: socket.socket, within: float = 5.0) -> bool:
    """Whether the other end closed `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


@contextlib.contextmanager
def connected(served: Served, peer: Peer) -> Iterator[tuple[TurnClient, int, socket.socket]]:
    """A TCP allocation that Connected to `peer`: (control client, CONNECTION-ID, the peer's
    side of the connection), all closed afterwards."""
    client = control(served)
    try:
        cid = cid_of(connect(client, peer.address))
        conn, source = peer.accept()
        assert source == client.relayed  # §5.2: the connection leaves from the relayed address
        with conn:
            yield client, cid, conn
    finally:
        client.close()


def test_connect_pipes_bytes_both_ways_peer_data_first(served: Served, peer: Peer) -> None:
    with connected(served, peer) as (client, cid, conn):
        early = os.urandom(200_000)  # more than the relay buffers before the bind: it pauses
        sender = threading.Thread(target=conn.sendall, args=(early,))
        sender.start()
        time.sleep(0.3)
        data = Data(served, client, cid)
        assert data.answer.message_class is MessageClass.SUCCESS, data.answer
        assert data.answer.method == Method.CONNECTION_BIND
        assert read_exactly(data.sock, len(early), data.take()) == early
        sender.join()
        up, down = os.urandom(1_500_000), os.urandom(1_500_000)
        got_up: list[bytes] = []
        reader = threading.Thread(target=lambda: got_up.append(read_exactly(conn, len(up))))
        reader.start()
        writer = threading.Thread(target=conn.sendall, args=(down,))
        writer.start()
        data.sock.sendall(up)
        assert read_exactly(data.sock, len(down)) == down
        reader.join(10)
        writer.join(10)
        assert got_up == [up]
        data.close()  # §5.5: the client data connection closing closes the peer's
        assert closed(conn)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _push(sock: socket.socket, data: bytes, stall: float) -> int:
    """Send `data` until the other side stops taking it for `stall` seconds: bytes sent."""
    sock.settimeout(stall)
    view, sent = memoryview(data), 0
    with contextlib.suppress(TimeoutError):
        while sent < len(data):
            sent += sock.send(view[sent : sent + 65536])
    sock.settimeout(5)
    return sent


@pytest.mark.parametrize("direction", ["client_to_peer", "peer_to_client"])
def test_a_reader_that_stops_stops_the_writer(served: Served, peer: Peer, direction: str) -> None:
    # Nobody reads one end: the relay stops reading the other (its buffers are bounded), so
    # the writer stalls once the kernel's socket buffers are full, and the relay's memory
    # does not grow by what was sent. Then the reader drains it all, byte-exact.
    (worker,) = served.workers()
    with connected(served, peer) as (client, cid, conn):
        data = Data(served, client, cid)
        assert code(data.answer) == 0
        writer, reader = (data.sock, conn) if direction == "client_to_peer" else (conn, data.sock)
        payload = bytes(range(256)) * (400 * 1024)  # 100 MiB, more than every buffer between
        before = _rss(worker)
        sent = _push(writer, payload, stall=2.0)
        grown = _rss(worker) - before
        assert sent < len(payload), "the writer never stalled"
        assert grown < 24 << 20, f"the relay grew by {grown >> 20} MiB holding {sent >> 20} MiB"
        assert (
            read_exactly(reader, sent, data.take() if reader is data.sock else b"")
            == (payload[:sent])
        )
        data.close()


def test_bytes_behind_the_connection_bind_go_to_the_peer(served: Served, peer: Peer) -> None:
    with connected(served, peer) as (client, cid, conn):
        raw = b"\xff not STUN, not ChannelData: raw bytes behind the request"
        data = Data(served, client, cid, behind=raw)
        assert code(data.answer) == 0
        assert read_exactly(conn, len(raw)) == raw  # §5.4: as is, from the first byte
        data.close()


def test_the_peer_closing_closes_the_client_data_connection(served: Served, peer: Peer) -> None:
    with connected(served, peer) as (client, cid, conn):
        data = Data(served, client, cid)
        assert code(data.answer) == 0
        conn.sendall(b"last words")
        conn.close()
        assert read_exactly(data.sock, 10, data.take()) == b"last words"
        assert closed(data.sock)
        data.close()
        # The allocation lives on: the same peer may be connected again (no 446).
        again = connect(client, peer.address)
        assert code(again) == 0
        peer.accept()[0].close()


def _attempt(client: TurnClient, within: float) -> Message | None:
    """The next ConnectionAttempt indication on the control connection, if one comes."""
    client.sock.settimeout(within)
    try:
        msg = parse_message(client.recv())
    except TimeoutError:
        return None
    finally:
        client.sock.settimeout(5)
    assert msg.method == Method.CONNECTION_ATTEMPT, msg
    return msg


def test_a_connecting_peer_needs_a_permission(served: Served) -> None:
    client = control(served)
    relayed = loopback(client.relayed or Address("", 0))
    try:
        stranger = socket.create_connection(relayed, timeout=5)
        assert closed(stranger)  # §5.3: no permission for 127.0.0.1 yet
        stranger.close()
        assert _attempt(client, 0.5) is None  # and the client is told nothing
        assert code(client.permit([Address(HOST, 0)])) == 0
        friend = socket.create_connection(relayed, timeout=5)
        attempt = _attempt(client, 5)
        assert attempt is not None
        assert attempt.get(AttrType.XOR_PEER_ADDRESS) == Address(*friend.getsockname())
        cid = attempt.get(AttrType.CONNECTION_ID)
        assert isinstance(cid, int)
        friend.sendall(b"hi, relay")
        data = Data(served, client, cid)
        assert code(data.answer) == 0
        assert read_exactly(data.sock, 9, data.take()) == b"hi, relay"
        data.sock.sendall(b"hi, peer")
        assert read_exactly(friend, 8) == b"hi, peer"
        data.close()
        friend.close()
    finally:
        client.close()


def test_connection_bind_refusals(served: Served, peer: Peer) -> None:
    with connected(served, peer) as (client, cid, conn):
        wrong = Data(served, client, cid ^ 0x5A5A5A5A)
        assert code(wrong.answer) == 400  # §5.4: no pending connection with that id
        wrong.close()
        bob = Data(served, client, cid, user="bob")
        assert code(bob.answer) == 441  # the allocation is alice's
        bob.close()
        right = Data(served, client, cid)  # the refusals left the connection pending
        assert code(right.answer) == 0
        right.sock.sendall(b"ok")
        assert read_exactly(conn, 2) == b"ok"
        right.close()


def test_an_unbound_connection_is_closed_after_the_bind_timeout(served: Served) -> None:
    client = control(served)
    try:
        assert code(client.permit([Address(HOST, 0)])) == 0
        relayed = loopback(client.relayed or Address("", 0))
        waiting = socket.create_connection(relayed, timeout=5)
        started = time.monotonic()
        assert _attempt(client, 5) is not None
        assert not closed(waiting, within=BIND_TIMEOUT / 2)  # open while the bind may come
        assert closed(waiting, within=BIND_TIMEOUT + 3)  # + the one-second timer, + slack
        assert time.monotonic() - started >= BIND_TIMEOUT - 0.1
        waiting.close()
    finally:
        client.close()


def test_connect_to_a_closed_port_is_447_and_counted(served: Served) -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        nobody = loopback(Address(HOST, probe.getsockname()[1]))  # bound, never listening
        before = served.metric(r'natkit_turn_refusals_total\{.*reason="connection_failed".*\}')
        client = control(served)
        try:
            assert code(connect(client, nobody)) == 447
        finally:
            client.close()

    def counted() -> bool:
        pattern = r'natkit_turn_refusals_total\{.*reason="connection_failed".*\}'
        return served.metric(pattern) >= before + 1

    assert wait_until(counted, timeout=5)  # the workers' counters reach /metrics every 0.5 s


def test_losing_the_control_connection_closes_the_data_connections(
    served: Served, peer: Peer
) -> None:
    with connected(served, peer) as (client, cid, conn):
        data = Data(served, client, cid)
        assert code(data.answer) == 0
        client.reset()  # RFC 8656 §7: the allocation ends with it, and RFC 6062 §5.5 its pipes
        assert closed(conn)
        assert closed(data.sock)
        data.close()


def test_tls_control_and_data_connections(
    served: Served, peer: Peer, certificate: tuple[Path, Path]
) -> None:
    tls = ssl.create_default_context(cafile=str(certificate[0]))
    port = served.tls_port  # type: ignore[attr-defined]
    client = TurnClient(port, USER, PASSWORD, REALM, tcp=True, tls=tls)
    try:
        answer = client.ask(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 6)])
        assert code(answer) == 0
        cid = cid_of(connect(client, peer.address))
        conn, _ = peer.accept()
        data = TurnClient(port, USER, PASSWORD, REALM, tcp=True, tls=tls)
        data.nonce = client.nonce
        assert code(data.ask(Method.CONNECTION_BIND, [(AttrType.CONNECTION_ID, cid)])) == 0
        payload = os.urandom(300_000)
        threading.Thread(target=conn.sendall, args=(payload,)).start()
        first, data._buffer = data._buffer, b""
        assert read_exactly(data.sock, len(payload), first) == payload
        data.sock.sendall(b"over tls")
        assert read_exactly(conn, 8) == b"over tls"
        with contextlib.suppress(OSError):
            data.sock.close()
        assert closed(conn)
        conn.close()
    finally:
        client.close()


@pytest.mark.skipif(UCLIENT is None, reason="coturn's turnutils_uclient is not installed")
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_turnutils_uclient_ipv6_tcp_relay(certificate: tuple[Path, Path]) -> None:
    # -x: IPv6 relayed addresses (REQUESTED-ADDRESS-FAMILY) over an IPv6 control connection;
    # the two clients' allocations Connect to each other's [::1] relayed addresses.
    config = _config(certificate, workers=1)
    port = int(config["stun"]["listen"][0].rpartition(":")[2])
    config["stun"]["listen"].append(f"tcp://[::1]:{port}")
    config["turn"]["peers"]["allow"].append("::1/128")
    with _serve(config) as running:
        assert UCLIENT is not None
        argv = [UCLIENT, "-v", "-T", "-x", "-n", "20", "-m", "2", "-l", "120",
                "-u", USER, "-w", PASSWORD, "-p", str(port), "::1"]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
        relays = re.findall(r"IPv(\d)\. Received relay addr: (\S+)", out)
        assert relays and all(v == "6" and a.startswith("::1:") for v, a in relays), out
        assert "tot_send_msgs=40, tot_recv_msgs=40" in out, out
        assert "Total lost packets 0 " in out, out
        to_peer = r'natkit_turn_relayed_bytes_total\{direction="client_to_peer"\}'
        assert wait_until(lambda: running.metric(to_peer) >= 40 * 120)
