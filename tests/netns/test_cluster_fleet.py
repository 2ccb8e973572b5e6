"""Issue 17's fleet test (needs root): a real redis-server and three `natkit serve` nodes, each
in its own lab namespace, a client behind a lab NAT (`tests.netns.fleet`).

One lab, one story, in order: quota.per_user 5 admits exactly 5 allocations of one user spread
over the three nodes; a node killed with SIGKILL frees its share within the lease; a revoked user
gets 401 on every node within 2 s and its allocations end; Redis stopped: existing allocations
keep relaying, a fail-open node admits new ones on local quotas, a fail-closed one refuses them
(508, /readyz 503); Redis back: the counts converge to what the nodes hold.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from natkit.lab import Lab
from natkit.turn.credentials import mint
from tests.netns.fleet import LEASE, NODES, TOPOLOGY, Fleet, code, node_config, relays, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_fleet_quotas_lease_revocation_and_redis_outage(nat_lab: object, tmp_path: Path) -> None:
    topology = tmp_path / "fleet.yaml"
    topology.write_text(TOPOLOGY)
    lab: Lab = nat_lab(topology, name="h17fleet")  # type: ignore[operator]
    fleet = Fleet(lab, tmp_path)
    try:
        configs = {n: node_config(n) for n in NODES}
        configs["n2"]["cluster"]["fail_open"] = False
        fleet.start(configs)
        _quota_spread_over_nodes(fleet)
        _sigkill_frees_the_share_within_the_lease(fleet)
        _credentials_change_live(fleet)
        _revoked_everywhere_within_two_seconds(fleet)
        _redis_outage_and_return(fleet)
    finally:
        fleet.close()


def _quota_spread_over_nodes(fleet: Fleet) -> None:
    order = ["n1", "n2", "n3"] * 3  # 9 Allocates of alice, round robin
    codes = []
    for node in order[:7]:
        codes.append((node, code(fleet.client(node, "alice").allocate())))
    admitted = [n for n, c in codes if c == 0]
    assert len(admitted) == 5, codes
    assert set(admitted) == set(NODES), codes  # spread over all three
    assert [c for _, c in codes if c] == [486, 486], codes
    report = fleet.status()
    assert report["quota"]["users"] == {"alice": 5}
    assert {n["node"]: n["quota_held"] for n in report["nodes"]} == {"n1": 2, "n2": 2, "n3": 1}


def _sigkill_frees_the_share_within_the_lease(fleet: Fleet) -> None:
    fleet.kill("n3")  # it held one of alice's five
    killed = time.monotonic()
    assert code(fleet.client("n1", "alice").allocate()) == 486  # still held: the lease runs

    def admitted() -> bool:
        return code(fleet.client("n1", "alice").allocate()) == 0

    wait_for(admitted, LEASE + 2.0, step=0.25)
    freed_after = time.monotonic() - killed
    assert freed_after <= LEASE + 1.5, freed_after
    assert code(fleet.client("n2", "alice").allocate()) == 486  # five again, not more


def _credentials_change_live(fleet: Fleet) -> None:
    """A static user and a second REST secret set on Redis work on every node within a poll;
    taken away, they stop working."""
    assert code(fleet.client("n1", "dave", "dave-pw").allocate()) == 401
    done = fleet.cli("user", "set", "dave", env={"NATKIT_USER_PASSWORD": "dave-pw"})
    assert done.returncode == 0, done.stderr
    done = fleet.cli("secret", "add", env={"NATKIT_NEW_TURN_SECRET": "rotated-in"})
    assert done.returncode == 0, done.stderr
    cred = mint("rotated-in", "erin", 600, time.time())
    for node in ("n1", "n2"):
        wait_for(lambda n=node: code(fleet.client(n, "dave", "dave-pw").allocate()) == 0, 2.0)
        wait_for(lambda n=node: code(fleet.client(n, cred.username, cred.password).allocate())
                 == 0, 2.0)  # fmt: skip
    done = fleet.cli("secret", "remove", env={"NATKIT_OLD_TURN_SECRET": "rotated-in"})
    assert done.returncode == 0, done.stderr
    wait_for(lambda: code(fleet.client("n2", cred.username, cred.password).allocate()) == 401,
             2.0)  # fmt: skip


def _revoked_everywhere_within_two_seconds(fleet: Fleet) -> None:
    on_live_nodes = (NODES["n1"], NODES["n2"])  # n3 is dead
    holders = [
        c
        for c in fleet.clients
        if c.relayed is not None and c.user == "alice" and c.server[0] in on_live_nodes
    ]
    assert len(holders) == 5 and {c.server[0] for c in holders} == set(on_live_nodes)
    bob = fleet.client("n1", "bob")
    assert code(bob.allocate()) == 0
    assert relays(holders[0])  # before: its allocation relays
    done = fleet.cli("revoke", "alice")
    assert done.returncode == 0, done.stderr
    revoked = time.monotonic()
    for node in ("n1", "n2"):  # a fresh Allocate on every node: 401
        wait_for(lambda n=node: code(fleet.client(n, "alice").allocate()) == 401, 2.0)
    for client in holders:  # and the existing allocations: 401 on their Refresh
        assert code(client.refresh(600)) == 401
    assert time.monotonic() - revoked <= 2.0 + 0.5 * len(holders)
    assert not relays(holders[0], b"after the revocation")  # torn down: nothing relays
    wait_for(lambda: "alice" not in fleet.status()["quota"]["users"], 2.0, step=0.2)
    ended = ("n1", "n2")
    # At least the five held (an Allocate may get in on a node in the ≤ 0.5 s before it heard).
    wait_for(lambda: sum(fleet.metric(n, "natkit_cluster_revoked_ended_total") for n in ended) >= 5,
             1.0)  # fmt: skip
    assert code(bob.refresh(600)) == 0  # another user is not touched


def _redis_outage_and_return(fleet: Fleet) -> None:
    bob = next(c for c in fleet.clients if c.user == "bob" and c.relayed is not None)
    assert relays(bob)
    fleet.redis.stop()
    assert relays(bob, b"during the outage")  # ChannelData/Send never wait on Redis
    # Fail-open n1: new allocations on local quotas; fail-closed n2: 508 and not ready.
    wait_for(lambda: fleet.metric("n1", "natkit_cluster_redis_up") == 0, 3.0)
    started = time.monotonic()
    assert code(fleet.client("n1", "bob").allocate()) == 0
    assert time.monotonic() - started < 1.0  # the budget (0.2 s), not a hang
    assert code(fleet.client("n2", "bob").allocate()) == 508
    status, body = fleet.readyz("n1")
    assert status == 200 and "local quotas" in body, body
    wait_for(lambda: fleet.readyz("n2")[0] == 503, 1.0)  # at its next metrics flush
    assert "fail-closed" in fleet.readyz("n2")[1]
    wait_for(lambda: fleet.metric("n1", "natkit_cluster_local_admitted_total") == 1, 1.0)
    assert "unreachable" in fleet.output("n1")
    fleet.redis.start()  # empty: no persistence in this test
    wait_for(lambda: fleet.readyz("n2")[0] == 200, 3.0)

    # Counts converge: the nodes write back what they hold, the allocation they admitted
    # alone included (bob: 2 on n1).
    def converged() -> bool:
        report = fleet.status()
        nodes = report["nodes"]
        return (
            report["quota"]["users"].get("bob") == 2
            and all(n["quota_held"] == n["allocations"] for n in nodes)
            and report["quota"]["total"] == sum(n["allocations"] for n in nodes)
        )

    wait_for(converged, 3.0, step=0.2)
    assert relays(bob, b"after")
    assert code(fleet.client("n2", "bob").allocate()) == 0
    assert fleet.output("n1").count("unreachable") == 1  # logged once
