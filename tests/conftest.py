"""Suite-wide rules: netns tests need root; under CI=true a lab (netns) or coturn test that skips
is a failure: CI must run both halves of the conformance suite, never drop one silently."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); run as root or in CI")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and (kind := _must_run(item, report)):
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true: {kind} test {item.nodeid} skipped instead of running: {report.longrepr}"
        )


def _must_run(item: pytest.Item, report: pytest.TestReport) -> str | None:
    """Why a skip of `item` is a failure under CI (None: it may skip). The reason text catches
    a coturn skip in a test nobody marked."""
    if "netns" in item.keywords:
        return "lab"
    reason = str(report.longrepr).lower()
    if item.get_closest_marker("coturn") or "coturn" in reason or "turnserver" in reason:
        return "coturn"
    return None


@pytest.fixture
def unprivileged() -> Iterator[tuple[list[str], Path]]:
    """(argv prefix that runs a command without privileges, a directory for its files).

    As root the prefix drops every capability (setpriv, uid kept: the interpreter may live in
    root's home), so "permission denied" paths are tested for real instead of skipped; for
    anyone else it is empty."""
    prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
    workdir = Path(tempfile.mkdtemp(prefix="natkit-unpriv-"))
    try:
        yield prefix, workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
