"""natkit.testing.serve: a real natkit serve, up when the block starts, gone when it ends."""

from __future__ import annotations

import socket

import pytest

from natkit import testing
from tests.integration.conftest import HOST, alive, binding_request

pytestmark = pytest.mark.integration


def _config(workers: int = 2) -> dict[str, object]:
    port, mport = testing.free_port(), testing.free_port("tcp")
    return {
        "version": 1,
        "stun": {"listen": [f"udp://{HOST}:{port}", f"tcp://{HOST}:{port}"], "workers": workers},
        "metrics": {"listen": f"{HOST}:{mport}"},
    }


def test_serve_answers_and_leaves_nothing_behind() -> None:
    with testing.serve(_config()) as served:
        assert [line.split()[0] for line in served.lines] == ["listening", "listening", "metrics"]
        workers = served.workers()
        assert len(workers) >= 2  # two workers (and multiprocessing's resource tracker)
        request, tid = binding_request()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(request, (HOST, served.port))
            assert s.recv(2048)[8:20] == tid
        assert served.metric("natkit_workers") == 2
        proc = served.proc
    assert proc.returncode == 0  # SIGTERM: a clean drain
    assert not any(alive(pid) for pid in [proc.pid, *workers])


def test_serve_stops_the_server_when_the_block_raises() -> None:
    with pytest.raises(KeyError), testing.serve(_config(workers=1)) as served:
        proc = served.proc
        raise KeyError("the test failed")
    assert proc.returncode is not None and not alive(proc.pid)


def test_a_server_that_does_not_start_is_a_serve_error() -> None:
    config = _config()
    config["stun"] = {"listen": ["udp://127.0.0.1:1"], "wrokers": 2}  # a typo: exit 2
    with (
        pytest.raises(testing.ServeError, match=r"status 2\).*natkit: error: .*wrokers"),
        testing.serve(config),
    ):
        pytest.fail("natkit serve started with an unknown key")
