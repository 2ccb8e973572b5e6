"""SIGHUP reloads the TLS certificate of `natkit serve`: new handshakes get the new one, an
established TLS connection keeps working, and a broken pair of files is refused (the old
certificate stays served, one error line says why)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from natkit.testing import wait_until
from tests.integration.conftest import HOST, Served, binding_request, free_port

pytestmark = [pytest.mark.integration]

TLS_DATA = Path(__file__).parents[1] / "data" / "config" / "tls"


def _served_certificate(port: int) -> str:
    return ssl.get_server_certificate((HOST, port), timeout=5)


def _new_certificate(cert: Path, key: Path, name: str) -> None:
    subprocess.run(
        # The fixture's key type (EC P-256): OpenSSL keeps one certificate per key type in a
        # context, so a reload that changes the type needs a restart (natkit.net.sockets).
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _binding_over(conn: ssl.SSLSocket) -> bool:
    request, tid = binding_request()
    conn.sendall(request)
    head = conn.recv(20)
    length = struct.unpack("!H", head[2:4])[0]
    body = b""
    while len(body) < length:
        body += conn.recv(length - len(body))
    return head[8:20] == tid


def test_sighup_swaps_the_certificate_for_new_handshakes_only(
    natkit_serve: Callable[..., Served], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(TLS_DATA / "cert.pem", cert)
    shutil.copy(TLS_DATA / "key.pem", key)
    port, tls_port = free_port(), free_port()
    stun = {
        "listen": [f"udp://{HOST}:{port}", f"tls://{HOST}:{tls_port}"],
        "tls": {"cert": str(cert), "key": str(key)},
    }
    served = natkit_serve(stun=stun, port=port)
    before = _served_certificate(tls_port)
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection((HOST, tls_port), timeout=5)
    established = client.wrap_socket(raw)
    try:
        assert _binding_over(established)
        _new_certificate(cert, key, "reloaded.natkit.test")
        os.kill(served.proc.pid, signal.SIGHUP)
        assert wait_until(lambda: _served_certificate(tls_port) != before)
        assert _served_certificate(tls_port) == cert.read_text().replace("\r", "")
        assert _binding_over(established)  # the old connection goes on
        now = _served_certificate(tls_port)
        key.write_text("not a key\n")  # a renewal gone wrong: keep serving what works
        os.kill(served.proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        assert _served_certificate(tls_port) == now
    finally:
        established.close()
    served.proc.terminate()
    assert served.proc.wait(15) == 0
    assert served.proc.stderr is not None
    log = served.proc.stderr.read()
    assert "reloaded the TLS certificate" in log, log
    # The supervisor checks the files when it re-reads the config: nothing reaches the workers.
    assert "SIGHUP: config not reloaded, keeping the running one" in log, log
    assert "stun.tls.cert: cannot load" in log, log
