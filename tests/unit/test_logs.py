"""natkit.logs.RateLimitFilter: a per-datagram error path cannot flood the log."""

from __future__ import annotations

import logging

import pytest

from natkit.logs import RateLimitFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> tuple[logging.Logger, list[logging.LogRecord], Clock]:
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("natkit.test.ratelimit")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.handlers[:] = []
    logger.filters[:] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    clock = Clock()
    logger.addFilter(RateLimitFilter(interval=60.0, burst=3, clock=clock))
    return logger, records, clock


def _fail(logger: logging.Logger, n: int, exc: type[Exception] = ValueError) -> None:
    try:
        raise exc("boom")
    except Exception:
        logger.exception("TURN engine failed on a %d-byte datagram", n)


def test_repeated_errors_are_suppressed_and_counted(
    logged: tuple[logging.Logger, list[logging.LogRecord], Clock],
) -> None:
    logger, records, clock = logged
    for i in range(2000):
        _fail(logger, i)
    assert len(records) == 3  # the burst, then nothing for the rest of the interval
    assert all(r.exc_info for r in records)
    clock.now = 60.0
    _fail(logger, 1)
    assert len(records) == 4
    assert records[-1].getMessage() == (
        "TURN engine failed on a 1-byte datagram (1997 similar suppressed)"
    )


def test_other_errors_and_info_lines_are_not_held_back(
    logged: tuple[logging.Logger, list[logging.LogRecord], Clock],
) -> None:
    logger, records, _ = logged
    for i in range(10):
        _fail(logger, i)
        logger.info("listening %d", i)
    _fail(logger, 1, KeyError)  # same line, another exception type: another error
    assert sum(1 for r in records if r.levelno == logging.INFO) == 10
    assert sum(1 for r in records if r.levelno == logging.ERROR) == 3 + 1


def test_servers_log_through_the_filter() -> None:
    import natkit.net.stream
    import natkit.net.udp
    import natkit.turn.builtin

    for module in (natkit.net.udp, natkit.net.stream, natkit.turn.builtin):
        assert any(isinstance(f, RateLimitFilter) for f in module.log.filters), module
