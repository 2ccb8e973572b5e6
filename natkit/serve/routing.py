"""Which handler serves what on natkit's listeners: the one place STUN and TURN meet.

Per listener plan, a `BindingHandler` (its RFC 5780 addresses are the plan's) takes Binding;
with the builtin TURN engine on, the engine takes every other STUN method and ChannelData on
the same ports, as coturn does, and hears when a TCP/TLS connection ends.
"""

from __future__ import annotations

from collections.abc import Callable

from natkit.config.model import Config, StunConfig
from natkit.net.routes import Dispatcher
from natkit.net.sockets import ListenerPlan
from natkit.stun.binding import BindingHandler
from natkit.turn.builtin import BuiltinTurn
from natkit.turn.engine import TurnEngine, build_relay
from natkit.turn.shared_quota import SharedQuota

__all__ = ["create_engine", "dispatcher_for"]


def dispatcher_for(
    config: StunConfig, turn: TurnEngine | None
) -> Callable[[ListenerPlan], Dispatcher]:
    """The `natkit.net.listeners.Listeners` dispatch function for `config` and `turn`."""
    stun_route, channel_route = turn.routes() if turn is not None else (None, None)
    on_close = turn.connection_lost if turn is not None else None

    def dispatch(plan: ListenerPlan) -> Dispatcher:
        handler = BindingHandler(
            primary=plan.primary, alternate=plan.alternate, software=config.software
        )
        return Dispatcher(handler.route(), stun_route, channel_route, on_close)

    return dispatch


def create_engine(
    config: Config,
    counters: list[int] | None = None,
    *,
    nonce_key: bytes | None = None,
    worker: int = 0,
    quota: SharedQuota | None = None,
    kernel_programs: tuple[int, ...] = (),
) -> TurnEngine | None:
    """The engine the STUN listeners feed, or None (TURN off, or coturn serving it);
    `counters` is the worker's metrics row, where the engine counts its refusals; `nonce_key`
    the key shared by every worker (None: a random one of its own)."""
    if not config.turn.enabled or config.turn.engine != "builtin":
        return None
    counting = None
    if config.cluster.redis is not None:  # one member of a fleet (natkit.serve.clustered)
        from natkit.cluster.quota import ClusterQuota

        limits = config.turn.quota
        counting = ClusterQuota(limits.per_user, limits.total, config.cluster.fail_open)
    relay = build_relay(config, nonce_key=nonce_key, worker=worker, quota=quota, counting=counting)
    kernel = None
    if kernel_programs:  # the kernel fast path runs: bound channels are relayed there too
        from natkit.fastpath.relay import KernelRelay

        kernel = KernelRelay(kernel_programs)
    engine = BuiltinTurn(config, relay=relay, counters=counters, kernel=kernel)
    if counting is None:
        return engine
    from natkit.serve.clustered import ClusteredTurn

    return ClusteredTurn(config, engine, worker)
