"""pytest fixtures for NAT labs (registered through the ``pytest11`` entry point).

    def test_reaches_server(nat_lab):
        lab = nat_lab("symmetric")                     # removed after the test, pass or fail
        assert lab.exec("peer", ["true"]).returncode == 0

    @pytest.mark.parametrize("lab", ["full-cone", "symmetric"], indirect=True)
    def test_each_nat(lab):                            # one lab per parameter
        sock = lab.socket("peer")

SIGTERM and SIGHUP (a CI timeout or cancel) remove the labs exactly as Ctrl-C does
(`natkit.lab.signals`); the run then exits 128 + the signal (143 for SIGTERM).

The `lab` fixture builds the preset (or YAML path) given by its parameter, "port-restricted-cone"
without one. Without root (CAP_NET_ADMIN + CAP_SYS_ADMIN) both fixtures skip with the reason.
Importing this module stays cheap: the lab machinery loads when a fixture is first used.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from natkit.lab import Lab, Topology

__all__ = ["lab", "nat_lab", "pytest_sessionfinish"]

DEFAULT_PRESET = "port-restricted-cone"


def _require_privileges() -> None:
    from natkit.errors import DependencyError, PrivilegeError
    from natkit.lab.netlink import check_privileges

    try:
        check_privileges()
    except (PrivilegeError, DependencyError) as err:
        pytest.skip(f"natkit lab: {err}")


@pytest.fixture
def nat_lab() -> Iterator[Callable[..., Lab]]:
    """A factory: `nat_lab(topology, name=None) -> Lab`; every lab it built is torn down."""
    from natkit.lab import Lab

    _require_privileges()
    built: list[Lab] = []

    def make(topology: Topology | str | Path, name: str | None = None) -> Lab:
        lab = Lab.up(topology, name)
        built.append(lab)
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in reversed(built):
            try:
                lab.down()
            except Exception as err:  # keep removing the others
                errors.append(err)
        if errors:
            raise errors[0]


@pytest.fixture
def lab(request: pytest.FixtureRequest, nat_lab: Callable[..., Lab]) -> Lab:
    """One lab of the preset (or YAML path, or Topology) in `request.param`."""
    param: Any = getattr(request, "param", DEFAULT_PRESET)
    return nat_lab(param)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After a SIGTERM / SIGHUP turned into Ctrl-C's unwinding, exit as the signal says (CI tells
    a cancelled run from a failed one by it); the fixtures' teardown has run by now."""
    signals = sys.modules.get("natkit.lab.signals")  # not loaded: no lab, nothing to say
    signum = signals.received() if signals is not None else None
    if signum is not None:
        session.exitstatus = 128 + signum
