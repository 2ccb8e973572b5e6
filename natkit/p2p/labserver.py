"""TURN + rendezvous for the NAT matrix, as one process in the lab's `server` node.

    python -m natkit.p2p.labserver CONFIG.yaml    prints "ready" once every listener is bound

`natkit serve` answers STUN (with the RFC 5780 alternate) next to it. The builtin TURN engine and
the rendezvous run here through their embedding APIs (`BuiltinTurn.listen`, `serve_signal`) on
the ports the matrix needs: TURN over TCP on 443 and the rendezvous on 80, because the
udp-blocked peer's firewall lets only TCP 80/443 out. Once `natkit serve` runs both itself
(signal.enabled, turn.engine builtin), the matrix can start only `natkit serve` instead.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from natkit.config import load
from natkit.signal.http import serve_signal

__all__ = ["main"]


async def _run(path: str) -> None:
    from natkit.turn.builtin import BuiltinTurn

    config = load(path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    turn = BuiltinTurn(config)
    rendezvous = serve_signal(config.signal)
    await turn.start()
    try:
        for uri in config.stun.listen:  # the TURN listeners (natkit serve holds the STUN ports)
            await turn.listen(uri)
        await rendezvous.start()
        print("ready", flush=True)
        await stop.wait()
    finally:
        await rendezvous.stop()
        await turn.close()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m natkit.p2p.labserver CONFIG.yaml")
    asyncio.run(_run(sys.argv[1]))


if __name__ == "__main__":
    main()
