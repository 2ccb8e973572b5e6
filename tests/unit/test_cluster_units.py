"""The sans-IO parts of a fleet: several REST secrets, revocations and live credentials in the
authenticator; the member's quota and its fail policy; the redirect target."""

from __future__ import annotations

from natkit.cluster.agent import Member
from natkit.cluster.quota import ClusterQuota
from natkit.serve.clustered import pick_alternate
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.integrity import long_term_key
from natkit.stun.message import Message, parse_message
from natkit.turn.auth import Authenticator, AuthError, Credentials
from natkit.turn.credentials import mint

REALM = "natkit.test"
NOW = 1_700_000_000.0


def _signed(a: Authenticator, username: str, password: str) -> Message:
    nonce = a.nonce("192.0.2.1", NOW)
    attrs = [(AttrType.USERNAME, username), (AttrType.REALM, REALM), (AttrType.NONCE, nonce)]
    msg = Message(Method.REFRESH, MessageClass.REQUEST, bytes(12), list(attrs))
    return parse_message(msg.encode(integrity_key=long_term_key(username, REALM, password)))


def _check(a: Authenticator, username: str, password: str) -> Credentials | AuthError:
    return a.check(_signed(a, username, password), "192.0.2.1", NOW)


def test_several_rest_secrets_each_verify_and_a_removed_one_no_more() -> None:
    a = Authenticator(REALM, secret="old", nonce_key=b"n" * 32)
    old, new = mint("old", "carol", 60, NOW), mint("new", "carol", 60, NOW)
    assert isinstance(_check(a, old.username, old.password), Credentials)
    assert _check(a, new.username, new.password) == AuthError(401, True)
    a.replace({}, ["old", "new"])  # rotation: both at once
    assert isinstance(_check(a, old.username, old.password), Credentials)
    creds = _check(a, new.username, new.password)
    assert isinstance(creds, Credentials) and creds.user == "carol"
    a.replace({}, ["new"])
    assert _check(a, old.username, old.password) == AuthError(401, True)


def test_static_users_change_live_and_revocation_is_a_401() -> None:
    a = Authenticator(REALM, users={"alice": "pw"}, nonce_key=b"n" * 32)
    assert _check(a, "dave", "pw2") == AuthError(401, True)
    a.replace({"alice": "pw", "dave": "pw2"}, [])
    assert isinstance(_check(a, "dave", "pw2"), Credentials)
    a.revoked = frozenset({"dave"})
    assert _check(a, "dave", "pw2") == AuthError(401, True)
    assert isinstance(_check(a, "alice", "pw"), Credentials)


def test_revoking_a_rest_user_or_one_credential() -> None:
    a = Authenticator(REALM, secret="s", nonce_key=b"n" * 32)
    one, two = mint("s", "erin", 60, NOW), mint("s", "erin", 120, NOW)
    a.revoked = frozenset({one.username})  # that credential only
    assert _check(a, one.username, one.password) == AuthError(401, True)
    assert isinstance(_check(a, two.username, two.password), Credentials)
    a.revoked = frozenset({"erin"})  # the user, every credential
    assert _check(a, two.username, two.password) == AuthError(401, True)


def test_quota_uses_the_fleets_verdict_then_the_fail_policy() -> None:
    released: list[tuple[str, int]] = []
    q = ClusterQuota(2, 10, fail_open=True, on_release=lambda u, n: released.append((u, n)))
    q.grant("a", 2)
    assert q.acquire("a") == 0 and q.snapshot() == {"a": 2}  # one held, one in flight
    assert q.settle("a") == 1  # the relay took one: the other goes back to Redis
    q.refuse("a", 486)
    assert q.acquire("a") == 486
    q.settle("a")
    assert q.acquire("a") == 0  # no verdict: local quota (2 per user here)
    assert q.acquire("a") == 486 and q.local_admitted == 1 and q.local_refused == 1
    q.release("a")
    q.release("a")
    q.release("a")  # more releases than held: ignored
    assert released == [("a", 1), ("a", 1)] and q.active == 0 and q.held == {}
    closed = ClusterQuota(2, 10, fail_open=False)
    assert closed.acquire("a") == 508


def _member(name: str, allocations: int, *, capacity: int = 0, draining: bool = False,
            tls: bool = False) -> Member:  # fmt: skip
    addresses = {"udp": f"203.0.113.{len(name)}:3478"}
    if tls:
        addresses["tls"] = "203.0.113.9:5349"
    return Member(name, name.partition("/")[0], allocations, capacity, draining, addresses,
                  "turn.example", 0)  # fmt: skip


def test_redirect_goes_to_the_least_loaded_healthy_other_node() -> None:
    peers = (
        _member("me/1", 0),  # our own node's other worker: never a target
        _member("b/0", 5),
        _member("b/1", 1),  # node b: 6 in all
        _member("c/0", 4, capacity=4),  # full
        _member("d/0", 0, draining=True),
        _member("e/0", 3, tls=True),
    )
    best = pick_alternate(peers, "me", "udp")
    assert best is not None and best.member == "e/0"
    assert pick_alternate(peers[:3], "me", "udp") == peers[2]  # b's least-loaded worker
    assert pick_alternate(peers, "me", "tcp") is None  # no node listens on TCP
    assert pick_alternate(peers[:1], "me", "udp") is None


def test_channeldata_route_is_the_engines_own() -> None:
    """Redis adds nothing to the data path: ChannelData goes to the engine's own handler, not
    through the fleet's wrapper (only Allocate requests do)."""
    from natkit.config import loads
    from natkit.serve.clustered import ClusteredTurn
    from natkit.serve.routing import create_engine

    text = (
        "version: 1\nstun: {listen: ['udp://127.0.0.1:3478']}\n"
        "turn: {enabled: true, auth: {users: {a: b}}}\n"
        "cluster: {redis: 'redis://127.0.0.1:1/0', node_id: n1}\n"
    )
    engine = create_engine(loads(text, "natkit.yaml", env={}))
    assert isinstance(engine, ClusteredTurn)
    stun, channel_data = engine.routes()
    assert channel_data.handle == engine.inner.channel_data
    assert (
        stun.handle == engine.handle and engine.routes()[0].limit == engine.inner.routes()[0].limit
    )


def test_cluster_config_rules() -> None:
    import pytest

    from natkit.config import loads
    from natkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"natkit.yaml:2: cluster.redis: a fleet shares"):
        loads("version: 1\ncluster: {redis: 'redis://127.0.0.1:6379'}\n", "natkit.yaml", env={})
    with pytest.raises(ConfigError, match=r"cluster.redis: must be a redis://") as info:
        loads("version: 1\ncluster: {redis: 'http://u:hunter2@x'}\n", "natkit.yaml", env={})
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match=r"cluster.lease: must be at least 1 second"):
        loads("version: 1\ncluster: {lease: 0.5}\n", "natkit.yaml", env={})
    # Credentials may all come from the fleet: no open relay, since nobody gets in until then.
    fleet = loads(
        "version: 1\nturn: {enabled: true}\ncluster: {redis: 'redis://127.0.0.1:6379'}\n",
        "natkit.yaml", env={},
    )  # fmt: skip
    assert fleet.turn.auth.secret is None and not fleet.turn.auth.users
