"""A tiny sans-IO TURN client for the relay's unit tests, written with natkit's own codec.

It holds no tests itself; tests/unit/test_turn_relay*.py import it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from natkit.addr import Address, Transport
from natkit.config.model import DEFAULT_DENIED_PEERS
from natkit.stun.attributes import AttrValue, ErrorCode
from natkit.stun.constants import AttrType, MessageClass, Method
from natkit.stun.integrity import long_term_key
from natkit.stun.message import Message, parse_message
from natkit.turn.allocation import DEFAULT_LIMITS, Limits
from natkit.turn.auth import Authenticator
from natkit.turn.peers import PeerPolicy
from natkit.turn.relay import Command, Relay, RelaySettings, SendToClient

REALM = "natkit.test"
USERS = {"alice": "wonderland", "bob": "builder"}
SECRET = "sesame"
RELAY4, RELAY6 = "192.0.2.1", "2001:db8::1"
SERVER = Address("192.0.2.1", 3478)
CLIENT = Address("198.51.100.7", 40000)
PEER = Address("8.8.8.8", 5000)  # sans-IO: nothing is ever sent anywhere
PEER6 = Address("2606:4700::1", 5000)
T0 = 1_000_000.0


def make_relay(
    *,
    ports: tuple[int, int] = (50000, 50099),
    per_user: int = 10,
    total: int = 1000,
    nonce_lifetime: float = 600.0,
    allow: tuple[str, ...] = (),
    relay_ips: dict[int, str] | None = None,
    seed: int = 1,
    limits: Limits = DEFAULT_LIMITS,
    peers_per_request: int = 10,
) -> Relay:
    settings = RelaySettings(
        relay_ips=relay_ips if relay_ips is not None else {4: RELAY4, 6: RELAY6},
        ports=ports,
        lifetime_default=600,
        lifetime_max=3600,
        quota_per_user=per_user,
        quota_total=total,
        software="natkit-test",
        limits=limits,
        peers_per_request=peers_per_request,
    )
    auth = Authenticator(
        REALM, users=USERS, secret=SECRET, nonce_lifetime=nonce_lifetime, nonce_key=b"k" * 32
    )
    policy = PeerPolicy(DEFAULT_DENIED_PEERS, allow, [SERVER.host, RELAY4, RELAY6])
    return Relay(settings, auth, policy, random.Random(seed))


@dataclass
class Client:
    """One client 5-tuple talking to `relay`; `now` is advanced by the test."""

    relay: Relay
    address: Address = CLIENT
    local: Address = SERVER
    transport: Transport = Transport.UDP
    username: str = "alice"
    password: str = "wonderland"
    nonce: str | None = None
    now: float = T0
    fingerprint: bool = False
    last: list[Command] = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return long_term_key(self.username, REALM, self.password)

    def send_raw(self, data: bytes) -> list[Command]:
        self.last = self.relay.handle_client(
            data, self.address, self.local, self.transport, self.now
        )
        return self.last

    def build(
        self,
        method: int,
        attrs: list[tuple[int, AttrValue]] | None = None,
        *,
        sign: bool = True,
        tid: bytes | None = None,
    ) -> bytes:
        msg = Message(method, MessageClass.REQUEST, tid or os.urandom(12), list(attrs or []))
        if not sign:
            return msg.encode(fingerprint=self.fingerprint)
        msg.attributes += [
            (AttrType.USERNAME, self.username),
            (AttrType.REALM, REALM),
            (AttrType.NONCE, self.nonce or ""),
        ]
        return msg.encode(integrity_key=self.key, fingerprint=self.fingerprint)

    def response(self) -> Message:
        sends = [c for c in self.last if isinstance(c, SendToClient)]
        assert len(sends) == 1, self.last
        assert sends[0].to == (self.address, self.local, self.transport)
        return parse_message(sends[0].data)

    def request(
        self,
        method: int,
        attrs: list[tuple[int, AttrValue]] | None = None,
        *,
        tid: bytes | None = None,
    ) -> Message:
        """Send a signed request, fetching a nonce first (401) or again (438) as clients do."""
        for _ in range(3):
            if self.nonce is None:  # the challenge to a well-formed Allocate, as clients do
                probe = [(AttrType.REQUESTED_TRANSPORT, 17)]
                self.send_raw(self.build(Method.ALLOCATE, probe, sign=False))
                challenge = self.response()
                assert error_code(challenge) == 401
                self.nonce = str(challenge.get(AttrType.NONCE))
            self.send_raw(self.build(method, attrs, tid=tid))
            response = self.response()
            if error_code(response) != 438:
                return response
            self.nonce = str(response.get(AttrType.NONCE))
        raise AssertionError("no answer but 438")

    def allocate(self, *extra: tuple[int, AttrValue], lifetime: int | None = None) -> Message:
        attrs: list[tuple[int, AttrValue]] = [(AttrType.REQUESTED_TRANSPORT, 17), *extra]
        if lifetime is not None:
            attrs.append((AttrType.LIFETIME, lifetime))
        return self.request(Method.ALLOCATE, attrs)

    def relayed(self) -> Address:
        alloc = self.relay.allocations.by_five_tuple[(self.address, self.local, self.transport)]
        return alloc.relay


def error_code(msg: Message) -> int | None:
    value = msg.get(AttrType.ERROR_CODE)
    return value.code if isinstance(value, ErrorCode) else None
