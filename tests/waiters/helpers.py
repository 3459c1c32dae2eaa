"""Helpers of the waiter tests: bounded polling of the registered waiters, commands of the project."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aviso_workflows import Store
from aviso_workflows.waiters import Waiter, list_waiters

BIN = Path(sys.executable).parent
COMMAND = str(BIN / "aviso-workflows")
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
#: The waiters' lease TTL in these tests (etcd's shortest).
TTL = 2


def mars(date: str, step: Any, **fields: Any) -> dict[str, Any]:
    return {"event": "mars", **FORECAST, "date": date, "step": step, **fields}


def pairs(request: dict[str, Any]) -> str:
    return ",".join(f"{name}={value}" for name, value in request.items())


def until(condition: Callable[[], Any], timeout: float, what: str, pause: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something true (bounded); its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(pause)


def listed(store: Store, **filters: str) -> list[Waiter]:
    return list_waiters(store, {name: str(value) for name, value in filters.items()})


def until_listed(store: Store, timeout: float = 20.0, **filters: Any) -> Waiter:
    return until(lambda: (listed(store, **filters) or [None])[0], timeout, f"a waiter with {filters} being listed")


def until_gone(store: Store, timeout: float, **filters: Any) -> float:
    """Seconds until no waiter matches ``filters`` (fails after ``timeout``)."""
    started = time.monotonic()
    until(lambda: not listed(store, **filters), timeout, f"the waiter with {filters} vanishing")
    return time.monotonic() - started


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def kill_hard(process: subprocess.Popen[str]) -> None:
    """SIGKILL by pid: no chance to remove its entry."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    process.communicate(timeout=10)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
