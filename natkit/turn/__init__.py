"""natkit.turn: the TURN relay's engine-independent pieces and the coturn engine.

- `natkit.turn.credentials`: TURN REST API ephemeral credentials (mint, verify).
- `natkit.turn.peers`: the peer policy both engines enforce, and its coturn rendering.
- `natkit.turn.uri`: turn:/turns: URIs (RFC 7065).
- `natkit.turn.coturn`: turnserver.conf rendering, version detection, supervision (`serve`).

Submodules are imported on use: `natkit turn credentials` should not pay for the rest.
"""
