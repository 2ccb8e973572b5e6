"""Live WebRTC P2P test: two aiortc peers pair through the rendezvous and measure the path.

    result = await offer(P2POptions(signal="http://127.0.0.1:8765"), on_code=print)
    result = await answer(code, P2POptions(signal="http://127.0.0.1:8765"))

`natkit.p2p.report` renders a `P2PResult` as text or JSON; `natkit.p2p.matrix` runs the NAT matrix.
"""

from natkit.p2p.report import Candidate, P2PResult, render_text, to_json
from natkit.p2p.session import P2POptions, answer, offer

__all__ = ["Candidate", "P2POptions", "P2PResult", "answer", "offer", "render_text", "to_json"]
