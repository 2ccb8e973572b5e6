"""Issue 17's redirection (needs root): a full or draining fleet node answers a new Allocate
with 300 Try Alternate naming the least-loaded healthy node (RFC 8489 §10), ALTERNATE-DOMAIN
over TLS; aioice, through `natkit.diag.redirect`, follows it and relays (`tests.netns.fleet`)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from natkit.addr import Address
from natkit.diag.redirect import create_turn_endpoint, following_redirects
from natkit.lab import Lab
from natkit.stun.constants import AttrType
from natkit.testing import self_signed_certificate
from tests.integration.turn_client import TurnClient
from tests.netns.fleet import (
    ECHO,
    NODES,
    REALM,
    TOPOLOGY,
    USERS,
    Fleet,
    code,
    node_config,
    wait_for,
)  # fmt: skip

pytestmark = [pytest.mark.netns, pytest.mark.slow]


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait(data)


def _aioice_relay(server: str) -> tuple[list[tuple[str, int]], bytes]:
    """In node `peer`: aioice allocates at `server` (following redirects) and relays a datagram
    to the echo peer and back. (redirects followed, what came back)."""
    redirects: list[tuple[str, int]] = []

    async def main() -> bytes:
        transport, protocol = await create_turn_endpoint(
            _Collect, (server, 3478), "bob", USERS["bob"],
            on_redirect=lambda address, _domain: redirects.append(address),
        )  # fmt: skip
        try:
            assert ECHO.host.startswith("203.0.113.")  # the lab's echo peer, nothing else
            transport.sendto(b"via the alternate", (ECHO.host, ECHO.port))
            return await asyncio.wait_for(protocol.got.get(), 5)
        finally:
            transport.close()

    return redirects, asyncio.run(main())


def _ice_relay_candidate(server: str) -> list[str]:
    """In node `peer`: aioice's ICE agent (what aiortc runs) gathers with `server` as its TURN
    server, redirects followed; the relayed candidates' addresses."""
    from aioice import Connection

    async def main() -> list[str]:
        conn = Connection(ice_controlling=True, components=1, use_ipv6=False,
                          turn_server=(server, 3478), turn_username="bob",
                          turn_password=USERS["bob"])  # fmt: skip
        try:
            with following_redirects():
                await asyncio.wait_for(conn.gather_candidates(), 10)
            return [c.host for c in conn.local_candidates if c.type == "relay"]
        finally:
            await conn.close()

    return asyncio.run(main())


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the lab's self-signed certificates
    return ctx


def test_full_and_draining_nodes_redirect_to_the_least_loaded(
    nat_lab: object, tmp_path: Path
) -> None:
    topology = tmp_path / "fleet.yaml"
    topology.write_text(TOPOLOGY)
    lab: Lab = nat_lab(topology, name="h17redir")  # type: ignore[operator]
    cert, key = self_signed_certificate(tmp_path)
    fleet = Fleet(lab, tmp_path)
    try:
        configs = {n: node_config(n) for n in NODES}
        configs["n1"]["cluster"]["capacity"] = 1
        for node, domain in (("n1", "n1.fleet.test"), ("n3", "n3.fleet.test")):
            configs[node]["stun"]["listen"].append(f"tls://{NODES[node]}:5349")
            configs[node]["stun"]["tls"] = {"cert": str(cert), "key": str(key)}
            configs[node]["cluster"]["domain"] = domain
        fleet.start(configs)
        assert code(fleet.client("n1", "alice").allocate()) == 0  # n1 is full now
        time.sleep(0.6)  # one heartbeat: the fleet knows
        # aioice asks full n1, is sent to n2 (n2 and n3 hold none: the first by name), relays.
        redirects, echoed = lab.call("peer", _aioice_relay, NODES["n1"])
        assert redirects == [(NODES["n2"], 3478)]
        assert echoed == b"via the alternate"
        # aioice's ICE agent too (aiortc's): its relayed candidate is on a node other than full
        # n1 (whichever of n2 and n3 held fewer allocations at that moment).
        relays = lab.call("peer", _ice_relay_candidate, NODES["n1"])
        assert len(relays) == 1 and relays[0] in (NODES["n2"], NODES["n3"]), relays
        # Over TLS: to the only other TLS node, with its domain (RFC 8489 §14.16).
        stream = lab.socket("peer", type=socket.SOCK_STREAM)
        tls = TurnClient(5349, "carol", USERS["carol"], REALM, tcp=True, tls=_tls_context(),
                         lab_socket=stream, server_host=NODES["n1"])  # fmt: skip
        fleet.clients.append(tls)
        answer = tls.allocate()
        assert code(answer) == 300
        assert answer.get(AttrType.ALTERNATE_SERVER) == Address(NODES["n3"], 5349)
        assert answer.get(AttrType.ALTERNATE_DOMAIN) == "n3.fleet.test"
        # n2 drains (SIGTERM; bob's allocation keeps it up for turn.drain_timeout): new
        # Allocates there go to n3, the one healthy node left (n1 is full).
        assert code(fleet.client("n2", "bob").allocate()) == 0
        os.killpg(fleet.procs["n2"].pid, signal.SIGTERM)
        wait_for(lambda: any(n["draining"] for n in fleet.status()["nodes"] if n["node"] == "n2"),
                 5.0, step=0.2)  # fmt: skip
        answer = fleet.client("n2", "carol").allocate()
        assert code(answer) == 300
        assert answer.get(AttrType.ALTERNATE_SERVER) == Address(NODES["n3"], 3478)
        assert answer.get(AttrType.ALTERNATE_DOMAIN) is None  # UDP: no domain
        nodes = {n["node"]: n for n in fleet.status()["nodes"]}
        assert nodes["n2"]["draining"] and not nodes["n2"]["healthy"]
        assert nodes["n1"]["full"] and not nodes["n3"]["full"]
        # Nobody healthy but a full node: the engine answers as alone (508 while draining).
        fleet.kill("n3")  # once its lease (3 s) ran out:
        wait_for(lambda: code(fleet.client("n2", "carol").allocate()) == 508, 4.5, step=0.3)
    finally:
        fleet.close()
