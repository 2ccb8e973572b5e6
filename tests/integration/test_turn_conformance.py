"""One TURN conformance suite, run against both engines: ``builtin`` and ``coturn``.

Each engine serves the same natkit configs: the builtin as `natkit serve` runs it (STUN and TURN
on the same listeners), coturn as a child process with the turnserver.conf natkit renders.
Clients are code natkit did not write: aioice's TURN client and an aiortc peer connection forced
through the relay (``iceTransportPolicy: relay``).

Everything stays on loopback. The configs deny every peer range by default; the ``lab`` config
opens exactly 127.0.0.1 (the tests relay to themselves) and 10.1.2.3 (only ever given a
permission: CreatePermission sends nothing to the peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aioice import stun, turn

from natkit.config import Config, loads, to_dict
from natkit.diag.turncheck import TurnCheckReport, check_turn
from natkit.turn.credentials import mint
from tests.integration.conftest import has_ipv6_loopback, reap, start_serve
from tests.integration.coturn_harness import free_port, relay_range, running_coturn

pytestmark = [pytest.mark.integration]

HOST = "127.0.0.1"
SECRET = "sesame"
NONCE_LIFETIME = 2


IPV6 = has_ipv6_loopback()

CONFIG = """
version: 1
stun:
  listen: {listen}
turn:
  enabled: true
  engine: {engine}
  realm: natkit.test
  auth: {auth}
  relay: {{ports: "{low}-{high}"}}
  quota: {{per_user: {per_user}}}
  peers: {peers}
"""
USERS = "{users: {alice: wonderland, bob: builder}}"
LAB_PEERS = '{allow: ["127.0.0.1/32", "10.1.2.3/32"]}'


def make_config(engine: str, *, auth: str = USERS, peers: str = "{}", per_user: int = 50) -> Config:
    port = free_port()
    listen = [f"udp://{HOST}:{port}", f"tcp://{HOST}:{port}"]
    if IPV6:
        listen.append(f"udp://[::1]:{port}")
    low, high = relay_range()
    text = CONFIG.format(
        listen=listen, engine=engine, auth=auth, low=low, high=high, peers=peers,
        per_user=per_user,
    )  # fmt: skip
    return loads(text.replace("'", '"'), "conformance.yaml")


@contextlib.contextmanager
def running_serve(cfg: Config, workdir: Path, workers: int = 1) -> Iterator[None]:
    """`natkit serve` with the builtin engine, as an operator runs it; always stopped.
    With 2 workers the kernel spreads the suite's 5-tuples over both (quotas are server-wide)."""
    data = to_dict(cfg, redact=False)
    data["stun"]["workers"] = workers
    data["metrics"]["listen"] = None
    path = workdir / "natkit.yaml"
    path.write_text(yaml.safe_dump(data))
    proc, lines = start_serve(path, len(cfg.stun.listen))
    try:
        assert len(lines) == len(cfg.stun.listen), (lines, proc.stderr and proc.stderr.read())
        assert all("STUN + TURN" in line for line in lines), lines
        yield
    finally:
        assert reap(proc) == 0


@contextlib.contextmanager
def running(engine: str, cfg: Config, workdir: Path, workers: int = 1) -> Iterator[None]:
    if engine == "builtin":
        with running_serve(cfg, workdir, workers):
            yield
        return
    from natkit.turn import coturn

    text = coturn.render(cfg, coturn.detect_version(), runtime_dir=str(workdir))
    text += "relay-ip=127.0.0.1\n" + ("relay-ip=::1\n" if IPV6 else "")
    with running_coturn(text, HOST, cfg.stun.listen[0].port, workdir):
        yield


@dataclass
class Server:
    engine: str
    config: Config

    @property
    def port(self) -> int:
        return self.config.stun.listen[0].port

    @property
    def url(self) -> str:
        return f"turn:{HOST}:{self.port}"

    @property
    def addr(self) -> tuple[str, int]:
        return (HOST, self.port)


COTURN = pytest.param("coturn", marks=pytest.mark.coturn)
"""Every coturn case carries the `coturn` marker: under CI=true its skip is a failure."""


@pytest.fixture(scope="module", params=["builtin", "builtin-workers2", COTURN])
def flavor(request: pytest.FixtureRequest) -> str:
    """An engine, and for the builtin how many `stun.workers` serve it."""
    if request.param == "coturn" and shutil.which("turnserver") is None:
        pytest.skip("coturn's turnserver is not installed (apt-get install coturn)")
    return str(request.param)


@pytest.fixture(scope="module")
def engine(flavor: str) -> str:
    return flavor.partition("-")[0]


@pytest.fixture(scope="module")
def workers(flavor: str) -> int:
    return 2 if flavor.endswith("-workers2") else 1


Factory = pytest.TempPathFactory


def _server(engine: str, workers: int, factory: Factory, **kwargs: Any) -> Iterator[Server]:
    cfg = make_config(engine, **kwargs)
    with running(engine, cfg, factory.mktemp(engine), workers):
        yield Server(engine, cfg)


@pytest.fixture(scope="module")
def lab(engine: str, workers: int, tmp_path_factory: Factory) -> Iterator[Server]:
    yield from _server(engine, workers, tmp_path_factory, peers=LAB_PEERS)


@pytest.fixture(scope="module")
def quota(engine: str, workers: int, tmp_path_factory: Factory) -> Iterator[Server]:
    # Its own server: coturn counts a UDP allocation against the quota for a while after
    # Refresh(0), so a small quota on a shared server would leak into other tests.
    yield from _server(engine, workers, tmp_path_factory, per_user=2)


@pytest.fixture(scope="module")
def default_policy(engine: str, workers: int, tmp_path_factory: Factory) -> Iterator[Server]:
    yield from _server(engine, workers, tmp_path_factory)


@pytest.fixture(scope="module")
def rest(engine: str, workers: int, tmp_path_factory: Factory) -> Iterator[Server]:
    auth = f"{{secret: {SECRET}, nonce_lifetime: {NONCE_LIFETIME}}}"
    yield from _server(engine, workers, tmp_path_factory, auth=auth, peers=LAB_PEERS)


def check(url: str, **kwargs: Any) -> TurnCheckReport:
    return asyncio.run(check_turn(url, timeout=5, **kwargs))


# -- relaying ------------------------------------------------------------------------------


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait((data, addr[:2]))


async def _relay_both_ways(server: Server, transport: str) -> None:
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(_Inbox, local_addr=(HOST, 0))
    client_transport, client = await turn.create_turn_endpoint(
        _Inbox, server.addr, "alice", "wonderland", transport=transport
    )
    try:
        relayed = client_transport.get_extra_info("sockname")
        peer_addr = peer_transport.get_extra_info("sockname")[:2]
        low, high = relay_range()
        assert relayed[0] == HOST and low <= relayed[1] <= high  # turn.relay.ports is inclusive
        for i in range(3):  # the first send binds a channel; later ones use ChannelData
            client_transport.sendto(b"ping %d" % i, peer_addr)
            data, source = await asyncio.wait_for(peer.got.get(), 5)
            assert (data, source) == (b"ping %d" % i, tuple(relayed))
            peer_transport.sendto(b"pong %d" % i, tuple(relayed))
            data, source = await asyncio.wait_for(client.got.get(), 5)
            assert (data, source) == (b"pong %d" % i, peer_addr)
    finally:
        client_transport.close()
        peer_transport.close()
        await asyncio.sleep(0.2)  # let the Refresh(LIFETIME 0) go out


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_aioice_allocates_and_relays_both_ways(lab: Server, transport: str) -> None:
    asyncio.run(_relay_both_ways(lab, transport))


async def _data_channel(server: Server) -> list[str]:
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCIceTransportPolicy,
        RTCPeerConnection,
    )

    ice = RTCIceServer(urls=server.url, username="alice", credential="wonderland")
    conf = RTCConfiguration(iceServers=[ice], iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    caller, callee = RTCPeerConnection(conf), RTCPeerConnection(conf)
    got: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    try:
        channel = caller.createDataChannel("chat")

        @callee.on("datachannel")
        def on_channel(remote: Any) -> None:
            @remote.on("message")
            def on_message(message: str) -> None:
                if not got.done():
                    got.set_result(message)

        @channel.on("open")
        def on_open() -> None:
            channel.send("hello through the relay")

        await caller.setLocalDescription(await caller.createOffer())
        await callee.setRemoteDescription(caller.localDescription)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)
        message = await asyncio.wait_for(got, 20)
        pair = caller.sctp.transport.transport._connection._nominated  # type: ignore[union-attr]
        kinds = sorted({c.local_candidate.type for c in pair.values()})
        return [message, *kinds]
    finally:
        await caller.close()
        await callee.close()


def test_aiortc_data_channel_through_the_relay(lab: Server) -> None:
    message, *kinds = asyncio.run(_data_channel(lab))
    assert message == "hello through the relay"
    assert kinds == ["relay"]


# -- authentication ------------------------------------------------------------------------


def test_wrong_password_is_401(lab: Server) -> None:
    report = check(lab.url, username="alice", password="nope")
    failed = report.failed_step
    assert failed is not None and failed.name == "allocate" and failed.error_code == 401


def test_rest_api_credentials(rest: Server) -> None:
    assert check(rest.url, secret=SECRET).ok


def test_expired_rest_credential_is_401(rest: Server) -> None:
    expired = mint(SECRET, "carol", 60, now=time.time() - 3600)
    report = check(rest.url, username=expired.username, password=expired.password)
    failed = report.failed_step
    assert failed is not None and failed.name == "allocate" and failed.error_code == 401


async def _stale_nonce(server: Server) -> None:
    cred = mint(SECRET, "dave", 600, now=time.time())
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: turn.TurnClientUdpProtocol(server.addr, cred.username, cred.password, 600, 300),
        remote_addr=server.addr,
    )
    try:
        await asyncio.wait_for(proto.connect(), 5)
        await asyncio.sleep(NONCE_LIFETIME + 1.2)

        def permission() -> stun.Message:
            msg = stun.Message(stun.Method.CREATE_PERMISSION, stun.Class.REQUEST)
            msg.attributes["XOR-PEER-ADDRESS"] = (HOST, 0)
            return msg

        with pytest.raises(stun.TransactionFailed) as stale:
            await asyncio.wait_for(proto.request(permission()), 5)
        assert stale.value.response.error_code == 438
        assert "NONCE" in stale.value.response.attributes
        # The client recovers: request_with_retry takes the new nonce and succeeds.
        response, _ = await asyncio.wait_for(proto.request_with_retry(permission()), 5)
        assert response.message_class == stun.Class.RESPONSE
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proto.delete(), 2)
        transport.close()


def test_stale_nonce_is_438_and_the_client_recovers(rest: Server) -> None:
    asyncio.run(_stale_nonce(rest))


async def _quota(server: Server) -> int:
    loop = asyncio.get_running_loop()
    held: list[tuple[asyncio.BaseTransport, Any]] = []
    try:
        for _ in range(3):
            transport, proto = await loop.create_datagram_endpoint(
                lambda: turn.TurnClientUdpProtocol(server.addr, "bob", "builder", 600, 300),
                remote_addr=server.addr,
            )
            held.append((transport, proto))
            try:
                await asyncio.wait_for(proto.connect(), 5)
            except stun.TransactionFailed as err:
                return int(err.response.error_code)
        return 0
    finally:
        for transport, proto in held:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proto.delete(), 2)
            transport.close()


def test_quota_per_user_is_486(quota: Server) -> None:
    assert asyncio.run(_quota(quota)) == 486
    other = check(quota.url, username="alice", password="wonderland", until="allocate")
    assert other.ok, other  # the quota is per user


# -- peer policy ---------------------------------------------------------------------------


def probe(server: Server, peer: str) -> int | None:
    family = 6 if ":" in peer else 4
    report = check(server.url, username="alice", password="wonderland", peer=peer,
                   family=family, until="permission")  # fmt: skip
    assert report.steps[1].name == "allocate" and report.steps[1].ok, report
    step = report.failed_step
    return None if step is None else step.error_code


DENIED = ["127.0.0.1", "10.1.2.3", "0.0.0.0", "::1", "::ffff:127.0.0.1"]


def _denied_cases() -> list[Any]:
    """(flavor, peer) pairs that apply. 127.0.0.1 and ::1 are the builtin relay's own relay IPs
    here: permitted, but only toward its relay port range, which
    test_own_relay_ip_is_reachable_only_in_the_relay_range covers; so they are not generated
    for the builtin (rather than skipped). IPv6 peers need an IPv6 loopback."""
    peers = [p for p in DENIED if IPV6 or ":" not in p]
    builtin = [
        (f, p) for f in ("builtin", "builtin-workers2") for p in peers if p not in (HOST, "::1")
    ]
    coturn = [pytest.param("coturn", p, marks=pytest.mark.coturn) for p in peers]
    return [*builtin, *coturn]


@pytest.mark.parametrize(("flavor", "peer"), _denied_cases(), indirect=["flavor"], scope="module")
def test_denied_peers_are_403(default_policy: Server, peer: str) -> None:
    assert probe(default_policy, peer) == 403


def bind_error(server: Server, peer: tuple[str, int]) -> int | None:
    """The ERROR-CODE a ChannelBind toward `peer` gets (None: bound)."""

    async def run() -> int | None:
        transport, _ = await turn.create_turn_endpoint(
            asyncio.DatagramProtocol, server.addr, "alice", "wonderland"
        )
        inner: Any = transport._TurnTransport__inner_protocol  # type: ignore[attr-defined]
        try:
            await inner.channel_bind(0x4000, peer)
        except stun.TransactionFailed as err:
            return int(err.response.attributes["ERROR-CODE"][0])
        finally:
            transport.close()
            await asyncio.sleep(0.1)
        return None

    return asyncio.run(run())


def test_servers_own_address_is_403_even_without_a_deny_list(
    engine: str, workers: int, tmp_path: Path
) -> None:
    cfg = make_config(engine, peers="{deny: []}")
    server = Server(engine, cfg)
    with running(engine, cfg, tmp_path, workers):
        if engine == "coturn":
            assert probe(server, HOST) == 403
        else:  # its own relay IP: permitted, yet the TURN port itself stays unreachable
            assert probe(server, HOST) is None
            assert bind_error(server, (HOST, server.port)) == 403


# Builtin only: coturn denies its own addresses outright (natkit renders them denied), which
# test_servers_own_address_is_403_even_without_a_deny_list covers.
@pytest.mark.parametrize("flavor", ["builtin", "builtin-workers2"], indirect=True)
def test_own_relay_ip_is_reachable_only_in_the_relay_range(default_policy: Server) -> None:
    low, high = relay_range()
    assert bind_error(default_policy, (HOST, default_policy.port)) == 403  # the TURN listener
    assert bind_error(default_policy, (HOST, low - 1)) == 403
    assert bind_error(default_policy, (HOST, high)) is None


def test_turn_check_with_the_default_policy(default_policy: Server) -> None:
    """The check's peer is a second allocation: the builtin relay allows relay-to-relay under
    the default deny list; coturn refuses its own (loopback) address, and the check says why."""
    report = check(default_policy.url, username="alice", password="wonderland")
    if default_policy.engine == "builtin":
        assert report.ok, report
        assert report.method == "two-allocations"
        return
    failed = report.failed_step
    assert failed is not None and failed.name == "permission" and failed.error_code == 403
    assert report.method == "peer-socket" and "403" in (report.method_note or "")
    assert "turn.peers.allow" in (report.error or ""), report.error


def test_allow_opens_only_its_hole(lab: Server) -> None:
    assert probe(lab, "10.1.2.3") is None  # allowed: permission granted, nothing sent
    assert probe(lab, "127.0.0.1") is None
    assert probe(lab, "127.0.0.2") == 403
    assert probe(lab, "10.1.2.4") == 403


@pytest.mark.parametrize("query", ["", "?transport=tcp"])
def test_turn_check_round_trip(lab: Server, query: str) -> None:
    report = check(lab.url + query, username="alice", password="wonderland")
    assert report.ok, report
    assert report.method == "two-allocations", report
    assert report.peer_address is not None and report.peer_address != report.relayed_address
