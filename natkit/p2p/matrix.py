"""The NAT matrix: which peer pairs connect directly, which need the relay, and was it predicted.

Theory of operation. `run_matrix` builds the `matrix` lab (one peer behind each NAT type) and
starts one `natkit serve` in node `server`: STUN with the RFC 5780 alternate (for diagnose), the
builtin TURN engine on the same listeners plus TCP 443, and the rendezvous on TCP 80 (the
udp-blocked peer's firewall lets only TCP 80/443 out). It runs `natkit diagnose` in every peer node
to learn its NAT type, then for each unordered pair of peers runs `natkit p2p offer` in one node
and `natkit p2p answer` in the other, twice: direct (STUN only, no TURN) and relay (TURN only,
--relay-only, over TCP 443 for a peer whose UDP is blocked). Pairs run in parallel in a thread
pool (`run_pairs`). Each peer's commands are forked from one Python in its node that imported
natkit once (`natkit.lab.forkserver`: 0.8 s of CPU saved per command); that server, like
`natkit serve`, is started through the lab, so `Lab.down()` stops whatever is left.

The prediction for a pair is the diagnose verdict's compatibility table (`natkit.diag.verdict`)
applied to both measured types; `held` says whether the direct outcome matched it. Topologies
with IPv6 LANs add an IPv6 STUN server and one rule (`natkit.p2p.ipv6`): two peers with
untranslated IPv6 connect directly whatever their IPv4 NATs do. A peer whose diagnose saw its NAT
refuse every new mapping (`port_allocation.exhausted`: a CGNAT's port block used up) is predicted
to connect directly with no one (over IPv4), and relays over TURN/TCP as a UDP-blocked peer does
(its NAT makes no new UDP mapping; TCP has ports of its own, as many as the block: enough for
one session at a time, so its pairs run one after another).
A peer whose gateway offers a port-mapping protocol (diagnose's `port_mapping`) runs its direct
test with `natkit p2p --map-port`, and counts as reachable like a full cone
(`verdict.with_port_mapping`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from natkit.errors import LabError
from natkit.lab import forkserver
from natkit.p2p import ipv6

__all__ = [
    "LAB_PEER_RANGES",
    "PairRecord",
    "pair_rounds",
    "predict_direct",
    "render_table",
    "run_matrix",
    "serve_config",
    "to_json",
]

SERVER, ALTERNATE = "203.0.113.10", "203.0.113.11"
# TURN shares the STUN listeners (UDP 3478); TCP 443 and the rendezvous on 80 are the ports the
# udp-blocked peer's firewall lets out.
STUN_PORT, TURN_TCP_PORT, SIGNAL_PORT = 3478, 443, 80
# The lab's ranges, all in the relay's default deny list (`DEFAULT_DENIED_PEERS`): documentation
# space for the "internet" (RFC 5737), RFC 1918 home LANs and the RFC 6598 CGNAT inside. In the
# lab they are the real peers, so the lab config opens them deliberately; a public server must not.
LAB_PEER_RANGES = ("203.0.113.0/24", "10.0.0.0/8", "100.64.0.0/10")
_TURN_USER = "natkit"
_PY = [sys.executable, "-m", "natkit"]
EXHAUSTED_RELAY_SLACK = 3  # times the timeout, for a relay with an exhausted peer (SYN waits)


@dataclass(frozen=True, slots=True)
class PairRecord:
    """One pair's outcome (`--json` emits these fields)."""

    a: str
    b: str
    a_type: str | None
    b_type: str | None
    direct: bool
    relay: bool
    predicted_direct: bool | None
    held: bool | None
    ice_s: float | None
    selected: str | None
    direct_error: str | None = None
    relay_error: str | None = None
    a_ipv6_direct: bool | None = None
    """diagnose's verdict.ipv6_direct for a (None: IPv6 not measured)."""
    b_ipv6_direct: bool | None = None
    exhausted: tuple[str, ...] = ()
    """The peers of the pair whose NAT made no new mapping (diagnose's port_allocation)."""
    a_mapped: bool = False
    """Peer a mapped its ICE port through its gateway (p2p --map-port)."""
    b_mapped: bool = False


def predict_direct(
    a: str | None, b: str | None, *, a_mapped: bool = False, b_mapped: bool = False
) -> bool | None:
    """Whether diagnose's verdict expects a direct path between NAT types `a` and `b`; a peer
    that maps its port through its gateway is reachable like a full cone."""
    from natkit.diag.verdict import COMPATIBLE

    if a is None or b is None or "unknown" in (a, b):
        return None
    if "udp-blocked" in (a, b):
        return False
    a, b = ("full-cone" if a_mapped else a), ("full-cone" if b_mapped else b)
    return b in COMPATIBLE.get(a, ()) and a in COMPATIBLE.get(b, ())  # type: ignore[call-overload]


def run_matrix(
    topology: str = "matrix",
    *,
    concurrency: int = 6,
    timeout: float = 10.0,
    progress: Callable[[PairRecord], None] | None = None,
) -> list[PairRecord]:
    """Build the lab, run every pair direct and relayed, tear everything down; one record a pair.

    Interrupted (Ctrl-C, or SIGTERM / SIGHUP: `natkit.lab.signals`), it stops every process of
    the lab at once, reports no pair that did not finish, and re-raises once the lab is gone.
    """
    from natkit.lab import Lab

    with Lab.up(topology) as lab, tempfile.TemporaryDirectory(prefix="natkit-matrix-") as tmp:
        peers = sorted(n for n in lab.nodes if lab.state.nodes[n]["kind"] == "host")
        runner = _PairRunner(lab, secrets.token_urlsafe(12), timeout, progress)
        with _serving(lab, Path(tmp), runner.password), ipv6.serving(lab, Path(tmp)):
            return runner.run_all(peers, concurrency)


def pair_rounds(peers: list[str]) -> list[tuple[str, str]]:
    """Every unordered pair of `peers` (each as in `itertools.combinations`), in round-robin
    order (the circle method): each run of len(peers) // 2 pairs shares no peer, and each peer's
    pairs are spread over the whole run instead of bunched at its start."""
    ring: list[str | None] = [*peers, None] if len(peers) % 2 else list(peers)
    rank = {p: i for i, p in enumerate(peers)}
    order: list[tuple[str, str]] = []
    for _ in range(len(ring) - 1):
        half = len(ring) // 2
        for a, b in zip(ring[:half], reversed(ring[half:]), strict=True):
            if a is not None and b is not None:
                order.append((a, b) if rank[a] < rank[b] else (b, a))
        ring.insert(1, ring.pop())  # the first stays, the rest turn one place
    return order


def run_pairs(
    pool: ThreadPoolExecutor,
    run: Callable[[tuple[str, str]], PairRecord],
    peers: list[str],
    concurrency: int,
    solo: set[str],
) -> list[PairRecord]:
    """`run` every pair of `peers` in `pool`, at most `concurrency` at once, in `pair_rounds`
    order, and never two at once with a peer of `solo` in common: an exhausted CGNAT block has
    TCP ports for one session (signalling and TURN/TCP) at a time, as its user would, not six.
    The records come back in `itertools.combinations` order; the first exception is raised."""
    pending = pair_rounds(peers)
    busy: set[str] = set()
    running: dict[Future[PairRecord], tuple[str, str]] = {}
    done: dict[tuple[str, str], PairRecord] = {}
    while pending or running:
        for pair in list(pending):
            if len(running) >= max(1, concurrency):
                break
            if busy.intersection(pair):
                continue
            pending.remove(pair)
            busy.update(solo.intersection(pair))
            running[pool.submit(run, pair)] = pair
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            pair = running.pop(future)
            busy.difference_update(pair)
            done[pair] = future.result()
    return [done[pair] for pair in itertools.combinations(peers, 2)]


def serve_config(password: str) -> dict[str, Any]:
    """The one `natkit serve` config of the matrix: STUN + builtin TURN + rendezvous."""
    return {
        "version": 1,
        "stun": {
            "listen": [
                f"udp://{SERVER}:{STUN_PORT}",
                f"tcp://{SERVER}:{STUN_PORT}",
                f"tcp://{SERVER}:{TURN_TCP_PORT}",
            ],
            "alternate": f"{ALTERNATE}:{STUN_PORT + 1}",
            "workers": 1,
        },
        "turn": {
            "enabled": True,
            "engine": "builtin",
            "auth": {"users": {_TURN_USER: password}},
            "relay": {"address": SERVER, "ports": "50000-50999"},
            "peers": {"allow": list(LAB_PEER_RANGES)},
        },
        "signal": {"enabled": True, "listen": f"{SERVER}:{SIGNAL_PORT}", "ttl": 120.0},
        "metrics": {"listen": None},
        "logging": {"level": "warning"},
    }


@contextlib.contextmanager
def _serving(lab: Any, tmp: Path, password: str) -> Iterator[None]:
    """Run `natkit serve` in node `server` until the block ends, then stop it (SIGTERM, bounded)."""
    (tmp / "serve.yaml").write_text(yaml.safe_dump(serve_config(password)))
    # Output to files, not pipes: nobody reads them while the matrix runs, and a full pipe would
    # block the server.
    out_path, err_path = tmp / "serve.out", tmp / "serve.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = lab.spawn(
            "server", [*_PY, "serve", "-c", str(tmp / "serve.yaml")], stdout=out, stderr=err
        )
    try:
        deadline = time.monotonic() + 30.0
        # `signal http://...` comes after every `listening` line: then all is bound.
        while not any(line.startswith("signal ") for line in out_path.read_text().splitlines()):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = err_path.read_text().strip().splitlines()[-1:] or ["no output"]
                raise LabError(f"matrix: natkit serve did not start in node server: {why[0]}")
            time.sleep(0.1)
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _diagnose(lab: Any, fork: forkserver.ForkServer, peer: str) -> ipv6.PeerView | None:
    stun = ["--stun", f"{SERVER}:{STUN_PORT}", *ipv6.diagnose_args(lab, peer)]
    proc = fork.spawn(
        ["diagnose", *stun, "--json", "--timeout", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, _ = proc.communicate(timeout=30)
        return ipv6.view(json.loads(out))
    except (ValueError, subprocess.TimeoutExpired):
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _Unfinished(Exception):
    """A pair whose processes were ended by an interruption, not by their outcome."""


# How a natkit child ends when the signal was meant for the whole run (`timeout`, CI and a
# terminal signal the process group): killed by it, or exiting 128 + signal after cleanup.
_INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_INTERRUPTED = {-s for s in _INTERRUPT_SIGNALS} | {128 + s for s in _INTERRUPT_SIGNALS}


class _PairRunner:
    def __init__(
        self,
        lab: Any,
        password: str,
        timeout: float,
        progress: Callable[[PairRecord], None] | None,
    ) -> None:
        self.lab, self.password = lab, password
        self.types: dict[str, str | None] = {}
        self.views: dict[str, ipv6.PeerView | None] = {}
        self.exhausted: set[str] = set()
        self.mapped: dict[str, bool] = {}
        self.forks: dict[str, forkserver.ForkServer] = {}
        self.timeout, self.progress = timeout, progress
        self.cancelled = threading.Event()

    def run_all(self, peers: list[str], concurrency: int) -> list[PairRecord]:
        """Diagnose every peer, then run every pair; on an interruption stop the lab's processes
        at once (workers wait on children for up to a minute), telling the workers first that
        what they see next is no outcome."""
        pool = ThreadPoolExecutor(max(1, concurrency))
        try:
            # Each peer's commands fork from one Python that imported them once (0.8 s of CPU
            # each, 400 times in matrix-extended); they queue while it imports.
            for peer in peers:  # one by one: the finally below closes those that started
                self.forks[peer] = forkserver.start(self.lab, peer)
            views = pool.map(lambda p: _diagnose(self.lab, self.forks[p], p), peers)
            self.views = dict(zip(peers, views, strict=True))
            self.types = {p: v.nat_type if v else None for p, v in self.views.items()}
            self.exhausted = {p for p, v in self.views.items() if v and v.exhausted}
            self.mapped = {p: bool(v and v.mapped) for p, v in self.views.items()}
            try:
                return run_pairs(pool, self.run, peers, concurrency, self.exhausted)
            except _Unfinished as err:
                # Its children died of SIGINT/SIGTERM/SIGHUP: sent to the whole process group,
                # the signal reaches this process too and raises here within a moment.
                time.sleep(1.0)
                raise LabError(f"matrix: pair {err} was ended by a signal from outside") from None
        except BaseException:
            self.cancelled.set()
            self.lab.stop()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for fork in self.forks.values():
                fork.close()

    def run(self, pair: tuple[str, str]) -> PairRecord:
        a, b = pair
        direct = self._p2p(a, b, relay=False)
        relay = self._p2p(a, b, relay=True)
        if self.cancelled.is_set() or direct.get("interrupted") or relay.get("interrupted"):
            raise _Unfinished(f"{a} <-> {b}")  # no "fail" row for a pair that never finished
        exhausted = tuple(p for p in (a, b) if p in self.exhausted)
        a_mapped, b_mapped = self.mapped.get(a, False), self.mapped.get(b, False)
        predicted = ipv6.predict(self.views[a], self.views[b])
        shown = direct if direct.get("connected") else relay
        record = PairRecord(
            a=a, b=b, a_type=self.types[a], b_type=self.types[b],
            direct=bool(direct.get("connected")), relay=bool(relay.get("connected")),
            predicted_direct=predicted,
            held=None if predicted is None else predicted == bool(direct.get("connected")),
            ice_s=shown.get("ice_s"), selected=_selected(shown),
            direct_error=direct.get("error"), relay_error=relay.get("error"),
            a_ipv6_direct=_v6(self.views[a]), b_ipv6_direct=_v6(self.views[b]),
            exhausted=exhausted,
            a_mapped=a_mapped, b_mapped=b_mapped,
        )  # fmt: skip
        if self.progress:
            self.progress(record)
        return record

    def _args(self, node: str, relay: bool, timeout: float) -> list[str]:
        common = [
            "--signal",
            f"http://{SERVER}:{SIGNAL_PORT}",
            "--timeout",
            str(timeout),
            "--wait",
            "30",
            "--bytes",
            "32768",
            "--json",
        ]
        if not relay and ipv6.ipv6_only(self.lab, node):
            return [*ipv6.only_args(SERVER, SIGNAL_PORT), *common[2:]]
        if not relay:
            mapping = ["--map-port"] if self.mapped.get(node) else []
            return [*common, "--stun", f"stun:{SERVER}:{STUN_PORT}", *mapping]
        blocked = (
            self.types[node] == "udp-blocked"
            or node.endswith("udp-blocked")
            or node in self.exhausted
        )
        url = (
            f"turn:{SERVER}:{TURN_TCP_PORT}?transport=tcp"
            if blocked
            else f"turn:{SERVER}:{STUN_PORT}?transport=udp"
        )
        return [
            *common,
            "--relay-only",
            "--turn",
            url,
            "--user",
            _TURN_USER,
            "--password",
            self.password,
        ]

    def _p2p(self, a: str, b: str, *, relay: bool) -> dict[str, Any]:
        """Offer in `a`, answer in `b`; the offerer's JSON report (or an error record)."""
        if relay and (ipv6.ipv6_only(self.lab, a) or ipv6.ipv6_only(self.lab, b)):
            return {"connected": False, "error": ipv6.NO_RELAY}
        # An exhausted block's few TCP ports sit in TIME_WAIT after each session (10 s in the lab,
        # `plan.BLOCK_TCP_TIME_WAIT`): a new SYN may wait for one, so its relay gets longer.
        timeout = self.timeout * (EXHAUSTED_RELAY_SLACK if relay and self.exhausted & {a, b} else 1)
        pipe = subprocess.PIPE
        offerer = self.forks[a].spawn(
            ["p2p", "offer", *self._args(a, relay, timeout)], stdout=pipe, stderr=pipe
        )
        answerer = None
        try:
            line = _read_line(offerer, offerer.stderr, 30.0)
            if offerer.poll() in _INTERRUPTED:
                return {"connected": False, "interrupted": True}
            if not line or not line.startswith("pairing code: "):
                return {"connected": False, "error": f"offerer: {line or 'no pairing code'}"}
            code = line.split()[2]
            answerer = self.forks[b].spawn(
                ["p2p", "answer", code, *self._args(b, relay, timeout)], stdout=pipe, stderr=pipe
            )
            limit = timeout + 45
            a_out, _ = answerer.communicate(timeout=limit)
            o_out, o_err = offerer.communicate(timeout=limit)
            if {offerer.returncode, answerer.returncode} & _INTERRUPTED:
                return {"connected": False, "interrupted": True}
            try:
                report: dict[str, Any] = json.loads(o_out)
            except ValueError:
                return {"connected": False, "error": (o_err.strip() or "no report")[-200:]}
            # Connected means both sides saw the data channel open.
            if report.get("connected") and answerer.returncode != 0:
                report["connected"] = False
                report["error"] = f"answerer: {_error(a_out)}"
            return report
        except subprocess.TimeoutExpired:
            return {"connected": False, "error": "natkit p2p did not finish"}
        finally:
            for proc in (offerer, answerer):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _v6(v: ipv6.PeerView | None) -> bool | None:
    return v.ipv6_direct if v else None


def _error(out: str) -> str:
    try:
        return str(json.loads(out).get("error"))
    except (ValueError, AttributeError):
        return out.strip()[-200:] or "failed"


def _selected(report: dict[str, Any]) -> str | None:
    sel = report.get("selected")
    if not sel:
        return None
    local, remote = sel["local"], sel["remote"]
    return (
        f"{sel['kind']}: {local['type']} {local['address']}:{local['port']} <-> "
        f"{remote['type']} {remote['address']}:{remote['port']}"
    )


def _read_line(proc: forkserver.Forked, stream: Any, timeout: float) -> str | None:
    """One line from `stream`, waiting at most `timeout` seconds (None if nothing came)."""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(min(0.5, max(0.0, deadline - time.monotonic()))):
                line: str = stream.readline()
                return line.strip() or None
            if proc.poll() is not None:
                return None
    return None


def to_json(records: list[PairRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]


def _v6_mark(ipv6_direct: bool | None) -> str:
    return ", IPv6 untranslated" if ipv6_direct else ""


def render_table(records: list[PairRecord]) -> str:
    def mark(ok: bool | None) -> str:
        return "-" if ok is None else ("ok" if ok else "FAIL")

    def peer(name: str, kind: str | None, v6: bool | None, mapped: bool, r: PairRecord) -> str:
        full = ", no new mappings" if name in r.exhausted else ""
        return f"{name} ({kind}{_v6_mark(v6)}{', mapped' * mapped}{full})"

    rows = [("a", "b", "direct", "relay", "predicted", "held", "ice_s", "selected")]
    for r in records:
        rows.append((
            peer(r.a, r.a_type, r.a_ipv6_direct, r.a_mapped, r),
            peer(r.b, r.b_type, r.b_ipv6_direct, r.b_mapped, r),
            mark(r.direct), mark(r.relay),
            mark(r.predicted_direct).replace("ok", "direct").replace("FAIL", "relay"),
            {None: "-", True: "yes", False: "NO"}[r.held],
            "-" if r.ice_s is None else f"{r.ice_s:.2f}", r.selected or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    held = sum(1 for r in records if r.held)
    judged = sum(1 for r in records if r.held is not None)
    lines.append(
        f"{len(records)} pairs: {sum(r.direct for r in records)} direct, "
        f"{sum(r.relay for r in records)} via relay; prediction held for {held}/{judged}"
    )
    return "\n".join(lines)
