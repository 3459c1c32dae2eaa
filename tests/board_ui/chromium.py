"""Headless Chromium driven over the DevTools protocol (a websocket), for the board's browser tests.

Started with ``--remote-debugging-port=0``: Chromium picks a free loopback port and writes it to
``DevToolsActivePort`` in its profile folder. One page target is driven: navigate, evaluate JavaScript,
press keys, change the viewport, take a screenshot. Every wait is bounded; Chromium is stopped by its PID.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

START_SECONDS = 30.0
CALL_SECONDS = 15.0


def chromium_path() -> str | None:
    """Debian's chromium (scripts/setup.sh installs it), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One page of a running Chromium, driven over its DevTools websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self._ids = iter(range(1, 10**9))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        number = next(self._ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        deadline = time.monotonic() + CALL_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"Chromium did not answer {method} within {CALL_SECONDS} s"
            message = json.loads(self.socket.recv(timeout=remaining))
            if message.get("id") == number:
                assert "error" not in message, f"{method} failed: {message['error']}"
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, f"{expression!r} raised: {result['exceptionDetails']}"
        return result["result"].get("value")

    def until(self, expression: str, seconds: float, pause: float = 0.05) -> tuple[Any, float]:
        """Poll ``expression`` until it is truthy (bounded); its value and the seconds it took."""
        started = time.monotonic()
        value = None
        while time.monotonic() - started < seconds:
            value = self.evaluate(expression)
            if value:
                return value, time.monotonic() - started
            time.sleep(pause)
        raise AssertionError(f"{expression!r} was not true within {seconds} s (last value {value!r})")

    def open(self, url: str, ready: str = "document.body && document.body.dataset.ready === 'true'",
             seconds: float = 15.0) -> None:
        """Navigate to ``url`` and wait until ``ready`` holds."""
        self.call("Page.navigate", url=url)
        self.until(ready, seconds)

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=mobile)

    def press(self, key: str, code: str | None = None, key_code: int = 0) -> None:
        """A real key press (down and up) on the focused element."""
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code or key,
                      windowsVirtualKeyCode=key_code, nativeVirtualKeyCode=key_code)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


def _port(profile: Path, process: subprocess.Popen[bytes]) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_SECONDS
    while True:
        if marker.exists():
            text = marker.read_text().split()
            if text:
                return int(text[0])
        assert process.poll() is None, f"chromium exited with {process.returncode}"
        assert time.monotonic() < deadline, f"chromium did not open its DevTools port within {START_SECONDS} s"
        time.sleep(0.05)


@contextmanager
def chromium(profile: Path, width: int = 1200, height: int = 800) -> Iterator[Page]:
    """A headless Chromium with one blank page; stopped (by its PID, its process group) at the end."""
    executable = chromium_path()
    assert executable is not None, "chromium is not installed"
    argv = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port = _port(profile, process)
        targets = _until(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                                  if t.get("type") == "page"], "a page target")
        with connect(targets[0]["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=CALL_SECONDS) as socket:
            page = Page(socket)
            page.call("Page.enable")
            page.call("Runtime.enable")
            page.viewport(width, height)
            yield page
    finally:
        _stop(process)


def _until(condition: Callable[[], Any], what: str, seconds: float = START_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not appear within {seconds} s"
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to Chromium's process group (its own session, started here), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    try:  # helpers of Chromium's that outlived it (same group, the one it was started in)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
