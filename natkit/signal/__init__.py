"""The P2P rendezvous: two peers that share a short pairing code swap SDP offer and answer.

    server = serve_signal(config.signal)      # natkit serve starts it when signal.enabled
    await server.start(); ...; await server.stop()

    client = SignalClient("http://127.0.0.1:8765")
    code = await client.create()

`SignalStore` holds the state (sans-IO, time injected); `SignalServer` is its HTTP/1.1 shell;
`SignalClient` is what `natkit p2p` talks through. The service never sees media and never logs SDP.
"""

from natkit.signal.client import PeerTimeout, SignalClient, SignalUnavailable
from natkit.signal.http import SignalServer, serve_signal
from natkit.signal.store import SignalError, SignalStore

__all__ = [
    "PeerTimeout",
    "SignalClient",
    "SignalError",
    "SignalServer",
    "SignalStore",
    "SignalUnavailable",
    "serve_signal",
]
