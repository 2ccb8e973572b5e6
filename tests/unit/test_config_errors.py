"""Every config error is one line, ``FILE:LINE: key.path: problem``, and never shows a secret."""

# ruff: noqa: E501  (exact one-line messages read best unbroken)
from __future__ import annotations

import pytest

from natkit.config import ConfigError, loads

CASES: list[tuple[str, str]] = [
    # YAML itself
    (
        "stun:\n  listen: [udp://0.0.0.0:3478\n",
        "natkit.yaml:3: YAML syntax error: expected ',' or ']', but got '<stream end>'",
    ),
    (
        "x: \t1\n",
        "natkit.yaml:1: YAML syntax error: found character '\\t' that cannot start any token",
    ),
    (
        "stun:\n  software: *nope\n",
        "natkit.yaml:2: YAML syntax error: found undefined alias 'nope'",
    ),
    ("", "natkit.yaml: file is empty (a config needs at least 'version: 1')"),
    (
        "[1, 2]\n",
        "natkit.yaml:1: the top level must be a mapping (version: 1, stun: ...), got a list",
    ),
    (
        "hello\n",
        "natkit.yaml:1: the top level must be a mapping (version: 1, stun: ...), got a single value",
    ),
    ("1: 2\n", "natkit.yaml:1: keys must be names, got 1"),
    ("stun: {}\nstun: {}\n", "natkit.yaml:2: stun: duplicate key (first given on line 1)"),
    (
        "stun:\n  software: !foo bar\n",
        "natkit.yaml:2: stun.software: could not determine a constructor for the tag '!foo'",
    ),
    # version
    ("version: 2\n", "natkit.yaml:1: version: must be 1, got 2"),
    ("version: '1'\n", 'natkit.yaml:1: version: must be 1, got "1"'),
    ("version: true\n", "natkit.yaml:1: version: must be 1, got true"),
    # unknown keys
    (
        "stun:\n  rate_limt: {}\n",
        'natkit.yaml:2: stun.rate_limt: unknown key; did you mean "rate_limit"?',
    ),
    ("stn: {}\n", 'natkit.yaml:1: stn: unknown key; did you mean "stun"?'),
    (
        "stun:\n  xyzzy: 1\n",
        "natkit.yaml:2: stun.xyzzy: unknown key; known keys: enabled, listen, "
        "alternate, workers, software, rate_limit, tls, stream, proxy_protocol, proxy_trusted, "
        "fast_path",
    ),
    (
        "source: x\n",
        "natkit.yaml:1: source: unknown key; known keys: version, stun, turn, diagnose, "
        "signal, check, metrics, logging, cluster",
    ),
    # types
    (
        "stun:\n  rate_limit:\n    burst: lots\n",
        'natkit.yaml:3: stun.rate_limit.burst: expected an integer, got "lots"',
    ),
    (
        "stun:\n  rate_limit:\n    burst: true\n",
        "natkit.yaml:3: stun.rate_limit.burst: expected an integer, got true",
    ),
    (
        "stun:\n  rate_limit:\n    burst: 1.5\n",
        "natkit.yaml:3: stun.rate_limit.burst: expected an integer, got 1.5",
    ),
    (
        "stun:\n  stream:\n    idle_timeout: fast\n",
        'natkit.yaml:3: stun.stream.idle_timeout: expected a number, got "fast"',
    ),
    ("stun:\n  enabled: 1\n", "natkit.yaml:2: stun.enabled: expected true or false, got 1"),
    (
        "stun:\n  workers: many\n",
        'natkit.yaml:2: stun.workers: expected an integer or "auto", got "many"',
    ),
    ("stun: 5\n", "natkit.yaml:1: stun: expected a mapping, got 5"),
    (
        "stun:\n  listen: udp://0.0.0.0:3478\n",
        'natkit.yaml:2: stun.listen: expected a list, got "udp://0.0.0.0:3478" (write [] for none)',
    ),
    (
        "turn:\n  peers:\n    deny:\n",
        "natkit.yaml:3: turn.peers.deny: expected a list, got null (write [] for none)",
    ),
    (
        "turn:\n  realm: 123\n",
        "natkit.yaml:2: turn.realm: expected a string, got 123 (put it in quotes)",
    ),
    (
        "stun:\n  software: 2024-01-01\n",
        "natkit.yaml:2: stun.software: expected a string, got a date",
    ),
    (
        "turn:\n  engine: coturnn\n",
        'natkit.yaml:2: turn.engine: expected "builtin" or "coturn", got "coturnn" (did you mean "coturn"?)',
    ),
    (
        "logging:\n  level: verbose\n",
        'natkit.yaml:2: logging.level: expected one of "debug", "info", '
        '"warning", "error", got "verbose"',
    ),
    (
        "turn:\n  auth:\n    users: [alice]\n",
        "natkit.yaml:3: turn.auth.users: expected a mapping, got a list (write {} for none)",
    ),
    # ranges
    (
        "stun:\n  rate_limit:\n    per_source: 0\n",
        "natkit.yaml:3: stun.rate_limit.per_source: must be greater than 0, got 0",
    ),
    (
        "stun:\n  rate_limit:\n    max_sources: -3\n",
        "natkit.yaml:3: stun.rate_limit.max_sources: must be greater than 0, got -3",
    ),
    ("stun:\n  workers: 0\n", 'natkit.yaml:2: stun.workers: must be at least 1 or "auto", got 0'),
    (
        "stun:\n  stream:\n    idle_timeout: 0\n",
        "natkit.yaml:3: stun.stream.idle_timeout: must be greater than 0, got 0",
    ),
    (
        "diagnose:\n  timeout: -1\n",
        "natkit.yaml:2: diagnose.timeout: must be from 0.2 to 60 seconds, got -1",
    ),
    (
        "turn:\n  quota:\n    per_user: 0\n",
        "natkit.yaml:3: turn.quota.per_user: must be at least 1, got 0",
    ),
    (
        "turn:\n  lifetime:\n    default: 7200\n",
        "natkit.yaml:3: turn.lifetime.default: must not exceed max (3600), got 7200",
    ),
    (
        "stun:\n  software: " + "x" * 130 + "\n",
        "natkit.yaml:2: stun.software: SOFTWARE must be shorter than 128 characters (RFC 8489), got 130",
    ),
    ("turn:\n  realm: ''\n", "natkit.yaml:2: turn.realm: REALM must not be empty"),
    # listen URIs
    (
        "stun:\n  listen: [udp://0.0.0.0:3478, sctp://0.0.0.0:1]\n",
        "natkit.yaml:2: stun.listen[1]: unknown transport 'sctp' in 'sctp://0.0.0.0:1' "
        "(expected udp, tcp or tls)",
    ),
    (
        "stun:\n  listen:\n    - udp://example.org:3478\n",
        "natkit.yaml:3: stun.listen[0]: 'example.org' in 'udp://example.org:3478' is not an IP address literal",
    ),
    (
        "stun:\n  listen:\n    - udp://[::1:3478\n",
        "natkit.yaml:3: stun.listen[0]: unclosed '[' in '[::1:3478'",
    ),
    (
        "stun:\n  listen:\n    - udp://0.0.0.0:99999\n",
        "natkit.yaml:3: stun.listen[0]: port '99999' in '0.0.0.0:99999' is not a number from 0 to 65535",
    ),
    (
        "stun:\n  listen:\n    - udp://0.0.0.0:3478\n    - tls://0.0.0.0:5349\n",
        "natkit.yaml:4: stun.listen[1]: a tls:// listener needs stun.tls.cert and stun.tls.key",
    ),
    (
        "stun:\n  listen: ['udp://::1:3478']\n",
        "natkit.yaml:2: stun.listen[0]: write the IPv6 address in 'udp://::1:3478' in brackets, "
        "e.g. udp://[::1]:3478",
    ),
    # addresses
    (
        "stun:\n  alternate: 203.0.113.11\n",
        "natkit.yaml:2: stun.alternate: missing port in "
        "'203.0.113.11' (write HOST:PORT, IPv6 as [ADDR]:PORT)",
    ),
    (
        "stun:\n  alternate: stun.example.org:3479\n",
        "natkit.yaml:2: stun.alternate: 'stun.example.org' "
        "in 'stun.example.org:3479' is not an IP address literal",
    ),
    (
        "stun:\n  alternate: 203.0.113.11:0\n",
        "natkit.yaml:2: stun.alternate: port 0 in '203.0.113.11:0': the alternate address needs a real port",
    ),
    (
        "metrics:\n  listen: localhost:9641\n",
        "natkit.yaml:2: metrics.listen: 'localhost' in 'localhost:9641' is not an IP address literal",
    ),
    (
        "turn:\n  relay:\n    address: eth0\n",
        "natkit.yaml:3: turn.relay.address: 'eth0' is not an IP address literal",
    ),
    # relay ports, peers
    (
        "turn:\n  relay:\n    ports: 49152\n",
        "natkit.yaml:3: turn.relay.ports: expected a string, got 49152 (put it in quotes)",
    ),
    (
        "turn:\n  relay:\n    ports: 0-100\n",
        "natkit.yaml:3: turn.relay.ports: ports in '0-100' must be from 1 to 65535",
    ),
    (
        "turn:\n  relay:\n    ports: 1-70000\n",
        "natkit.yaml:3: turn.relay.ports: ports in '1-70000' must be from 1 to 65535",
    ),
    (
        "turn:\n  relay:\n    ports: 600-500\n",
        "natkit.yaml:3: turn.relay.ports: '600-500': LOW must not be greater than HIGH",
    ),
    (
        "turn:\n  relay:\n    ports: low-high\n",
        "natkit.yaml:3: turn.relay.ports: 'low-high' is not a port range LOW-HIGH, e.g. 49152-65535",
    ),
    (
        "turn:\n  peers:\n    deny:\n      - 10.0.0.0/8\n      - 10.0.0.0/33\n",
        "natkit.yaml:5: turn.peers.deny[1]: '10.0.0.0/33' is not a CIDR range, e.g. 10.0.0.0/8",
    ),
    (
        "turn:\n  peers:\n    allow: [bogus]\n",
        "natkit.yaml:3: turn.peers.allow[0]: 'bogus' is not a CIDR range, e.g. 10.0.0.0/8",
    ),
    (
        'turn:\n  coturn:\n    extra: ["a\\nb"]\n',
        "natkit.yaml:3: turn.coturn.extra[0]: one turnserver.conf line per item (no newlines)",
    ),
    # credentials
    (
        "turn:\n  auth:\n    users:\n      'a:b': pw\n",
        "natkit.yaml:4: turn.auth.users: user name 'a:b' must be non-empty and without ':'",
    ),
    (
        "turn:\n  auth:\n    users: {alice: pw, alice: pw2}\n",
        "natkit.yaml:3: turn.auth.users.alice: duplicate key (first given on line 3)",
    ),
    # diagnose
    (
        "diagnose:\n  stun: ['stun://x.org']\n",
        "natkit.yaml:2: diagnose.stun[0]: 'stun://x.org' is not a STUN server "
        "(expected stun:HOST[:PORT])",
    ),
    (
        "diagnose:\n  turn:\n    - username: a\n",
        'natkit.yaml:3: diagnose.turn[0]: missing required key "url"',
    ),
    (
        "diagnose:\n  turn:\n    - url: http://x\n",
        "natkit.yaml:3: diagnose.turn[0].url: 'http://x' is not "
        "a TURN URI (expected turn:HOST[:PORT] or turns:...)",
    ),
    (
        "diagnose:\n  turn:\n    - url: turn:x.org?transport=sctp\n",
        "natkit.yaml:3: diagnose.turn[0].url: 'turn:x.org?transport=sctp': "
        "unknown transport 'sctp' (expected udp or tcp)",
    ),
    (
        "diagnose:\n  turn:\n    - url: turn:x.org\n      credential: pw\n",
        "natkit.yaml:4: diagnose.turn[0].credential: a credential needs a username",
    ),
    (
        "diagnose:\n  turn:\n    - url: turn:x.org\n      username: a\n      credential: pw\n      secret: s\n",
        "natkit.yaml:6: diagnose.turn[0].secret: give either credential (a password) or secret, not both",
    ),
    # ${VAR}
    (
        "stun:\n  rate_limit:\n    burst: ${BURST}\n",
        "natkit.yaml:3: stun.rate_limit.burst: environment variable BURST is not set",
    ),
    (
        "turn:\n  auth:\n    secret: ${SECRET\n",
        "natkit.yaml:3: turn.auth.secret: unclosed '${' (write $$ for a literal $)",
    ),
    (
        "turn:\n  auth:\n    secret: ${9X}\n",
        "natkit.yaml:3: turn.auth.secret: bad variable name in '${...}' (write ${NAME}, or $$ for a literal $)",
    ),
]


@pytest.mark.parametrize(("text", "message"), CASES, ids=[m.split(": ")[1] for _, m in CASES])
def test_error_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, "natkit.yaml", env={})
    assert str(info.value) == message
    assert "\n" not in str(info.value)


SECRET = "hunter2-Secret"


@pytest.mark.parametrize(
    "text",
    [
        f"turn:\n  auth:\n    secret: [{SECRET}]\n",
        f"turn:\n  auth:\n    secret: ''\n  realm: {SECRET}\n  x: 1\n",
        f'turn:\n  auth:\n    secret: "{SECRET}\n',  # unclosed quote: a YAML syntax error
        f"turn:\n  auth:\n    users:\n      alice: [{SECRET}]\n",
        f"turn:\n  auth:\n    users:\n      alice: {{{SECRET}: 1}}\n",
        f"diagnose:\n  turn:\n    - url: turn:x.org\n      credential: {SECRET}\n",
        f"diagnose:\n  turn:\n    - {{url: 'turn:x', username: u, credential: {SECRET}, secret: {SECRET}}}\n",
        f"turn:\n  auth:\n    secret: ${{X:-{SECRET}\n",
        f"turn:\n  auth:\n    secret: '${{{SECRET} x}}'\n",
        "turn:\n  auth:\n    secret: ${FROM_ENV}\nstun: {workers: 0}\n",
    ],
)
def test_secrets_never_appear_in_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, "natkit.yaml", env={"FROM_ENV": SECRET})
    assert SECRET not in str(info.value)
    assert "hunter2" not in str(info.value)


def test_secret_of_wrong_type_is_described_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        loads("turn:\n  auth:\n    secret: 314159\n", "natkit.yaml")
    assert str(info.value) == (
        "natkit.yaml:3: turn.auth.secret: expected a string, got an integer (put it in quotes)"
    )


def test_error_carries_its_parts() -> None:
    with pytest.raises(ConfigError) as info:
        loads("stun:\n  workers: 0\n", "f.yaml")
    err = info.value
    assert (err.file, err.line, err.path) == ("f.yaml", 2, "stun.workers")
    assert err.exit_status == 2
