"""The TURN core's peer checks: the peer policy (`natkit.turn.peers`) plus relay to relay.

Relay to relay. Two clients of this server pair their relayed candidates (ICE relay↔relay), so a
peer may be *another allocation's relayed address* on this very server. The policy denies the
server's own addresses (and the relay IP may sit in a denied range), so this core grants a
permission to its own relay IPs (`relay_ips`, `external_ips`) — but a permission is per IP
(RFC 8656 §9), so the port is checked where the client names one: ChannelBind and Send must
target a port inside the relay range. Everything else on this host (ssh, the TURN listener
itself) stays unreachable. Inbound packets are not port-checked (that would cost every relayed
packet a lookup): a local service cannot be made to answer, since nothing reaches it. An
explicit ``turn.peers.allow`` hole for the IP wins, as everywhere in the policy (any port)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from natkit.addr import Address
from natkit.turn.peers import PeerPolicy, canonical

__all__ = ["PeerRules"]


class PeerRules:
    """Whether a client may name `peer` (CreatePermission, ChannelBind, Send)."""

    __slots__ = ("high", "hosts", "low", "policy")

    def __init__(
        self, policy: PeerPolicy, relay_ips: Iterable[str], ports: tuple[int, int]
    ) -> None:
        self.policy = policy
        self.low, self.high = ports
        self.hosts = _relay_hosts(relay_ips, policy)
        """This server's relay IPs (bound and advertised) as the codec and recvfrom spell them,
        less those an explicit ``turn.peers.allow`` hole already opens to every port."""

    def error(self, peer: Address, port: bool) -> int:
        """0 or 403. `port`: the request names a transport address (ChannelBind), not only an
        IP (a permission is per IP, RFC 8656 §9)."""
        hosts = self.hosts
        if peer.host in hosts:  # relay to relay: see the module docstring
            return 403 if port and not self.low <= peer.port <= self.high else 0
        if hosts and str(canonical(ipaddress.ip_address(peer.host))) in hosts:
            return 403  # our relay IP spelled IPv4-mapped: never a peer (no port check there)
        return 0 if self.policy.is_allowed(peer.host) else 403

    def port_allowed(self, peer: Address) -> bool:
        """A Send to our own relay IP must target a relay port (the permission is per IP)."""
        return peer.host not in self.hosts or self.low <= peer.port <= self.high


def _relay_hosts(relay_ips: Iterable[str], policy: PeerPolicy) -> frozenset[str]:
    hosts = set()
    for text in relay_ips:
        ip = canonical(ipaddress.ip_address(text))
        if not ip.is_unspecified and not policy.allows_explicitly(ip):
            hosts.add(str(ip))
    return frozenset(hosts)
