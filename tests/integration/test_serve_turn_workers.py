"""TURN with `stun.workers: 2`: quotas are exact server-wide, and each worker has its own ports.

natkit steers each client host (source IP) to one worker; a test cannot choose the worker, so
it opens client sockets from many loopback addresses and learns where each landed from its
relayed port (worker 0 relays from the low half of `turn.relay.ports`, worker 1 from the high
half), allocating as a mapping user and freeing it again (Refresh lifetime 0). The quota
user's allocations are then made from sockets known to land on each worker.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from natkit.stun.constants import Method
from natkit.stun.integrity import long_term_key
from tests.integration.conftest import Served, free_port
from tests.integration.coturn_harness import relay_range
from tests.integration.turn_client import TurnClient, code

pytestmark = [pytest.mark.integration]

REALM = "natkit.test"
USERS = {"alice": "wonderland", "mapper": "mapper-pw", "bob": "builder"}
LOW, HIGH = relay_range()
MIDDLE = LOW + (HIGH - LOW + 1) // 2  # worker 1's slice starts here (contiguous halves)


def _turn(per_user: int, total: int) -> dict[str, object]:
    return {
        "enabled": True,
        "realm": REALM,
        "auth": {"users": USERS},
        "quota": {"per_user": per_user, "total": total},
        "relay": {"ports": f"{LOW}-{HIGH}"},
    }


def _as(client: TurnClient, user: str) -> TurnClient:
    client.user, client.key, client.nonce = user, long_term_key(user, REALM, USERS[user]), ""
    return client


def _worker_of(client: TurnClient) -> int:
    """Which worker answers `client`'s 5-tuple: allocate as the mapping user, read the slice,
    free it."""
    _as(client, "mapper")
    answer = client.allocate()
    assert code(answer) == 0, answer
    assert client.relayed is not None
    port = client.relayed.port
    assert LOW <= port <= HIGH
    assert code(client.ask(Method.REFRESH, [(0x000D, 0)])) == 0  # LIFETIME 0: deallocate
    return 0 if port < MIDDLE else 1


@pytest.fixture
def clients(request: pytest.FixtureRequest) -> Iterator[Callable[[int, int], TurnClient]]:
    """`get(port, worker)`: a new client socket known to land on `worker`."""
    opened: list[TurnClient] = []
    spare: dict[int, list[TurnClient]] = {0: [], 1: []}

    def get(port: int, worker: int) -> TurnClient:
        for _ in range(64):
            if spare[worker]:
                return spare[worker].pop()
            source = f"127.0.0.{2 + len(opened)}"  # another host: another hash
            client = TurnClient(port, "mapper", USERS["mapper"], REALM, source=source)
            # A respawned worker answers what queued on its socket once it has started.
            client.sock.settimeout(20)
            opened.append(client)
            spare[_worker_of(client)].append(client)
        pytest.fail(f"64 client sockets and none on worker {worker}")

    yield get
    for client in opened:
        client.close()


def _start(natkit_serve: Callable[..., Served], per_user: int, total: int) -> Served:
    port = free_port()
    while LOW <= port <= HIGH:  # a listener inside the relay range is a config error
        port = free_port()
    return natkit_serve(stun={"workers": 2}, turn=_turn(per_user, total), port=port)


def test_per_user_quota_is_exact_across_workers(
    natkit_serve: Callable[..., Served], clients: Callable[[int, int], TurnClient]
) -> None:
    served = _start(natkit_serve, per_user=3, total=100)
    held = [_as(clients(served.port, w), "alice") for w in (0, 0, 1)]
    assert [code(c.allocate()) for c in held] == [0, 0, 0]
    assert {(c.relayed.port >= MIDDLE) for c in held if c.relayed} == {False, True}
    for worker in (0, 1):  # the 4th is refused wherever the kernel sends it
        assert code(_as(clients(served.port, worker), "alice").allocate()) == 486
    assert code(_as(clients(served.port, 1), "bob").allocate()) == 0  # others are unaffected
    assert code(held[2].refresh(0)) == 0  # one ends on worker 1: one more on worker 0
    assert code(_as(clients(served.port, 0), "alice").allocate()) == 0
    assert code(_as(clients(served.port, 1), "alice").allocate()) == 486


def test_total_quota_is_exact_across_workers(
    natkit_serve: Callable[..., Served], clients: Callable[[int, int], TurnClient]
) -> None:
    served = _start(natkit_serve, per_user=10, total=3)
    # The mapping allocations come and go before the counted ones: learn the sockets first.
    sockets = [clients(served.port, w) for w in (0, 1, 1, 0, 1)]
    users = ["alice", "bob", "alice"]
    assert [code(_as(c, u).allocate()) for c, u in zip(sockets, users, strict=False)] == [0] * 3
    assert code(_as(sockets[3], "bob").allocate()) == 508
    assert code(_as(sockets[4], "bob").allocate()) == 508


def _socket_owner(port: int, pids: list[int]) -> int:
    """The worker pid holding the UDP relay socket bound to `port` (from /proc)."""
    inodes = set()
    with open("/proc/net/udp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    pytest.fail(f"no worker holds relay port {port}")


def test_killed_worker_releases_its_quota(
    natkit_serve: Callable[..., Served], clients: Callable[[int, int], TurnClient]
) -> None:
    served = _start(natkit_serve, per_user=3, total=100)
    held = [_as(clients(served.port, 0), "alice") for _ in range(3)]
    assert [code(c.allocate()) for c in held] == [0, 0, 0]
    assert code(_as(clients(served.port, 1), "alice").allocate()) == 486
    before = served.workers()
    assert len(before) == 2
    assert held[0].relayed is not None
    victim = _socket_owner(held[0].relayed.port, before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = served.workers()
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {victim} was not respawned: {served.workers()}")
    # The respawned worker serves once it has bound its relay pool; answers tell us it does.
    fresh = [_as(clients(served.port, w), "alice") for w in (0, 1, 0)]
    assert [code(c.allocate()) for c in fresh] == [0, 0, 0]
    assert code(_as(clients(served.port, 1), "alice").allocate()) == 486
