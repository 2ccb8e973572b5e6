"""Rules between keys of different sections, checked at load like every other rule.

These are the refusals `natkit serve`, `natkit turn render` and the engines used to make at start,
without a line number: each lives here now, so ``natkit config check`` ok means serve accepts the
file (what is left at run time depends on the host, not the file: a port in use, a missing
turnserver binary, a coturn version with a bypass that cannot be closed, no global address for a
wildcard relay). A rule raises `Problem` with the dotted key path to blame.
"""

from __future__ import annotations

from natkit.addr import Address, Transport
from natkit.config.checks import Problem, proxy_section
from natkit.config.model import Config, PortRange, StunConfig

__all__ = ["check_config", "check_stun", "validate"]


def check_stun(stun: StunConfig) -> None:
    """`stun` on its own: TLS files given, RFC 5780 alternate consistent with the listeners,
    PROXY protocol with trusted balancers and a stream listener."""
    tls = [i for i, uri in enumerate(stun.listen) if uri.transport is Transport.TLS]
    if tls and (stun.tls.cert is None or stun.tls.key is None):
        raise Problem("listen", "a tls:// listener needs stun.tls.cert and stun.tls.key", tls[0])
    if stun.alternate is not None and stun.alternate_address is not None:
        _check_alternate(stun, stun.alternate, stun.alternate_address)
    proxy_section(stun)


def _check_alternate(stun: StunConfig, alternate: str, address: Address) -> None:
    alt, port = address.ip, address.port
    if alt.is_unspecified:
        raise Problem("alternate", "the alternate address must be a specific IP, not a wildcard")
    for index, uri in enumerate(stun.listen):
        if uri.transport is not Transport.UDP or uri.address.ip.version != alt.version:
            continue
        if uri.address.ip.is_unspecified:
            raise Problem(
                "listen",
                f"{uri} listens on a wildcard address, but with stun.alternate set RFC 5780 needs "
                "a specific primary IP (e.g. udp://203.0.113.10:3478)",
                index,
            )
        if alt == uri.address.ip or port == uri.port:
            raise Problem(
                "alternate",
                f"{alternate} must differ from {uri} in both IP and port "
                "(RFC 5780 §4 tests change IP and port independently)",
            )


def check_config(config: Config) -> None:
    """Rules across sections: TURN needs credentials, its relay ports stay off the listeners'
    ports, and the coturn engine gets only what turnserver.conf can express."""
    _check_tls_files(config)
    _check_check(config)
    turn = config.turn
    auth = turn.auth
    if turn.engine == "coturn" and auth.secret and auth.users:
        # coturn: "Shared secret overrides username/password based auth method".
        raise Problem(
            "turn.auth",
            "the coturn engine cannot use both `secret` and `users` (a shared secret overrides "
            "the user list in coturn); choose one, or use turn.engine: builtin",
        )
    if config.cluster.redis is not None and not turn.enabled:
        raise Problem(
            "cluster.redis",
            "a fleet shares the builtin TURN engine's state: set turn.enabled: true, or remove "
            "cluster.redis",
        )
    if not turn.enabled:
        return
    # A fleet may take every credential from Redis (natkit cluster secret/user): until then
    # its nodes refuse everyone (401), never relay for anyone.
    if not auth.secret and not auth.users and config.cluster.redis is None:
        raise Problem("turn.auth", "set `secret` or `users`: natkit runs no open relay")
    if turn.engine == "builtin" and not config.stun.enabled:
        raise Problem(
            "stun.enabled",
            "the builtin TURN engine shares the STUN listeners: set stun.enabled: true "
            "(or turn.enabled: false)",
        )
    if turn.engine == "coturn":
        _check_coturn_listeners(config)
    _check_relay_ports(config)


def _check_check(config: Config) -> None:
    """The browser check page needs a UDP STUN listener to probe from beside, and its https://
    listener the STUN TLS certificate."""
    check = config.check
    if not check.enabled:
        return
    if check.listen.startswith("https://") and not (config.stun.tls.cert and config.stun.tls.key):
        raise Problem(
            "check.listen",
            "https:// needs stun.tls.cert and stun.tls.key (the check page uses the STUN TLS "
            "certificate); or use http:// on localhost",
        )
    if not any(uri.transport is Transport.UDP for uri in config.stun.listen):
        raise Problem("check.enabled", "the check page needs a udp:// listener in stun.listen")


def _check_tls_files(config: Config) -> None:
    """What `natkit serve` loads before it starts natkit's own TLS listeners (coturn reads the
    files itself): a certificate chain and its key that OpenSSL accepts."""
    stun = config.stun
    coturn = config.turn.enabled and config.turn.engine == "coturn"
    if coturn or not stun.enabled or not stun.tls.cert or not stun.tls.key:
        return
    if not any(uri.transport is Transport.TLS for uri in stun.listen):
        return
    import ssl  # here: every command loads a config, few need ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            stun.tls.cert, stun.tls.key
        )
    except (OSError, ssl.SSLError) as err:
        why = getattr(err, "reason", None) or err.strerror or str(err)
        raise Problem(
            "stun.tls.cert", f"cannot load {stun.tls.cert} with key {stun.tls.key}: {why}"
        ) from None


def _check_coturn_listeners(config: Config) -> None:
    listen = config.stun.listen
    plain = {u.port for u in listen if u.transport in (Transport.UDP, Transport.TCP)}
    tls = {u.port for u in listen if u.transport is Transport.TLS}
    if len(plain) > 1 or len(tls) > 1:
        # coturn has one listening-port for UDP+TCP and one tls-listening-port.
        raise Problem("stun.listen", "the coturn engine needs one port for udp/tcp and one for tls")


def _check_relay_ports(config: Config) -> None:
    """Relayed sockets bind ports of the range on the listeners' IPs: a listener port inside the
    range would collide with one (and a relay port must never answer as the STUN server)."""
    ports = config.turn.relay.port_range
    taken = [(str(uri), uri.port) for uri in config.stun.listen]
    if config.stun.alternate_address is not None:
        taken.append(
            (f"stun.alternate {config.stun.alternate}", config.stun.alternate_address.port)
        )
    workers = config.stun.workers
    size = ports.high - ports.low + 1
    if config.turn.engine == "builtin" and isinstance(workers, int) and size < workers:
        # Each worker relays from its own slice (`natkit.turn.engine.worker_ports`); "auto"
        # depends on the host's CPUs and is checked when `natkit serve` starts.
        raise Problem(
            "turn.relay.ports",
            f"{ports} has {size} port(s) for stun.workers: {workers}: each worker needs its "
            "own slice of the range; widen it or lower stun.workers",
        )
    for what, port in taken:
        if port in ports:
            raise Problem(
                "turn.relay.ports",
                f"{ports} includes port {port} of {what}: relayed addresses would collide with "
                f"the listener; choose a range without it{_suggest(ports, port)}",
            )


def _suggest(ports: PortRange, port: int) -> str:
    default = PortRange(49152, 65535)
    if port in default:
        return " (or move the listener below 49152)"
    return f", e.g. {default}" if ports != default else ""


def validate(config: Config) -> None:
    """The cross-section rules on a Config built in Python (the loader runs them on every file,
    with line numbers); ConfigError naming the key path. Engines call this before serving."""
    from natkit.errors import ConfigError

    prefix = "stun."
    try:
        check_stun(config.stun)
        prefix = ""
        check_config(config)
    except Problem as problem:
        path = prefix + problem.key + ("" if problem.index is None else f"[{problem.index}]")
        raise ConfigError(problem.message, file=config.source, path=path) from None
