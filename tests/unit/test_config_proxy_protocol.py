"""`stun.proxy_protocol` and `stun.proxy_trusted`: parsed once at load, refused with
FILE:LINE: key: problem when they cannot work, and named as ignored by the coturn engine."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
from click.testing import CliRunner

from natkit.cli import cli
from natkit.config import ConfigError, loads
from natkit.config.cross import validate
from natkit.config.ignored import ignored_keys, ignored_message

TCP = "  listen: ['tcp://127.0.0.1:3478']\n"


def test_trusted_sources_are_parsed_once_at_load() -> None:
    config = loads(
        "version: 1\nstun:\n" + TCP + "  proxy_protocol: true\n"
        "  proxy_trusted: [10.0.0.5, 10.1.2.3/16, '2001:db8::/64']\n"
    )
    assert config.stun.proxy_protocol is True
    assert config.stun.proxy_trusted == ("10.0.0.5", "10.1.2.3/16", "2001:db8::/64")
    assert config.stun.proxy_networks == (
        ipaddress.ip_network("10.0.0.5/32"),
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("2001:db8::/64"),
    )
    defaults = loads("version: 1\n")
    assert defaults.stun.proxy_protocol is False and defaults.stun.proxy_networks == ()


CASES = [
    (
        "  proxy_protocol: true\n",
        "c.yaml:5: stun.proxy_protocol: no load balancer may send the PROXY header: list their "
        "addresses in stun.proxy_trusted (e.g. [10.0.0.5]), or set proxy_protocol: false",
    ),
    (
        "  proxy_protocol: true\n  proxy_trusted: []\n",
        "c.yaml:5: stun.proxy_protocol: no load balancer may send the PROXY header",
    ),
    (
        "  proxy_protocol: true\n  proxy_trusted:\n    - 10.0.0.5\n    - lb.example.org\n",
        "c.yaml:8: stun.proxy_trusted[1]: 'lb.example.org' is not an IP address or CIDR range, "
        "e.g. 10.0.0.5 or 10.0.0.0/24",
    ),
    (
        "  proxy_protocol: true\n  proxy_trusted: [0.0.0.0/0]\n",
        "c.yaml:6: stun.proxy_trusted[0]: '0.0.0.0/0' trusts every address: any client could "
        "announce any source; list the load balancers' addresses",
    ),
    ("  proxy_trusted: ['::/0']\n", "c.yaml:5: stun.proxy_trusted[0]: '::/0' trusts every"),
    ("  proxy_protocol: yes please\n", "c.yaml:5: stun.proxy_protocol: expected true or false"),
]


@pytest.mark.parametrize(("text", "message"), CASES)
def test_refused_at_load_with_its_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads("version: 1\nmetrics: {listen: null}\nstun:\n" + TCP + text, "c.yaml")
    assert str(info.value).startswith(message), str(info.value)


def test_no_stream_listener_is_an_error() -> None:
    # The header opens a TCP connection (proxy-protocol.txt §2.2); a UDP-only server would
    # silently keep charging every client to the balancer's address.
    text = (
        "version: 1\nstun:\n  listen: ['udp://127.0.0.1:3478']\n"
        "  proxy_protocol: true\n  proxy_trusted: [10.0.0.5]\n"
    )
    with pytest.raises(ConfigError) as info:
        loads(text, "c.yaml")
    assert str(info.value) == (
        "c.yaml:4: stun.proxy_protocol: PROXY headers arrive on tcp:// or tls:// listeners and "
        "stun.listen has none: add one, or set proxy_protocol: false"
    )
    tls_only = text.replace("udp://127.0.0.1:3478", "tcp://127.0.0.1:3478")
    assert loads(tls_only).stun.proxy_protocol


def test_a_config_built_in_python_is_checked_too() -> None:
    config = loads("version: 1\nstun:\n" + TCP)
    on = dataclasses.replace(config, stun=dataclasses.replace(config.stun, proxy_protocol=True))
    with pytest.raises(ConfigError, match=r"stun.proxy_protocol: no load balancer"):
        validate(on)


COTURN = "turn: {enabled: true, engine: coturn, auth: {secret: s}}\n"


def test_the_coturn_engine_ignores_it_and_says_why() -> None:
    text = (
        "version: 1\nmetrics: {listen: null}\n" + COTURN + "stun:\n" + TCP
        + "  rate_limit: {enabled: false}\n"
        "  proxy_protocol: true\n  proxy_trusted: [10.0.0.5]\n"
    )  # fmt: skip
    keys = ignored_keys(loads(text))
    assert [k.key for k in keys] == ["stun.proxy_protocol"]
    assert "tcp-proxy-port: it takes the header from any source" in ignored_message(keys)
    assert ignored_keys(loads(text.replace("proxy_protocol: true", "proxy_protocol: false"))) == []


def test_config_check_prints_the_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\nstun:\n" + TCP + "  proxy_protocol: true\n")
    result = CliRunner().invoke(cli, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert f"{path}:4: stun.proxy_protocol: no load balancer may send" in result.stderr
