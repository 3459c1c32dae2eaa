"""Running a blocking call on a thread in a test, and collecting its outcome within a bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target`` in a daemon thread; the dict gets 'result' or 'error' and 'ended' (monotonic time)."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["result"] = target()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def joined(thread: threading.Thread, outcome: dict[str, Any], bound: float) -> Any:
    """Join within ``bound`` seconds and return the result (re-raising the thread's error)."""
    thread.join(bound)
    assert not thread.is_alive(), f"still running after {bound:g} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
