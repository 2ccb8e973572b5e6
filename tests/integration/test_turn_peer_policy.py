"""One peer policy, both engines, for real: the builtin through `natkit serve`, coturn 4.6.1 with
the turnserver.conf natkit renders (what `natkit serve` runs with engine: coturn).

- Every embedded-IPv4 form the issue found coturn relaying to (IPv4-compatible, NAT64, 6to4,
  Teredo server and client, SIIT) gets 403 for CreatePermission from both; public addresses in
  the same forms stay permitted on both (coturn reads an IPv6 range byte by byte, which makes
  the rendered Teredo-client box exact: a public Teredo address inside its ordered span passes).
- Wildcard listeners (0.0.0.0): the host's own non-loopback address is refused (403) although
  ``turn.peers.allow`` opens the range it is in; another address of that range is permitted.

Only permissions are asked (``until="permission"``): nothing is ever sent to these addresses
(``::ffff:0:127.0.0.1`` and the like are routed out of the host). Relay sockets are on loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from natkit.config import load
from natkit.hostaddr import interfaces
from natkit.turn import coturn
from tests.integration.conftest import free_port, has_ipv6_loopback, start_serve, stop_process
from tests.integration.coturn_harness import check, relay_range, running_coturn
from tests.unit.test_turn_peers_embedded import BYPASSES, PUBLIC_EMBEDDED

pytestmark = [pytest.mark.integration]

ENGINES = ["builtin", pytest.param("coturn", marks=pytest.mark.coturn)]
USER, PASSWORD = "alice", "wonderland"


def _config(listen: list[str], **turn: Any) -> dict[str, Any]:
    low, high = relay_range()
    return {
        "version": 1,
        "stun": {"listen": listen, "workers": 1},
        "turn": {
            "enabled": True,
            "auth": {"users": {USER: PASSWORD}},
            "relay": {"ports": f"{low}-{high}", **turn.pop("relay", {})},
            "quota": {"per_user": 100},  # coturn keeps each probe's allocation until it expires
            **turn,
        },
        "metrics": {"listen": None},
        "logging": {"level": "warning"},
    }


@contextlib.contextmanager
def serving(engine: str, config: dict[str, Any], tmp_path: Path, port: int) -> Iterator[None]:
    """Run `config` with `engine` until the block ends; always stopped."""
    path = tmp_path / f"{engine}.yaml"
    config["turn"]["engine"] = engine
    path.write_text(yaml.safe_dump(config))
    if engine == "builtin":
        proc, lines = start_serve(path, len(config["stun"]["listen"]))
        try:
            assert len(lines) == len(config["stun"]["listen"]), lines
            yield
        finally:
            stop_process(proc)
        return
    if shutil.which("turnserver") is None:
        pytest.skip("coturn's turnserver is not installed (apt-get install coturn)")
    text = coturn.render(load(str(path)), coturn.detect_version(), runtime_dir=str(tmp_path))
    if "[::1]" in str(config["stun"]["listen"]):
        text += "relay-ip=127.0.0.1\nrelay-ip=::1\n"  # coturn relays IPv6 allocations from ::1
    with running_coturn(text, "127.0.0.1", port, tmp_path):
        yield


def probe(url: str, peer: str, family: int) -> int | None:
    """The error code of a CreatePermission for `peer` (None: granted); sends nothing to it."""
    report = check(url, username=USER, password=PASSWORD, peer=peer, family=family,
                   until="permission")  # fmt: skip
    assert report.steps[1].name == "allocate" and report.steps[1].ok, report
    step = report.failed_step
    return None if step is None else step.error_code


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
@pytest.mark.parametrize("engine", ENGINES)
def test_embedded_ipv4_bypasses_are_refused(engine: str, tmp_path: Path) -> None:
    port = free_port()
    listen = [f"udp://127.0.0.1:{port}", f"udp://[::1]:{port}", f"tcp://127.0.0.1:{port}"]
    with serving(engine, _config(listen), tmp_path, port):
        url = f"turn:[::1]:{port}"
        codes = {ip: probe(url, ip, 6) for ip in (*BYPASSES, *PUBLIC_EMBEDDED)}
    assert {ip: codes[ip] for ip in BYPASSES} == dict.fromkeys(BYPASSES, 403)
    # Not a deny-all: the same forms of public hosts stay relayable, as in the builtin.
    assert {ip: codes[ip] for ip in PUBLIC_EMBEDDED} == dict.fromkeys(PUBLIC_EMBEDDED, None)


def _own_ipv4() -> ipaddress.IPv4Interface:
    for iface in sorted(interfaces(), key=lambda i: not i.default_route):
        for text in iface.addresses:
            addr = ipaddress.ip_interface(text)
            v4 = isinstance(addr, ipaddress.IPv4Interface) and not addr.ip.is_loopback
            if v4 and addr.network.num_addresses >= 4:
                return addr  # type: ignore[return-value]
    pytest.skip("this host has no non-loopback IPv4 address")


@pytest.mark.parametrize("engine", ENGINES)
def test_wildcard_listener_refuses_the_hosts_own_address(engine: str, tmp_path: Path) -> None:
    own = _own_ipv4()
    other = next(ip for ip in own.network.hosts() if ip != own.ip)
    port = free_port()
    # The allow range opens the whole network this host is in (private in CI containers, so the
    # default deny list alone would refuse it): only the own-address rule refuses the host.
    config = _config(
        [f"udp://0.0.0.0:{port}", f"tcp://0.0.0.0:{port}"],
        relay={"address": "127.0.0.1"},
        peers={"allow": [str(own.network)]},
    )
    with serving(engine, config, tmp_path, port):
        url = f"turn:127.0.0.1:{port}"
        assert probe(url, str(own.ip), 4) == 403
        assert probe(url, str(other), 4) is None  # the rest of the range: the allow works
