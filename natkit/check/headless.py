"""Headless Chromium driven over ``--remote-debugging-pipe``: open the check page, read its report.

For CI and support scripts (and natkit's own tests): no chromedriver, no debugging port. Chromium
speaks the DevTools protocol over fds 3 (commands in) and 4 (events and results out), one JSON
message per NUL-terminated chunk. A small trampoline puts our pipe ends on those fd numbers
before it execs the browser, so the same code starts it on this host or inside a lab node
(`launch` takes the function that starts the process).

Flags (FIELD-NOTES "Chromium as a test client"): ``--headless=new --no-sandbox`` as root;
``--allow-loopback-in-peer-connection`` or a namespace with only ``lo`` gathers nothing;
host candidates as real addresses (no mDNS); a private HOME/TMPDIR that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from natkit.errors import NatkitError

__all__ = ["Browser", "BrowserError", "chromium_binary", "launch", "run_check", "run_friends"]

_TRAMPOLINE = "import os,sys;os.dup2(int(sys.argv[1]),3);os.dup2(int(sys.argv[2]),4);" + (
    "os.execvp(sys.argv[3],sys.argv[3:])"
)
_MAX_MESSAGE = 16 * 1024 * 1024  # a DevTools message larger than this is a bug, not data

Popen = Callable[..., "subprocess.Popen[bytes]"]


class BrowserError(NatkitError):
    """Chromium is missing, died, or a DevTools command failed."""


def chromium_binary() -> str:
    """The Chromium executable ($NATKIT_CHROMIUM, else chromium on PATH); BrowserError if none."""
    name = os.environ.get("NATKIT_CHROMIUM") or "chromium"
    found = shutil.which(name)
    if found is None:
        raise BrowserError(
            f"{name}: not found; install it (Debian: apt-get install chromium) "
            "or set NATKIT_CHROMIUM"
        )
    return found


def _flags(profile: str, extra: tuple[str, ...]) -> list[str]:
    return [
        "--headless=new",
        "--no-sandbox",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
        "--mute-audio",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns,Translate,MediaRouter",
        *extra,
        "about:blank",
    ]


class Browser:
    """One running Chromium and its DevTools pipe. Use `launch` (a context manager)."""

    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int) -> None:
        self.proc = proc
        self._out = to_browser
        self._in = from_browser
        self._next_id = 0
        self._buffer = b""

    def command(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Send one DevTools command and return its result (events meanwhile are dropped)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"chromium: {method}: {reply['error'].get('message')}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("chromium: no DevTools answer in time")
            ready, _, _ = select.select([self._in], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium exited (status {self.proc.poll()})")
            self._buffer += chunk
            if len(self._buffer) > _MAX_MESSAGE:
                raise BrowserError("chromium: DevTools message too large")
        raw, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    def open(self, url: str) -> str:
        """A new tab at `url`; returns the DevTools session attached to it."""
        target = self.command("Target.createTarget", {"url": url})["targetId"]
        attached = self.command("Target.attachToTarget", {"targetId": target, "flatten": True})
        session: str = attached["sessionId"]
        return session

    def evaluate(self, session: str, expression: str, timeout: float = 10.0) -> Any:
        """The JSON value of `expression` in the tab (promises awaited)."""
        result = self.command(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            detail = result["exceptionDetails"]
            text = detail.get("exception", {}).get("description") or detail.get("text")
            raise BrowserError(f"chromium: page error: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, session: str, expression: str, timeout: float) -> Any:
        """Poll `expression` in the tab until it is truthy; its value (BrowserError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(session, expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium: {expression} still false after {timeout:g} s")
            time.sleep(0.1)

    def screenshot(self, session: str, width: int = 900, height: int = 1100) -> bytes:
        """A PNG of the tab."""
        import base64

        self.command(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        shot = self.command("Page.captureScreenshot", {"format": "png"}, session=session)
        return base64.b64decode(shot["data"])

    def close_tab(self, session: str) -> None:
        with contextlib.suppress(BrowserError):
            self.evaluate(session, "window.close()")


@contextlib.contextmanager
def launch(
    popen: Popen = subprocess.Popen,
    *,
    extra_flags: tuple[str, ...] = (),
    timeout: float = 20.0,
) -> Iterator[Browser]:
    """A headless Chromium started with `popen` (e.g. ``functools.partial(lab.spawn, "peer")``
    for a lab node), stopped and its profile removed on exit, also on failure."""
    binary = chromium_binary()
    profile = tempfile.mkdtemp(prefix="natkit-chromium-")
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    env = dict(os.environ, HOME=profile, TMPDIR=profile)
    argv = [sys.executable, "-c", _TRAMPOLINE, str(to_r), str(from_w), binary]
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = popen(
            argv + _flags(profile, extra_flags),
            pass_fds=(to_r, from_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        os.close(to_r)
        os.close(from_w)
        to_r = from_w = -1
        browser = Browser(proc, to_w, from_r)
        browser.command("Browser.getVersion", timeout=timeout)
        yield browser
    finally:
        for fd in (to_r, from_w, to_w, from_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if proc is not None:
            _stop(proc)
        shutil.rmtree(profile, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # Its renderer/GPU/zygote children share its session: signal the whole group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 9)
        proc.wait(5.0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)  # children that outlived the main process


def run_check(browser: Browser, url: str, timeout: float = 30.0) -> dict[str, Any]:
    """Open the check page at `url` in `browser`, wait until it is done, return its report."""
    session = browser.open(url)
    try:
        browser.wait_for(session, "document.title.endsWith('— done')", timeout)
        report: dict[str, Any] = browser.evaluate(session, "window.natkitReport")
        return report
    finally:
        browser.close_tab(session)


def run_friends(
    host: Browser, friend: Browser, url: str, timeout: float = 40.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """ "Test with a friend" between two browsers (or two tabs of one): `host` opens
    ``url?friend=new``, `friend` the code it got; both results (``window.natkitFriend``)."""
    done = "document.title.endsWith('— done')"
    first = host.open(url + "?friend=new")
    second = None
    try:
        code = host.wait_for(first, "window.natkitFriendCode || window.natkitFriend", timeout)
        if not isinstance(code, str):
            raise BrowserError(f"chromium: the friend test did not start: {code}")
        second = friend.open(f"{url}?friend={code}")
        host.wait_for(first, done, timeout)
        friend.wait_for(second, done, timeout)
        a: dict[str, Any] = host.evaluate(first, "window.natkitFriend")
        b: dict[str, Any] = friend.evaluate(second, "window.natkitFriend")
        return a, b
    finally:
        host.close_tab(first)
        if second is not None:
            friend.close_tab(second)
