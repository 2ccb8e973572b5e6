"""natkit.net: the transport layer under every server protocol natkit speaks.

Listeners (`natkit.net.listeners`) own every client-facing socket and connection: UDP with
recvmmsg/sendmmsg batching, TCP and TLS with framing, slot admission and slow-loris deadlines,
IPv4 and IPv6, the RFC 5780 four-socket set. Each datagram or frame is rate limited, classified
by its first bytes (`natkit.net.demux`, RFC 7983 §7: the one place) and handed to the route
`natkit.serve` registered for its kind (`natkit.net.routes`): the Binding handler, the TURN
engine. Handlers answer with data (`Transmit`) and may keep the client's `Link` to send later.
This package imports nothing from the protocols above it (stun, turn) nor from serve. Import
`natkit.net.listeners` itself for `Listeners` (kept out of here: the protocol cores import
`natkit.net.routes` and must stay cheap to import).
"""

from natkit.net.demux import BINDING, CHANNEL_DATA, OTHER, STUN, classify
from natkit.net.routes import Dispatcher, Limit, Link, Route, Transmit

__all__ = [
    "BINDING",
    "CHANNEL_DATA",
    "OTHER",
    "STUN",
    "Dispatcher",
    "Limit",
    "Link",
    "Route",
    "Transmit",
    "classify",
]
