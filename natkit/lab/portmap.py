"""Port-mapping protocols in lab NAT routers: miniupnpd (nftables back end) per NAT whose
topology says `port_mapping`, started while the lab is built and killed with its namespace.

Theory of operation. natkit's router ruleset (`natkit.lab.nft`) holds three empty regular chains
that its base chains jump to first; miniupnpd is told to write its rules there (a mapping is a
DNAT in upnp_prerouting plus an accept in upnp_forward), so a mapping overrides the NAT's own
mapping and filtering behaviour: it makes an inside port reachable even on a symmetric NAT.

The lab's internet is documentation space (203.0.113.0/24, RFC 5737), which miniupnpd 2.3 counts
as reserved: with a reserved WAN address it disables port forwarding ("Port forwarding is
impossible"), and it refuses a reserved `ext_ip`. Its one other way to learn the public address
is STUN (`ext_perform_stun`), which it trusts when four Binding requests (with and without
CHANGE-REQUEST) come back unfiltered with the port unchanged. So while the daemon starts, a
throwaway responder on 127.0.0.1 inside the router answers each request with the router's WAN
address and the request's own port — "your WAN address is public and nothing filters it", which
is true of the lab. miniupnpd asks again only when the WAN address changes, which in a lab it
never does; the responder is closed once the daemon is listening.

NAT-PMP and PCP are one switch in miniupnpd (`enable_natpmp`, port 5351); the router ruleset
drops the one that is off by its version byte. The daemon's config, pid file and log live in the
lab's file directory (`registry.files_dir`), removed with the lab.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from natkit.addr import Address
from natkit.errors import DependencyError, LabError
from natkit.lab import netlink
from natkit.lab.nft import TABLE, UPNP_CHAINS
from natkit.lab.plan import NodePlan, Plan
from natkit.lab.topology import Nat, Topology

__all__ = ["READY_TIMEOUT", "check_dependencies", "miniupnpd_config", "start_daemons"]

READY_TIMEOUT = 10.0
_STUN_PORT = 3478


def check_dependencies(topo: Topology) -> None:
    """DependencyError (one line) when a NAT needs miniupnpd and it is not installed."""
    users = [n.name for n in topo.nats if n.port_mapping.enabled]
    if users and shutil.which("miniupnpd") is None:
        raise DependencyError(
            f"topology {topo.name}: nats.{users[0]}.port_mapping needs miniupnpd with the "
            "nftables back end: apt-get install miniupnpd-nftables"
        )


def miniupnpd_config(nat: Nat, node: NodePlan, lan_if: str, stun_port: int) -> str:
    """The miniupnpd.conf of one router (pure)."""
    assert node.uplink is not None and node.lan is not None
    pm = nat.port_mapping
    yes = {True: "yes", False: "no"}
    return "\n".join(
        [
            f"ext_ifname={node.uplink}",
            f"listening_ip={lan_if}",
            "http_port=0",
            f"enable_upnp={yes[pm.upnp]}",
            f"enable_natpmp={yes[pm.natpmp or pm.pcp]}",
            "secure_mode=yes",  # a client maps ports to its own address only
            "system_uptime=no",
            "ipv6_disable=yes",
            "ext_perform_stun=yes",  # see the module docstring: the only way past "reserved"
            "ext_stun_host=127.0.0.1",
            f"ext_stun_port={stun_port}",
            f"upnp_table_name={TABLE}",
            f"upnp_nat_table_name={TABLE}",
            f"upnp_forward_chain={UPNP_CHAINS['forward']}",
            f"upnp_nat_chain={UPNP_CHAINS['nat']}",
            f"upnp_nat_postrouting_chain={UPNP_CHAINS['postrouting']}",
            f"allow 1024-65535 {node.lan} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "",
        ]
    )


def _ready_markers(nat: Nat) -> list[str]:
    pm = nat.port_mapping
    markers = ["Port forwarding is now enabled"]
    if pm.upnp:
        markers.append("HTTP listening on port")
    if pm.natpmp or pm.pcp:
        markers.append("Listening for NAT-PMP/PCP traffic")
    return markers


@contextlib.contextmanager
def _wan_stun(netns: str, wan_ip: str) -> Iterator[int]:
    """A STUN responder on 127.0.0.1 in `netns` answering "you are `wan_ip`, port unchanged"."""
    from natkit.stun import AttrType, Message, MessageClass, StunError, parse_message

    sock = netlink.in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(2048)
                request = parse_message(data)
            except (TimeoutError, StunError):
                continue
            except OSError:
                return
            answer = Message(request.method, MessageClass.SUCCESS, request.transaction_id)
            answer.add(AttrType.XOR_MAPPED_ADDRESS, Address(wan_ip, source[1]))
            with contextlib.suppress(OSError):
                sock.sendto(answer.encode(), source)

    try:
        sock.bind(("127.0.0.1", _STUN_PORT))
        sock.settimeout(0.05)
        thread = threading.Thread(target=serve, name=f"wan-stun:{netns}", daemon=True)
        thread.start()
        try:
            yield _STUN_PORT
        finally:
            stop.set()
            thread.join()
    finally:
        sock.close()


def _start_one(nat: Nat, node: NodePlan, lan_if: str, files: Path) -> None:
    conf, log = files / f"miniupnpd-{nat.name}.conf", files / f"miniupnpd-{nat.name}.log"
    with _wan_stun(node.netns, str(node.addresses[0])) as port:
        conf.write_text(miniupnpd_config(nat, node, lan_if, port))
        argv = ["miniupnpd", "-d", "-f", str(conf), "-P", str(files / f"miniupnpd-{nat.name}.pid")]
        with log.open("w") as out:
            # Its own session: a Ctrl-C meant for `natkit lab up` must not reach a persistent
            # lab's daemon. It dies with the namespace (registry.remove_lab).
            proc = netlink.popen_in_netns(
                node.netns,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        markers = _ready_markers(nat)
        while True:
            text = log.read_text(errors="replace")
            if all(m in text for m in markers):
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                lines = [ln for ln in text.splitlines() if "table_cb" not in ln]
                why = lines[-1] if lines else "no output"
                state = "exited" if proc.poll() is not None else "did not get ready"
                raise LabError(f"miniupnpd in nats.{nat.name} {state}: {why} (log {log})")
            time.sleep(0.02)


def start_daemons(topo: Topology, plan: Plan, files: Path) -> None:
    """Start miniupnpd in every NAT with `port_mapping`; return when all of them listen."""
    for nat in topo.nats:
        if nat.port_mapping.enabled:
            files.mkdir(parents=True, exist_ok=True)
            _start_one(nat, plan.nodes[nat.name], f"{plan.prefix}-lan", files)
